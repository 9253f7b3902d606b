"""What every `sgde` command shares: the top-level group, the consoles, and turning errors into one red line."""

from __future__ import annotations

import functools
import getpass
import sys

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
