"""The demo's two data silos: scikit-learn's digits and breast_cancer, written to files with a held-out split, and
their schemas, whose bounds are PUBLIC facts written down here, never read from the data."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from libsgde.io.schema import schema_to_dict
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

# -- the data sets and their PUBLIC schemas ---------------------------------------------------------------------------

# scikit-learn documents digits as 8x8 images whose pixels are integers 0..16 (counts of "on" pixels in 4x4 blocks of
# a 32x32 bitmap): 16 is a property of the format, not of this data.
DIGITS_PIXEL_MAX = 16
DIGITS_CLASSES = [str(i) for i in range(10)]

# breast_cancer (Wisconsin diagnostic): ten measurements of the cell nuclei in an image, each given as the mean over
# the nuclei, its standard error ("... error") and the mean of the three largest ("worst ..."). The upper bounds below
# are DOMAIN LIMITS written down once as round constants, NOT the data's maxima (a bound taken from the private data
# would leak it, e.g. the largest tumour). Every measurement is >= 0. "mean" and "worst" values are values of single
# nuclei, so they share one limit; a standard error is at most a quarter of it (a standard deviation of values in
# [0, L] is at most L/2, divided by the square root of the nuclei measured, at least 4). Sizes: a nucleus radius of at
# most 50 (image units), perimeter 400 (above the 2 pi 50 of a circle: boundaries are irregular), area 8000 (pi 50^2);
# texture is the standard deviation of grey levels, at most 100; the shape ratios are small dimensionless numbers
# given limits of 0.5 to 2. Generous limits cost some utility (the data fill less of [0, 1]); that is the price of not
# looking.
BREAST_CANCER_LIMITS = {
    "radius": 50.0,
    "texture": 100.0,
    "perimeter": 400.0,
    "area": 8000.0,
    "smoothness": 0.5,
    "compactness": 2.0,
    "concavity": 2.0,
    "concave points": 1.0,
    "symmetry": 1.0,
    "fractal dimension": 0.5,
}
BREAST_CANCER_LABEL = "diagnosis"
BREAST_CANCER_CLASSES = ["malignant", "benign"]  # scikit-learn's target 0 and 1
MARGINAL_COLUMNS = ["mean radius", "mean texture", "mean area", "mean smoothness", "mean concavity", "worst perimeter"]


def breast_cancer_upper(column: str) -> float:
    """The public upper bound of a breast_cancer column (see BREAST_CANCER_LIMITS)."""
    if column.endswith(" error"):
        return BREAST_CANCER_LIMITS[column.removesuffix(" error")] / 4
    return BREAST_CANCER_LIMITS[column.split(" ", 1)[1]]


def digits_schema() -> pb.DataSchema:
    return pb.DataSchema(
        image=pb.ImageSchema(height=8, width=8, channels=1, pixel_max=DIGITS_PIXEL_MAX, class_names=DIGITS_CLASSES)
    )


def breast_cancer_schema(feature_names: list[str]) -> pb.DataSchema:
    columns = [
        pb.Column(name=name, type=pb.COLUMN_TYPE_CONTINUOUS, lower=0.0, upper=breast_cancer_upper(name))
        for name in feature_names
    ]
    columns.append(
        pb.Column(name=BREAST_CANCER_LABEL, type=pb.COLUMN_TYPE_CATEGORICAL, categories=BREAST_CANCER_CLASSES)
    )
    return pb.DataSchema(tabular=pb.TabularSchema(columns=columns, label_column=BREAST_CANCER_LABEL))


@dataclass
class Split:
    """One data set as the demo holds it: the training split (what the silo trains on), the held-out real test split,
    the file uploaded to the trainer and its schema."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    path: Path
    schema: pb.DataSchema
    feature_names: list[str] = field(default_factory=list)


def prepare_data(folder: Path, seed: int) -> dict[str, Split]:
    """Writes digits as .npz and breast_cancer as CSV (training splits only) into `folder`, plus their schemas."""
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split

    folder.mkdir(parents=True, exist_ok=True)
    d = load_digits()
    images = d.images.astype(np.uint8)
    xtr, xte, ytr, yte = train_test_split(images, d.target, test_size=0.25, random_state=seed, stratify=d.target)
    digits_path = folder / "digits_train.npz"
    np.savez_compressed(digits_path, x=xtr, y=ytr.astype(np.int64))
    digits = Split("digits", xtr, ytr, xte, yte, digits_path, digits_schema())

    c = load_breast_cancer()
    names = [str(n) for n in c.feature_names]
    xtr, xte, ytr, yte = train_test_split(c.data, c.target, test_size=0.25, random_state=seed, stratify=c.target)
    cancer_path = folder / "breast_cancer_train.csv"
    with cancer_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*names, BREAST_CANCER_LABEL])
        for row, label in zip(xtr, ytr):
            writer.writerow([repr(float(v)) for v in row] + [BREAST_CANCER_CLASSES[int(label)]])
    cancer = Split("breast_cancer", xtr, ytr, xte, yte, cancer_path, breast_cancer_schema(names), names)
    for split in (digits, cancer):
        (folder / f"{split.name}.schema.json").write_text(json.dumps(schema_to_dict(split.schema), indent=2) + "\n")
    return {"digits": digits, "breast_cancer": cancer}
