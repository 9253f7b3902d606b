"""`sgde schema`: declare what a data set holds (public bounds and categories) and check files against it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from libsgde.cli.common import _fail, console, handles_errors, main, out

if TYPE_CHECKING:
    from libsgde.wire.proto.sgde.v1 import common_pb2 as pb


@dataclass(frozen=True)
class CsvFlags:
    """The CSV flags given on the command line; None (or no --na) where a flag was not given."""

    header: bool | None = None
    delimiter: str | None = None
    na: tuple[str, ...] | None = None
    strip: bool | None = None

    def given(self) -> bool:
        return any(v is not None for v in (self.header, self.delimiter, self.na, self.strip))


def csv_flag_options(fn):
    """Adds the CSV flags (--no-header, --delimiter, --na, --strip) to a command, which receives them as `csv_flags`.
    Shared by `sgde schema infer`, `sgde schema check` and `sgde train`."""

    @functools.wraps(fn)
    def wrapper(*args, csv_header, csv_delimiter, csv_na, csv_strip, **kwargs):
        flags = CsvFlags(csv_header, csv_delimiter, tuple(csv_na) if csv_na else None, csv_strip)
        return fn(*args, csv_flags=flags, **kwargs)

    options = [
        click.option(
            "--header/--no-header",
            "csv_header",
            default=None,
            help="Whether the CSV's first line names the columns (schema: csv.no_header). Without one, the columns "
            "are the schema's, in order.",
        ),
        click.option(
            "--delimiter",
            "csv_delimiter",
            metavar="CHAR",
            default=None,
            help="The one character between fields (schema: csv.delimiter; default ','); 'tab' or '\\t' for a tab.",
        ),
        click.option(
            "--na",
            "csv_na",
            metavar="TOKEN",
            multiple=True,
            help="A field value meaning missing, e.g. '?' (repeat for several; schema: csv.na_tokens, which these "
            "replace). Blank fields are always missing; --na '' declares no other token.",
        ),
        click.option(
            "--strip/--no-strip",
            "csv_strip",
            default=None,
            help="Remove spaces and tabs around every field (schema: csv.strip_whitespace).",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def merge_csv_flags(options: pb.CsvOptions, flags: CsvFlags) -> None:
    """Write the flags that were given over `options` (a schema's tabular.csv): the command line wins."""
    if flags.header is not None:
        options.no_header = not flags.header
    if flags.delimiter is not None:
        delimiter = "\t" if flags.delimiter in ("tab", "\\t") else flags.delimiter
        if len(delimiter) != 1 or delimiter in '"\r\n':
            raise click.BadParameter(
                f"{flags.delimiter!r}: give one character other than a quote or a line break (',', ';', '|', or tab)",
                param_hint="--delimiter",
            )
        options.delimiter = "" if delimiter == "," else delimiter
    if flags.na is not None:
        del options.na_tokens[:]
        options.na_tokens.extend(dict.fromkeys(token for token in flags.na if token))  # blank: always missing
    if flags.strip is not None:
        options.strip_whitespace = flags.strip


def with_csv_flags(schema: pb.DataSchema, flags: CsvFlags) -> pb.DataSchema:
    """`schema` with the CSV flags merged into its tabular.csv (a validated copy; `schema` itself if none given)."""
    from libsgde.io.schema import validate_schema
    from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

    if not flags.given():
        return schema
    if schema.WhichOneof("kind") != "tabular":
        raise click.UsageError("--header, --no-header, --delimiter, --na and --strip are for CSV files (tabular data)")
    merged = pb.DataSchema()
    merged.CopyFrom(schema)
    merge_csv_flags(merged.tabular.csv, flags)
    validate_schema(merged)
    return merged


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
@csv_flag_options
@handles_errors
@_data_errors_fail
def schema_infer(file: Path, dest: Path, label_column: str | None, csv_flags: CsvFlags) -> None:
    """Propose a schema for FILE (.csv, .npz, idx). Its bounds come from the data: replace them before training.

    In a CSV, values with spaces around them turn on whitespace stripping unless --strip/--no-strip says, and the
    common NA tokens ("?", "NA", "N/A", "NaN", "null", "None", ...) are read as missing unless --na names the
    tokens; the warnings say which columns and rows each decision concerns."""
    import json

    from rich.markup import escape

    from libsgde.io.datasets import infer_schema
    from libsgde.io.schema import schema_to_dict
    from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

    options = pb.CsvOptions()
    merge_csv_flags(options, csv_flags)
    proposed, warnings = infer_schema(
        file,
        label_column,
        csv_options=options if csv_flags.given() else None,
        detect_na=csv_flags.na is None,
        detect_strip=csv_flags.strip is None,
    )
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
@csv_flag_options
@handles_errors
@_data_errors_fail
def schema_check(file: Path, schema_file: Path, labels_file: Path | None, csv_flags: CsvFlags) -> None:
    """Load FILE as the schema declares it; show its size, model-space shape and the values clipped into bounds."""
    import json

    from rich.markup import escape

    from libsgde.io.datasets import load_dataset
    from libsgde.io.schema import schema_from_dict

    try:
        document = json.loads(schema_file.read_text(encoding="utf-8"))
    except ValueError as e:  # bad JSON or not UTF-8
        _fail(escape(f"{schema_file}: not a JSON file ({e})"))
    data = load_dataset(file, with_csv_flags(schema_from_dict(document), csv_flags), labels_path=labels_file)
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
