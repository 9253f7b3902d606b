"""CSV files as people publish them, read as their schema's `tabular.csv` declares (header or not, delimiter,
whitespace, NA tokens); `sgde schema infer` recognising NA tokens and padded values and saying so; the CSV flags of
`sgde schema infer|check` and `sgde train`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from libsgde.cli import main
from libsgde.cli.schema import CsvFlags, merge_csv_flags
from libsgde.io.datasets import PRIVACY_WARNING, _csv_chunks, infer_schema, load_dataset
from libsgde.io.encoding import DataError, encoder_for
from libsgde.io.schema import schema_from_dict, schema_to_dict
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

# Census rows as UCI publishes them: no header, a space after each comma, "?" for unknown, and one blank number.
CENSUS_ROWS = [
    ["39", " State-gov", " 77516", " 2174", " <=50K"],
    ["50", " Self-emp-not-inc", " 83311", " 0", " <=50K"],
    ["38", " ?", " 215646", " 0", " >50K"],
    ["53", " Private", " ?", " 0", " <=50K"],
    ["28", " Private", " 338409", " ", " <=50K"],
    ["37", " Private", " 284582", " 0", " <=50K"],
]
NAMES = ["age", "workclass", "fnlwgt", "capital-gain", "income"]
# What the rows hold: None for a missing category, NaN for a missing number.
EXPECTED = {
    "age": [39, 50, 38, 53, 28, 37],
    "workclass": ["State-gov", "Self-emp-not-inc", None, "Private", "Private", "Private"],
    "fnlwgt": [77516, 83311, 215646, math.nan, 338409, 284582],
    "capital-gain": [2174, 0, 0, 0, math.nan, 0],
    "income": ["<=50K", "<=50K", ">50K", "<=50K", "<=50K", "<=50K"],
}


def census_file(path: Path, *, header: bool = False, delimiter: str = ",") -> Path:
    rows = ([[" " + n if i else n for i, n in enumerate(NAMES)]] if header else []) + CENSUS_ROWS
    path.write_text("".join(delimiter.join(row) + "\n" for row in rows), encoding="utf-8")
    return path


def census_schema(**csv) -> pb.DataSchema:
    options = {"no_header": True, "strip_whitespace": True, "na_tokens": ["?"]} | csv
    return schema_from_dict(
        {
            "tabular": {
                "label_column": "income",
                "columns": [
                    {"name": "age", "type": "COLUMN_TYPE_INTEGER", "lower": 0, "upper": 120},
                    {
                        "name": "workclass",
                        "type": "COLUMN_TYPE_CATEGORICAL",
                        "categories": ["Private", "Self-emp-not-inc", "State-gov"],
                        "nullable": True,
                    },
                    {"name": "fnlwgt", "type": "COLUMN_TYPE_INTEGER", "lower": 0, "upper": 1e6, "nullable": True},
                    {"name": "capital-gain", "type": "COLUMN_TYPE_INTEGER", "lower": 0, "upper": 1e5, "nullable": True},
                    {"name": "income", "type": "COLUMN_TYPE_CATEGORICAL", "categories": ["<=50K", ">50K"]},
                ],
                "csv": {k: v for k, v in options.items() if v},
            }
        }
    )


def decoded(path: Path, schema: pb.DataSchema) -> dict[str, list]:
    data = load_dataset(path, schema)
    columns = encoder_for(schema).decode(data.x, data.labels)
    return {
        name: [None if v is None else v.item() if hasattr(v, "item") else v for v in columns[name]] for name in NAMES
    }


def same(actual: dict[str, list], expected: dict[str, list]) -> bool:
    def equal(a, b) -> bool:
        return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b

    return actual.keys() == expected.keys() and all(
        len(actual[k]) == len(expected[k]) and all(equal(a, b) for a, b in zip(actual[k], expected[k]))
        for k in expected
    )


def test_a_headerless_census_file_reads_as_declared(tmp_path):
    assert same(decoded(census_file(tmp_path / "adult.csv"), census_schema()), EXPECTED)


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_a_header_and_other_delimiters_read_the_same_values(tmp_path, delimiter):
    path = census_file(tmp_path / "adult.csv", header=True, delimiter=delimiter)
    assert same(decoded(path, census_schema(no_header=False, delimiter=delimiter)), EXPECTED)
    with pytest.raises(DataError, match="the first line is one field: is the delimiter right"):
        load_dataset(path, census_schema(no_header=False))
    with pytest.raises(DataError, match="line 1: has 1 field but 5 columns are expected: is the delimiter right"):
        load_dataset(path, census_schema())


def test_the_reader_yields_none_for_blanks_and_declared_tokens_only(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n x ,?\n,NA\n ,  \n", encoding="utf-8")

    def read(**csv) -> dict[str, list[str | None]]:
        (columns, lines), *more = _csv_chunks(path, 1 << 20, pb.CsvOptions(**csv), None, None)
        assert lines == list(range(2, 2 + len(lines))) and not more
        return columns

    assert read() == {"a": [" x ", None, " "], "b": ["?", "NA", "  "]}  # as written; only a blank field is missing
    assert read(strip_whitespace=True) == {"a": ["x", None, None], "b": ["?", "NA", None]}
    assert read(strip_whitespace=True, na_tokens=["?", "NA"]) == {"a": ["x", None, None], "b": [None, None, None]}
    path.write_text("a,b\n ?,NA \n", encoding="utf-8")
    assert read(na_tokens=["?", "NA"]) == {"a": [" ?"], "b": ["NA "]}  # tokens compare with the field as written


def test_a_headerless_first_row_is_data_even_when_it_looks_like_names(tmp_path):
    path = census_file(tmp_path / "adult.csv", header=True)
    with pytest.raises(DataError, match=r"adult.csv line 1, column 'age': 'age' is not a number"):
        load_dataset(path, census_schema())
    with pytest.raises(DataError, match=r"column '39'.*no header \(its first line is data\).*--no-header"):
        load_dataset(census_file(tmp_path / "adult.csv"), census_schema(no_header=False))


def test_a_headerless_row_of_the_wrong_width_is_refused_with_its_line(tmp_path):
    path = census_file(tmp_path / "adult.csv")
    path.write_text("\n" + path.read_text() + "\n40, Private, 1000\n")
    with pytest.raises(DataError, match=r"adult.csv line 9: has 3 fields but the schema declares 5 columns"):
        load_dataset(path, census_schema())
    path.write_text("\n\n")
    with pytest.raises(DataError, match=r"adult.csv is empty: its first row must be data"):
        load_dataset(path, census_schema())


def test_undeclared_missing_values_are_refused_with_row_and_column(tmp_path):
    path = census_file(tmp_path / "adult.csv")
    with pytest.raises(DataError, match=r"adult.csv line 3, column 'workclass': '\?' is not a declared category"):
        load_dataset(path, census_schema(na_tokens=[]))
    no_missing = census_schema()
    no_missing.tabular.columns[2].nullable = False
    with pytest.raises(DataError, match=r"adult.csv line 4, column 'fnlwgt': missing value"):
        load_dataset(path, no_missing)
    del no_missing.tabular.csv.na_tokens[:]
    path.write_text(path.read_text().replace("38, ?,", "38, Private,"))
    with pytest.raises(DataError, match=r"adult.csv line 4, column 'fnlwgt': '\?' is not a number"):
        load_dataset(path, no_missing)
    with pytest.raises(DataError, match=r"line 1, column 'workclass': ' State-gov' .*spaces around it.*--strip"):
        load_dataset(path, census_schema(strip_whitespace=False))


def test_infer_recognises_na_tokens_and_padding_and_says_so(tmp_path):
    path = census_file(tmp_path / "adult.csv", header=True)
    schema, warnings = infer_schema(path, label_column="income")
    assert warnings[0] == PRIVACY_WARNING
    columns = {c.name: c for c in schema.tabular.columns}
    assert list(columns) == NAMES  # the header's names, stripped
    assert schema.tabular.csv == pb.CsvOptions(strip_whitespace=True, na_tokens=["?"])
    assert columns["workclass"].categories == ["Private", "Self-emp-not-inc", "State-gov"]
    assert columns["workclass"].nullable and columns["fnlwgt"].nullable and columns["capital-gain"].nullable
    assert columns["fnlwgt"].type == pb.COLUMN_TYPE_INTEGER  # numeric apart from "?"
    assert not columns["age"].nullable and not columns["capital-gain"].point_masses  # masses are never inferred
    said = "\n".join(warnings)
    assert "spaces or tabs around them (e.g. ' State-gov'" in said and "csv.strip_whitespace is set" in said
    assert "read as missing values (csv.na_tokens): '?' in 'workclass', 'fnlwgt'" in said
    assert "column 'workclass' is missing in 1 of 6 rows ('?': 1)" in said
    assert "column 'capital-gain' is missing in 1 of 6 rows (blank: 1)" in said
    assert "column 'capital-gain' is 0 in 67% of rows" in said and "declare point_masses: [0]" in said
    assert "column 'fnlwgt' is" not in said.replace("column 'fnlwgt' is missing", "")  # no mass proposed there
    assert same(decoded(path, schema), EXPECTED)  # the draft reads its own file


def test_infer_without_a_header_and_with_given_tokens(tmp_path):
    path = census_file(tmp_path / "adult.csv", delimiter=";")
    path.write_text(path.read_text().replace("Self-emp-not-inc", "NA"))
    options = pb.CsvOptions(no_header=True, delimiter=";", na_tokens=["?"])
    schema, warnings = infer_schema(path, label_column="c4", csv_options=options, detect_na=False)
    assert [c.name for c in schema.tabular.columns] == ["c0", "c1", "c2", "c3", "c4"]
    assert any("no header: its 5 columns are named c0 to c4" in w and "rename them" in w for w in warnings)
    assert schema.tabular.columns[1].categories == ["NA", "Private", "State-gov"]  # "NA" was not declared missing
    assert list(schema.tabular.csv.na_tokens) == ["?"] and schema.tabular.csv.delimiter == ";"
    detected, _ = infer_schema(path, csv_options=pb.CsvOptions(no_header=True, delimiter=";"))
    assert list(detected.tabular.csv.na_tokens) == ["?", "NA"]
    assert list(detected.tabular.columns[1].categories) == ["Private", "State-gov"]


def test_infer_never_declares_a_label_column_nullable(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x,y\n1,a\n2,?\n3,b\n", encoding="utf-8")
    schema, warnings = infer_schema(path, label_column="y")
    y = schema.tabular.columns[1]
    assert not y.nullable and list(y.categories) == ["a", "b"]
    assert any("label column 'y' is missing in 1 of 3 rows" in w and "drop them" in w for w in warnings)


def test_flags_override_only_what_they_name():
    options = pb.CsvOptions(no_header=True, delimiter=";", strip_whitespace=True, na_tokens=["?", "NA"])
    merge_csv_flags(options, CsvFlags())
    assert options == pb.CsvOptions(no_header=True, delimiter=";", strip_whitespace=True, na_tokens=["?", "NA"])
    merge_csv_flags(options, CsvFlags(header=True, delimiter="tab", na=("", "-", "-"), strip=False))
    assert options == pb.CsvOptions(delimiter="\t", na_tokens=["-"])
    merge_csv_flags(options, CsvFlags(delimiter=","))
    assert options.delimiter == ""


def run_cli(*args: str, code: int = 0) -> tuple[str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return " ".join(result.stdout.split()), " ".join(result.stderr.split())


def test_schema_infer_and_check_take_the_csv_flags(tmp_path):
    data = census_file(tmp_path / "adult.csv", delimiter="|")
    schema_file = tmp_path / "adult.schema.json"
    flags = ["--no-header", "--delimiter", "|", "--strip", "--na", "?"]
    _, stderr = run_cli("schema", "infer", str(data), "--out", str(schema_file), "--label", "c4", *flags)
    assert "c0 to c4" in stderr and "'c1' is missing in 1 of 6 rows ('?': 1)" in stderr
    inferred = json.loads(schema_file.read_text())
    assert inferred["tabular"]["csv"] == {
        "no_header": True,
        "delimiter": "|",
        "strip_whitespace": True,
        "na_tokens": ["?"],
    }
    stdout, _ = run_cli("schema", "check", str(data), "--schema", str(schema_file))
    assert "N = 6" in stdout
    # The flags win over the schema's csv: the same file with commas, checked against the "|" schema.
    commas = census_file(tmp_path / "commas.csv")
    _, stderr = run_cli("schema", "check", str(commas), "--schema", str(schema_file), code=1)
    assert "is the delimiter right" in stderr
    stdout, _ = run_cli("schema", "check", str(commas), "--schema", str(schema_file), "--delimiter", ",")
    assert "N = 6" in stdout
    _, stderr = run_cli(
        "schema", "check", str(commas), "--schema", str(schema_file), "--delimiter", ",", "--na", "", code=1
    )
    assert "line 3, column 'c1': '?' is not a declared category" in stderr
    _, stderr = run_cli("schema", "check", str(data), "--schema", str(schema_file), "--delimiter", "||", code=2)
    assert "--delimiter" in stderr and "one character" in stderr


def test_schema_infer_detects_unless_told(tmp_path):
    data = census_file(tmp_path / "adult.csv", header=True)
    schema_file = tmp_path / "s.json"
    run_cli("schema", "infer", str(data), "--out", str(schema_file), "--no-strip", "--na", "")
    tabular = json.loads(schema_file.read_text())["tabular"]
    assert "csv" not in tabular  # nothing stripped, no tokens: the file is read as written
    assert tabular["columns"][1]["categories"] == [" ?", " Private", " Self-emp-not-inc", " State-gov"]


def test_train_merges_the_csv_flags_into_the_schema_before_anything_is_sent(tmp_path):
    data = census_file(tmp_path / "adult.csv")
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps(schema_to_dict(census_schema())))
    args = ["train", "--data", str(data), "--schema", str(schema_file), "--arch", "mst", "--epsilon", "1"]
    _, stderr = run_cli(*args, "--publish", "m", "--na", "a,b", code=1)
    assert "tabular.csv.na_tokens[0]" in stderr and "delimiter" in stderr
    _, stderr = run_cli(*args, "--publish", "m", "--delimiter", "ab", code=2)
    assert "--delimiter" in stderr


def test_csv_flags_are_refused_for_images(tmp_path):
    import numpy as np

    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4, 3), np.uint8))
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps({"image": {"height": 4, "width": 3, "channels": 1, "pixel_max": 255}}))
    _, stderr = run_cli("schema", "check", str(tmp_path / "d.npz"), "--schema", str(schema_file), "--no-header", code=2)
    assert "are for CSV files" in stderr
    _, stderr = run_cli("schema", "infer", str(tmp_path / "d.npz"), "--out", str(schema_file), "--na", "?", code=1)
    assert "not a CSV file" in stderr


@pytest.mark.integration
def test_the_trainer_reads_an_uploaded_file_as_its_schema_declares(registry, pki, tmp_path_factory, tmp_path):
    """The CSV options travel with the schema: a headerless, semicolon-separated census file with "?" and blanks
    trains as declared, and is refused (at submit) by a schema that expects a plain CSV."""
    import grpc

    from libsgde.client import SgdeError
    from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
    from tests.support.services import user_client
    from tests.support.trainer import TINY_MERF, start_trainer, trainer_client, wait_state

    path = tmp_path / "adult.csv"
    path.write_text("".join(";".join(row) + "\n" for row in CENSUS_ROWS * 10), encoding="utf-8")
    spec = tpb.TrainingSpec(architecture="dp-merf", target_epsilon=5.0, delta=1e-3, epochs=1, batch_size=60)
    spec.config.update({**TINY_MERF, "generator_steps": 5})
    cfg, handle = start_trainer(tmp_path_factory.mktemp("trainer"), pki, registry.address)
    client = trainer_client(user_client(registry.address, pki, tmp_path), cfg.listen)
    try:
        dataset = client.upload_dataset(path)
        with pytest.raises(SgdeError) as refused:
            client.create_job(spec, census_schema(no_header=False), dataset, "census")
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "is the delimiter right" in str(refused.value)
        job = client.create_job(spec, census_schema(delimiter=";"), dataset, "census")
        done = wait_state(client, job.name, {tpb.JOB_STATE_SUCCEEDED, tpb.JOB_STATE_FAILED})
        assert done.state == tpb.JOB_STATE_SUCCEEDED, done.error
        assert done.privacy.dataset_size == 60
    finally:
        client.close()
        handle.stop(grace=1)
