"""`sgde disguise`: hide classes behind public ones with a translator (apply), and solve the hidden task with the
translator and a classifier trained elsewhere on disguised images (pipeline)."""

from __future__ import annotations

import contextlib
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import click

from libsgde.cli.common import _client, _fail, console, handles_errors, main, out
from libsgde.cli.schema import _data_errors_fail

_data_option = click.option(
    "--data",
    "data_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Images to translate: .npz (images as x or images, labels as y or labels) or an idx images file.",
)
_labels_option = click.option(
    "--labels",
    "labels_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The idx labels file of an idx images file (default: its name with labels-idx1 for images-idx3).",
)
_schema_option = click.option(
    "--schema",
    "schema_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The data's schema (JSON); it must be the translator's.",
)
_translator_option = click.option(
    "--translator",
    "translator_ref",
    required=True,
    metavar="MODEL_OR_FILE",
    help="A translator artifact file, or a registry model (MODEL, MODEL@N, .../versions/N) pulled and verified.",
)


@main.group("disguise")
def disguise_group() -> None:
    """Disguise hidden classes as public ones with a translator, and undo it with a classifier of the public ones."""


@contextlib.contextmanager
def _translator(ctx: click.Context, ref: str) -> Iterator:
    """The translator of a local file, else of a registry model pulled (sha256 and signature checked) to a temporary
    folder."""
    from libsgde.io.disguise import load_translator

    if Path(ref).is_file():
        yield load_translator(Path(ref))
        return
    with tempfile.TemporaryDirectory(prefix="sgde-translator-") as folder, _client(ctx) as client:
        path, version = client.pull(ref, Path(folder) / "translator.safetensors")
        console.print(f"pulled {version.name} (sha256 and signature verified)", highlight=False, soft_wrap=True)
        yield load_translator(path)


def _has_labels(data_file: Path, labels_file: Path | None) -> bool:
    """Whether a data file comes with labels (load_dataset refuses an image file without them when the schema
    declares classes, and the pipeline works without them)."""
    from libsgde.io.datasets import LABEL_KEYS

    if labels_file is not None:
        return True
    try:
        with zipfile.ZipFile(data_file) as archive:
            return any(name.removesuffix(".npy") in LABEL_KEYS for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):  # not an npz: an idx file, whose labels file is found by its name
        guess = data_file.name.replace("images-idx3", "labels-idx1")
        return guess != data_file.name and data_file.with_name(guess).exists()


def _load(data_file: Path, labels_file: Path | None, schema_file: Path, translator):
    """(raw pixels, labels or None) of the data file, read against its schema, which must be the translator's."""
    import json

    import numpy as np
    from rich.markup import escape

    from libsgde.io.datasets import load_dataset
    from libsgde.io.encoding import ImageEncoder
    from libsgde.io.schema import first_difference, schema_from_dict
    from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

    try:
        schema = schema_from_dict(json.loads(schema_file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        _fail(escape(f"{schema_file}: not a JSON file ({str(e)[:200]})"))
    difference = first_difference(schema, translator.schema)
    if difference is not None:
        _fail(
            escape(
                f"the data's schema differs from the translator's at {difference}: translate only data of the "
                "schema the translator was trained on"
            )
        )
    labelled = _has_labels(data_file, labels_file)
    if not labelled:  # read the images alone: a schema without class names asks for no labels
        schema = pb.DataSchema()
        schema.CopyFrom(translator.schema)
        schema.image.ClearField("class_names")
    data = load_dataset(data_file, schema, labels_path=labels_file)
    pixels = ImageEncoder(schema.image).decode(data.x)  # the file's pixels, checked and clipped to the schema
    return pixels, (np.asarray(data.labels, np.int32) if labelled else None)


def _counts(labels, names: list[str]) -> str:
    import numpy as np

    counts = np.bincount(labels, minlength=len(names))
    return ", ".join(f"{names[c]} {counts[c]:,}" for c in range(len(names)) if counts[c])


@disguise_group.command("apply")
@_translator_option
@_data_option
@_labels_option
@_schema_option
@click.option(
    "--out",
    "dest",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The disguised data set (.npz with images and labels), in the input's row order; written atomically.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the translation.")
@click.pass_context
@handles_errors
@_data_errors_fail
def disguise_apply(
    ctx, translator_ref: str, data_file: Path, labels_file: Path | None, schema_file: Path, dest: Path, seed: int
) -> None:
    """Translate a data set: every image is redrawn as the public class its (recognised) class maps to; classes
    that are not hidden stay themselves. Labels are the data's, mapped the same way (or, without labels, the
    translator's)."""
    import io

    import numpy as np
    from rich.markup import escape

    from libsgde.io.atomic import write_atomic

    if dest.resolve() == data_file.resolve():
        _fail("--out is the input file; write the disguised data elsewhere")
    with _translator(ctx, translator_ref) as translator:
        pixels, labels = _load(data_file, labels_file, schema_file, translator)
        result = translator.translate(pixels, seed=seed)
        names = list(translator.schema.image.class_names)
        mapping = np.arange(len(names), dtype=np.int32)
        mapping[translator.hidden_classes] = translator.public_classes
        public = result.labels if labels is None else mapping[labels]
        buffer = io.BytesIO()
        np.savez(buffer, images=result.images, labels=public.astype(np.int32))
        write_atomic(dest, buffer.getvalue(), mode=0o644)
    out.print(
        f"wrote {escape(str(dest))}: {len(public):,} images; labels: {_counts(public, names)}",
        highlight=False,
        soft_wrap=True,
    )
    if labels is not None:
        disagree = int(np.count_nonzero(result.predicted_hidden != labels))
        if disagree:
            console.print(
                f"note: the translator recognised another class than the data's label in {disagree:,} of "
                f"{len(labels):,} images; those images show the class it recognised",
                highlight=False,
                soft_wrap=True,
            )


@disguise_group.command("pipeline")
@_translator_option
@click.option(
    "--classifier",
    "classifier_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The classifier of the public classes, trained on disguised images: an sgde-classifier/1 safetensors file "
    "(libsgde.io.classifier.from_sklearn and write_classifier make one; pickle, joblib and ONNX are refused).",
)
@_data_option
@_labels_option
@_schema_option
@click.option(
    "--out",
    "dest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CSV of row,predicted_hidden (a class index; -1 where the classifier answered an unmapped class).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the translation.")
@click.pass_context
@handles_errors
@_data_errors_fail
def disguise_pipeline(
    ctx,
    translator_ref: str,
    classifier_file: Path,
    data_file: Path,
    labels_file: Path | None,
    schema_file: Path,
    dest: Path | None,
    seed: int,
) -> None:
    """Classify real hidden-class images: translate them, let the classifier name the public class, and map it back
    to the hidden class. Prints the accuracy when the data has labels."""
    import numpy as np
    from rich.markup import escape

    from libsgde.io.atomic import write_atomic
    from libsgde.io.classifier import load_classifier
    from libsgde.io.schema import first_difference

    classifier = load_classifier(classifier_file)  # refused before minutes of translation
    with _translator(ctx, translator_ref) as translator:
        difference = first_difference(classifier.schema, translator.schema)
        if difference is not None:
            _fail(
                escape(f"the classifier's schema differs from the translator's at {difference}; use one for its images")
            )
        pixels, labels = _load(data_file, labels_file, schema_file, translator)
        result = translator.translate(pixels, seed=seed)
        names = list(translator.schema.image.class_names)
        hidden_of = np.full(len(names), -1, np.int32)
        hidden_of[translator.public_classes] = translator.hidden_classes
        public = classifier.predict(result.images)
        predicted = hidden_of[public]
    n = len(predicted)
    out.print(
        f"{n:,} images; predicted hidden classes: {_counts(predicted[predicted >= 0], names) or 'none'}",
        highlight=False,
        soft_wrap=True,
    )
    unmapped = predicted < 0
    if unmapped.any():
        console.print(
            f"note: for {int(unmapped.sum()):,} images the classifier answered a class no hidden class maps to "
            f"({_counts(public[unmapped], names)}); they count as wrong",
            highlight=False,
            soft_wrap=True,
        )
    if labels is not None:
        scored = np.isin(labels, translator.hidden_classes)
        if not scored.any():
            out.print("accuracy: none of the labelled images is of a hidden class", highlight=False, soft_wrap=True)
        else:
            right = int(np.count_nonzero(predicted[scored] == labels[scored]))
            own = float(np.mean(result.predicted_hidden[scored] == labels[scored]))
            out.print(
                f"accuracy on {int(scored.sum()):,} images of hidden classes: {right / scored.sum():.4f} "
                f"(the translator's own classifier: {own:.4f})",
                highlight=False,
                soft_wrap=True,
            )
            if not scored.all():
                console.print(f"note: {int((~scored).sum()):,} images of other classes are not scored", highlight=False)
    if dest is not None:
        lines = ["row,predicted_hidden"] + [f"{i},{c}" for i, c in enumerate(predicted.tolist())]
        write_atomic(dest, ("\n".join(lines) + "\n").encode(), mode=0o644)
        out.print(f"wrote {escape(str(dest))}", highlight=False, soft_wrap=True)
