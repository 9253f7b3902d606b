"""Encoders between schema values and model space: round trips, clipping, refusals, and decoding that never leaves
the schema whatever a generator outputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from libsgde.io.encoding import DataError, ImageEncoder, TabularEncoder, encoder_for, model_space
from libsgde.io.schema import SchemaError, schema_from_dict
from libsgde.ml.space import Block, ModelSpace
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

CONTINUOUS, INTEGER, CATEGORICAL = pb.COLUMN_TYPE_CONTINUOUS, pb.COLUMN_TYPE_INTEGER, pb.COLUMN_TYPE_CATEGORICAL


def people_schema() -> pb.DataSchema:
    return schema_from_dict(
        {
            "tabular": {
                "label_column": "smoker",
                "columns": [
                    {"name": "age", "type": "COLUMN_TYPE_INTEGER", "lower": 0, "upper": 120},
                    {"name": "smoker", "type": "COLUMN_TYPE_CATEGORICAL", "categories": ["no", "yes"]},
                    {"name": "income", "type": "COLUMN_TYPE_CONTINUOUS", "lower": -5, "upper": 10},
                    {"name": "city", "type": "COLUMN_TYPE_CATEGORICAL", "categories": ["Oslo", "Lima", "1"]},
                ],
            }
        }
    )


def people(**changes) -> dict[str, list]:
    columns = {
        "age": ["30", "0", "120"],
        "smoker": ["yes", "no", "no"],
        "income": ["1.5", "-5", "10"],
        "city": ["Lima", "1", "Oslo"],
    }
    columns.update(changes)
    return columns


def image_schema(channels=1, classes=3, pixel_max=255.0) -> pb.DataSchema:
    return pb.DataSchema(
        image=pb.ImageSchema(
            height=4, width=5, channels=channels, pixel_max=pixel_max, class_names=[f"c{i}" for i in range(classes)]
        )
    )


def test_model_space_skips_the_label_column_and_counts_its_classes():
    space = model_space(people_schema())
    assert space.kind == "tabular" and space.shape == (5,) and space.num_classes == 2
    assert space.blocks == (
        Block("age", "numeric", 0, 1),
        Block("income", "numeric", 1, 1),
        Block("city", "categorical", 2, 3),
    )
    assert model_space(image_schema(channels=3)) == ModelSpace("image", (4, 5, 3), num_classes=3)
    with pytest.raises(SchemaError):
        model_space(pb.DataSchema())


def test_tabular_encode_decode_round_trip():
    encoder = encoder_for(people_schema())
    assert isinstance(encoder, TabularEncoder)
    data = encoder.encode(people())
    assert data.x.dtype == np.float32 and data.x.shape == (3, 5) and len(data) == 3
    assert data.labels.dtype == np.int32 and data.labels.tolist() == [1, 0, 0]
    assert data.x[:, 0].tolist() == pytest.approx([0.25, 0, 1]) and data.clipped == {}
    decoded = encoder.decode(data.x, data.labels)
    assert list(decoded) == ["age", "smoker", "income", "city"]  # schema order, label in place
    assert decoded["age"].dtype == np.int64 and decoded["age"].tolist() == [30, 0, 120]
    assert decoded["income"] == pytest.approx([1.5, -5, 10], abs=1e-5)
    assert decoded["city"].tolist() == ["Lima", "1", "Oslo"] and decoded["smoker"].tolist() == ["yes", "no", "no"]
    assert "smoker" not in encoder.decode(data.x)


row_values = st.tuples(
    st.integers(0, 120), st.floats(-5, 10), st.sampled_from(["Oslo", "Lima", "1"]), st.sampled_from(["no", "yes"])
)


@settings(max_examples=50, deadline=None)
@given(st.lists(row_values, min_size=1, max_size=20))
def test_in_bound_values_survive_a_round_trip(rows):
    ages, incomes, cities, smokers = (list(c) for c in zip(*rows))
    encoder = encoder_for(people_schema())
    data = encoder.encode({"age": ages, "income": incomes, "city": cities, "smoker": smokers})
    assert data.clipped == {}
    decoded = encoder.decode(data.x, data.labels)
    assert decoded["age"].tolist() == ages and decoded["city"].tolist() == cities
    assert decoded["smoker"].tolist() == smokers
    assert decoded["income"] == pytest.approx(incomes, abs=1e-5)


@st.composite
def schemas_and_rows(draw):
    lower = draw(st.floats(-1e6, 1e6))
    upper = lower + draw(st.floats(1e-3, 1e6))
    ilower = draw(st.integers(-(10**6), 10**6))
    iupper = ilower + draw(st.integers(1, 10**6))
    categories = [f"k{i}" for i in range(draw(st.integers(1, 5)))]
    schema = pb.DataSchema(
        tabular=pb.TabularSchema(
            columns=[
                pb.Column(name="c", type=CONTINUOUS, lower=lower, upper=upper),
                pb.Column(name="i", type=INTEGER, lower=ilower, upper=iupper),
                pb.Column(name="k", type=CATEGORICAL, categories=categories),
            ]
        )
    )
    x = draw(
        hnp.arrays(
            np.float32,
            (draw(st.integers(1, 8)), 2 + len(categories)),
            elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
        )
    )
    return schema, x


@settings(max_examples=100, deadline=None)
@given(schemas_and_rows())
def test_decoding_any_model_space_rows_stays_inside_the_schema(case):
    schema, x = case
    c, i, k = schema.tabular.columns
    decoded = encoder_for(schema).decode(x)
    assert np.all((decoded["c"] >= c.lower) & (decoded["c"] <= c.upper))
    assert decoded["i"].dtype == np.int64 and np.all((decoded["i"] >= i.lower) & (decoded["i"] <= i.upper))
    assert set(decoded["k"].tolist()) <= set(k.categories)


def test_values_outside_bounds_are_clipped_and_counted():
    encoder = encoder_for(people_schema())
    data = encoder.encode(people(age=["-3", "200", "121"], income=[11, -5.5, 0]))
    assert data.clipped == {"age": 3, "income": 2}
    assert data.x[:, 0].tolist() == [0, 1, 1] and data.x[:2, 1].tolist() == [1, 0]


def test_unknown_category_names_column_row_and_the_allowed_ones():
    with pytest.raises(
        DataError, match=r"column 'city', row 2: 'Paris' is not a declared category.*'Oslo', 'Lima'"
    ) as caught:
        encoder_for(people_schema()).encode(people(city=["Lima", "Oslo", "Paris"]))
    assert (caught.value.column, caught.value.row) == ("city", 2)


def test_numbers_match_categories_spelled_as_them():
    schema = people_schema()
    data = encoder_for(schema).encode(people(city=[1, 1.0, np.int64(1)]))
    assert data.x[:, 2:].argmax(axis=1).tolist() == [2, 2, 2]
    schema.tabular.columns[3].categories.append("1.0")
    with pytest.raises(DataError, match="several categories"):
        encoder_for(schema).encode(people(city=["Lima", "Oslo", 1.0]))


@pytest.mark.parametrize(
    ("ages", "message", "row"),
    [
        (["1", "2.5", "3"], r"'2.5' is not an integer", 1),
        (["1", "2", "abc"], r"'abc' is not a number", 2),
        (["", "2", "3"], r"missing value; declare the column nullable", 0),
        ([1, float("nan"), 3], r"missing value; declare the column nullable", 1),
        (["1", "nan", "3"], r"'nan' is not a number; .*csv.na_tokens", 1),
        (["1", "inf", "3"], r"not a finite number", 1),
    ],
)
def test_bad_numbers_are_refused_naming_column_and_row(ages, message, row):
    with pytest.raises(DataError, match=message) as caught:
        encoder_for(people_schema()).encode(people(age=ages))
    assert (caught.value.column, caught.value.row) == ("age", row)
    assert f"column 'age', row {row}" in str(caught.value)


def test_coercion_maps_every_value_into_the_schema_by_public_rules():
    """For data the caller may train on but not read: nothing refused, nothing that depends on which value failed."""
    encoder = encoder_for(people_schema())
    data = encoder.encode(
        people(age=["2.6", "abc", "500"], smoker=["yes", "maybe", "no"], city=["Paris", "1", "Oslo"]), coerce=True
    )
    middle_age = 60 / 120  # the middle of [0, 120], in model space
    assert data.x[:, 0].tolist() == pytest.approx([3 / 120, middle_age, 1.0])  # rounded, imputed, clipped
    assert data.labels.tolist() == [1, 0, 0]  # "maybe" -> the first category
    assert data.x[:, 2:].argmax(axis=1).tolist() == [0, 2, 0]  # "Paris" -> "Oslo", the first
    assert data.coerced == {"age": 2, "smoker": 1, "city": 1} and data.clipped == {"age": 1}
    images = np.full((2, 4, 5), np.nan)
    coerced = encoder_for(image_schema()).encode(images, np.array([7, 1.5]), coerce=True)
    assert coerced.labels.tolist() == [0, 0] and float(coerced.x.max()) == 0.0
    assert coerced.coerced == {"pixels": 40, "labels": 2}


def test_columns_must_match_the_schema():
    encoder = encoder_for(people_schema())
    with pytest.raises(DataError, match="does not declare it.*privacy") as caught:
        encoder.encode({**people(), "ssn": ["1", "2", "3"]})
    assert caught.value.column == "ssn"
    without_city = people()
    del without_city["city"]
    with pytest.raises(DataError, match="column 'city'.*lacks it"):
        encoder.encode(without_city)
    with pytest.raises(DataError, match="same number of rows"):
        encoder.encode(people(age=["1", "2"]))
    with pytest.raises(DataError, match="no rows"):
        encoder.encode({name: [] for name in people()})


def test_images_round_trip_and_labels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 4, 5), dtype=np.uint8)
    encoder = encoder_for(image_schema())
    assert isinstance(encoder, ImageEncoder)
    data = encoder.encode(images, [0, 1, 2, 2, 1, 0])
    assert data.x.shape == (6, 4, 5, 1) and data.x.dtype == np.float32 and data.clipped == {}
    assert data.labels.dtype == np.int32 and data.labels.tolist() == [0, 1, 2, 2, 1, 0]
    back = encoder.decode(data.x)
    assert back.dtype == np.uint8 and np.array_equal(back[..., 0], images)
    unconditional = encoder_for(image_schema(classes=0)).encode(images[..., None], labels=[7] * 6)
    assert unconditional.labels is None and unconditional.space.num_classes == 0


def test_image_pixels_outside_range_are_clipped_and_counted():
    images = np.full((2, 4, 5, 3), 0.5)
    images[0, 0, 0, 0], images[1, 1, 1, 1] = -0.1, 1.5
    data = encoder_for(image_schema(channels=3, pixel_max=1.0)).encode(images, [0, 1])
    assert data.clipped == {"pixels": 2} and data.x.min() == 0 and data.x.max() == 1


def test_images_of_the_wrong_shape_or_labels_are_refused():
    encoder = encoder_for(image_schema())
    with pytest.raises(DataError, match=r"expected images of shape \(N, 4, 5, 1\).*got \(2, 5, 4\)"):
        encoder.encode(np.zeros((2, 5, 4)), [0, 0])
    with pytest.raises(DataError, match="shape"):
        encoder_for(image_schema(channels=3)).encode(np.zeros((2, 4, 5)), [0, 0])
    with pytest.raises(DataError, match=r"row 1: label 3 is not a class index in \[0, 3\)") as caught:
        encoder.encode(np.zeros((2, 4, 5)), [0, 3])
    assert caught.value.row == 1
    with pytest.raises(DataError, match="row 0: label 0.5"):
        encoder.encode(np.zeros((2, 4, 5)), np.array([0.5, 1]))
    with pytest.raises(DataError, match="declares 3 classes"):
        encoder.encode(np.zeros((2, 4, 5)))
    with pytest.raises(DataError, match="real numbers"):
        encoder.encode(np.zeros((2, 4, 5), dtype=complex), [0, 0])
    with pytest.raises(DataError, match="NaN"):
        encoder.encode(np.full((2, 4, 5), np.nan), [0, 0])


@pytest.mark.parametrize(
    ("pixel_max", "dtype"),
    [(255, np.uint8), (16, np.uint8), (4095, np.uint16), (1.0, np.float32), (0.1, np.float32), (1e6, np.float32)],
)
@settings(max_examples=20, deadline=None)
@given(x=hnp.arrays(np.float32, (3, 4, 5, 1), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_decoded_images_stay_within_pixel_max(pixel_max, dtype, x):
    images = encoder_for(image_schema(pixel_max=pixel_max)).decode(x)
    assert images.dtype == dtype and images.shape == (3, 4, 5, 1)
    assert images.min() >= 0 and images.max() <= pixel_max
