"""What every `sgde` command shares: the top-level group, the consoles, and turning errors into one red line."""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import getpass
import json
import math
import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

console = Console(stderr=True)
out = Console()


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


def handles_errors(fn):
    """Turns the SDK's errors into one red line and exit status 1 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from libsgde.errors import SgdeError
        from libsgde.security.tls import PkiError

        try:
            return fn(*args, **kwargs)
        except (SgdeError, PkiError) as e:
            _fail(str(e))
        except FileNotFoundError as e:
            _fail(f"{e.filename}: no such file")

    return wrapper


def _client(ctx: click.Context):
    from libsgde.client import Client

    return Client(ctx.obj.get("registry"), trainer=ctx.obj.get("trainer"), sampler=ctx.obj.get("sampler"))


def _read_password(stdin: bool, confirm: bool = False) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        _fail("no terminal to ask for the password: pipe it with --password-stdin")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != password:
        _fail("the passwords differ")
    return password


def _transfer_bar(description: str) -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


# -- --json: machine-readable output of the list and show commands ---------------------------------------------------

json_option = click.option(
    "--json",
    "json_output",
    is_flag=True,
    help="Print one JSON document on stdout instead of the table (times RFC 3339 UTC, bytes base64).",
)


def as_json(obj: Any) -> Any:
    """`obj` as JSON-ready values: the SDK's dataclasses (libsgde.domain.resources) as objects of their fields,
    recursively; enums as their text ("succeeded"); datetimes as RFC 3339 strings in UTC ("2026-12-02T07:02:50Z");
    bytes as base64; protobuf messages (a DataSchema) in their proto3 JSON form, field names as in the .proto (the
    document `sgde schema infer` writes); floats that JSON cannot hold as the strings "Infinity", "-Infinity" and
    "NaN", as proto3 JSON spells them (an epsilon of +inf: not private; a NaN loss: withheld). Dicts and lists go
    through, their items converted; anything else is a TypeError (convert it to one of these first).

    A command takes `@json_option` (its `json_output` parameter) and, when set, calls `print_json` instead of
    drawing its table."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, enum.Enum):  # before int: the SDK's enums are IntEnums
        return getattr(obj, "text", obj.name.lower())
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, datetime):
        if obj.tzinfo is None:
            raise TypeError(f"{obj!r} is naive: RFC 3339 needs its offset")
        return obj.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(obj, (bytes, bytearray)):
        return base64.b64encode(obj).decode("ascii")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(key): as_json(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_json(item) for item in obj]
    from google.protobuf.message import Message

    if isinstance(obj, Message):
        from google.protobuf import json_format

        return json_format.MessageToDict(obj, preserving_proto_field_name=True)
    raise TypeError(f"no JSON form for a {type(obj).__name__}")


def print_json(obj: Any) -> None:
    """Prints `obj` (see as_json) as one strict JSON document on stdout, the only thing the command writes there:
    a list for a list command, an object for a show command. Progress and notes go to stderr (`console`)."""
    click.echo(json.dumps(as_json(obj), indent=2, allow_nan=False))


@click.group()
@click.option("--registry", envvar="SGDE_REGISTRY_ADDRESS", help="Registry address (default 127.0.0.1:50051).")
@click.option("--trainer", envvar="SGDE_TRAINER_ADDRESS", help="Trainer address (default 127.0.0.1:50052).")
@click.option("--sampler", envvar="SGDE_SAMPLER_ADDRESS", help="Sampler address (default 127.0.0.1:50053).")
@click.version_option(package_name="sgde")
@click.pass_context
def main(ctx: click.Context, registry: str | None, trainer: str | None, sampler: str | None) -> None:
    """SGDE: share differentially private generative models over mutual TLS.

    Files live under $SGDE_HOME (default ~/.sgde): pki/, token.json, keys/, and the embedded services' data.
    """
    ctx.ensure_object(dict)
    ctx.obj["registry"] = registry
    ctx.obj["trainer"] = trainer
    ctx.obj["sampler"] = sampler
