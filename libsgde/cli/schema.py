"""`sgde schema`: declare what a data set holds (public bounds and categories) and check files against it."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from libsgde.cli.common import _fail, console, handles_errors, main, out


@main.group("schema")
def schema_group() -> None:
    """Declare what a dataset holds (public bounds and categories), and check data files against it."""


def _data_errors_fail(fn):
    """DataError and SchemaError (bad data or schema files) become one red line, like handles_errors."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from rich.markup import escape

        from libsgde.io.encoding import DataError
        from libsgde.io.schema import SchemaError

        try:
            return fn(*args, **kwargs)
        except (DataError, SchemaError) as e:
            _fail(escape(str(e)))

    return wrapper


@schema_group.command("infer")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "dest",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the schema (JSON).",
)
@click.option("--label", "label_column", default=None, help="CSV column to use as the class label.")
@handles_errors
@_data_errors_fail
def schema_infer(file: Path, dest: Path, label_column: str | None) -> None:
    """Propose a schema for FILE (.csv, .npz, idx). Its bounds come from the data: replace them before training."""
    import json

    from rich.markup import escape

    from libsgde.io.datasets import infer_schema
    from libsgde.io.schema import schema_to_dict

    proposed, warnings = infer_schema(file, label_column)
    dest.write_text(json.dumps(schema_to_dict(proposed), indent=2) + "\n")
    for warning in warnings:
        console.print(f"[bold yellow]WARNING:[/] {escape(warning)}", highlight=False)
    out.print(f"wrote {escape(str(dest))}: edit it to public bounds and categories before training", highlight=False)


@schema_group.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--schema", "schema_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Labels file of an idx images FILE (default: its labels-idx1 sibling).",
)
@handles_errors
@_data_errors_fail
def schema_check(file: Path, schema_file: Path, labels_file: Path | None) -> None:
    """Load FILE as the schema declares it; show its size, model-space shape and the values clipped into bounds."""
    import json

    from rich.markup import escape

    from libsgde.io.datasets import load_dataset
    from libsgde.io.schema import schema_from_dict

    try:
        document = json.loads(schema_file.read_text(encoding="utf-8"))
    except ValueError as e:  # bad JSON or not UTF-8
        _fail(escape(f"{schema_file}: not a JSON file ({e})"))
    data = load_dataset(file, schema_from_dict(document), labels_path=labels_file)
    out.print(
        f"{file.name}: N = {len(data)}, model space {data.space.kind} {data.space.shape}, "
        f"classes {data.space.num_classes or 'none'}",
        highlight=False,
    )
    if data.clipped:
        for name, count in sorted(data.clipped.items()):
            out.print(f"clipped into bounds: {name}: {count}", highlight=False)
    else:
        out.print("nothing clipped: every value lies inside the declared bounds", highlight=False)
