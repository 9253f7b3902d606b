"""The `sgde` command: a thin face over libsgde.client and the services."""
from __future__ import annotations

import functools
import getpass
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from libsgde import config
from libsgde.proto.sgde.v1 import common_pb2 as pb

console = Console(stderr=True)
out = Console()

KINDS = {"tabular": pb.DATA_KIND_TABULAR, "image": pb.DATA_KIND_IMAGE}


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


def handles_errors(fn):
    """Turns the SDK's errors into one red line and exit status 1 instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from libsgde.client import SgdeError
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
    return Client(ctx.obj.get("registry"))


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
    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True,
                    disable=not console.is_terminal)


@click.group()
@click.option("--registry", envvar="SGDE_REGISTRY_ADDRESS", help="Registry address (default 127.0.0.1:50051).")
@click.version_option(package_name="sgde")
@click.pass_context
def main(ctx: click.Context, registry: str | None) -> None:
    """SGDE: share differentially private generative models over mutual TLS.

    Files live under $SGDE_HOME (default ~/.sgde): pki/, token.json, keys/, and the embedded services' data.
    """
    ctx.ensure_object(dict)
    ctx.obj["registry"] = registry


# -- certificates and servers --------------------------------------------------------------------------------------

@main.group()
def certs() -> None:
    """Development certificates for mutual TLS."""


@certs.command("init")
@click.option("--name", "names", multiple=True, help="Extra DNS name or IP for the service certificates.")
@click.option("--force", is_flag=True, help="Make a new CA and certificates even if they exist.")
def certs_init(names: tuple[str, ...], force: bool) -> None:
    """Make a development CA and certificates for registry, trainer, sampler and clients under $SGDE_HOME/pki."""
    from libsgde.security.tls import init_pki
    paths = init_pki(config.pki_dir(), names, force=force)
    out.print(f"PKI ready in {paths.root} (CA: {paths.ca_cert})")


# -- data schemas --------------------------------------------------------------------------------------------------

@main.group("schema")
def schema_group() -> None:
    """Declare what a dataset holds (public bounds and categories), and check data files against it."""


def _data_errors_fail(fn):
    """DataError and SchemaError (bad data or schema files) become one red line, like handles_errors."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from rich.markup import escape

        from libsgde.encoding import DataError
        from libsgde.schema import SchemaError
        try:
            return fn(*args, **kwargs)
        except (DataError, SchemaError) as e:
            _fail(escape(str(e)))
    return wrapper


@schema_group.command("infer")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "dest", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the schema (JSON).")
@click.option("--label", "label_column", default=None, help="CSV column to use as the class label.")
@handles_errors
@_data_errors_fail
def schema_infer(file: Path, dest: Path, label_column: str | None) -> None:
    """Propose a schema for FILE (.csv, .npz, idx). Its bounds come from the data: replace them before training."""
    import json

    from rich.markup import escape

    from libsgde.datasets import infer_schema
    from libsgde.schema import schema_to_dict
    proposed, warnings = infer_schema(file, label_column)
    dest.write_text(json.dumps(schema_to_dict(proposed), indent=2) + "\n")
    for warning in warnings:
        console.print(f"[bold yellow]WARNING:[/] {escape(warning)}", highlight=False)
    out.print(f"wrote {escape(str(dest))}: edit it to public bounds and categories before training", highlight=False)


@schema_group.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--schema", "schema_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Labels file of an idx images FILE (default: its labels-idx1 sibling).")
@handles_errors
@_data_errors_fail
def schema_check(file: Path, schema_file: Path, labels_file: Path | None) -> None:
    """Load FILE as the schema declares it; show its size, model-space shape and the values clipped into bounds."""
    import json

    from rich.markup import escape

    from libsgde.datasets import load_dataset
    from libsgde.schema import schema_from_dict
    try:
        document = json.loads(schema_file.read_text(encoding="utf-8"))
    except ValueError as e:  # bad JSON or not UTF-8
        _fail(escape(f"{schema_file}: not a JSON file ({e})"))
    data = load_dataset(file, schema_from_dict(document), labels_path=labels_file)
    out.print(f"{file.name}: N = {len(data)}, model space {data.space.kind} {data.space.shape}, "
              f"classes {data.space.num_classes or 'none'}", highlight=False)
    if data.clipped:
        for name, count in sorted(data.clipped.items()):
            out.print(f"clipped into bounds: {name}: {count}", highlight=False)
    else:
        out.print("nothing clipped: every value lies inside the declared bounds", highlight=False)


@main.command()
@click.argument("service", type=click.Choice(["registry"]))
@click.option("--listen", help="Address to bind (default from $SGDE_<SERVICE>_LISTEN or the default port).")
def serve(service: str, listen: str | None) -> None:
    """Run one service in the foreground (configured by environment variables; see README)."""
    if listen:
        os.environ[f"SGDE_{service.upper()}_LISTEN"] = listen
    from services.registry.server import main as registry_main
    registry_main()


@main.command()
def up() -> None:
    """Start the services on loopback with the embedded default (PKI made on first start); Ctrl-C stops them."""
    from libsgde import serving
    from libsgde.security.tls import init_pki
    from services.registry.server import RegistryConfig, start
    serving.setup_logging(os.environ.get("SGDE_LOG_LEVEL", "WARNING"))
    init_pki(config.pki_dir())
    handle = start(RegistryConfig.from_env())
    console.print(f"registry on {config.listen_address('registry')} (mTLS; PKI in {config.pki_dir()}). "
                  "Ctrl-C stops it.")
    serving.run_until_signalled([handle])
    console.print("stopped")


# -- accounts ------------------------------------------------------------------------------------------------------

@main.command()
@click.option("--username", prompt=True)
@click.option("--email", prompt=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
@handles_errors
def register(ctx, username: str, email: str, password_stdin: bool) -> None:
    """Create an account; your signing key is made here and never leaves this machine."""
    from libsgde.security.signing import fingerprint
    password = _read_password(password_stdin, confirm=True)
    with _client(ctx) as client:
        user = client.register(username, email, password)
        out.print(f"registered {user.username}; signing key {fingerprint(user.signing_public_key)} "
                  f"in {client.signing_key_path(username)}")


@main.command()
@click.option("--username", prompt=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
@handles_errors
def login(ctx, username: str, password_stdin: bool) -> None:
    """Log in; the token is kept in $SGDE_HOME/token.json (mode 0600)."""
    password = _read_password(password_stdin)
    with _client(ctx) as client:
        reply = client.login(username, password)
        out.print(f"logged in as {username} until {reply.expire_time.ToDatetime().isoformat()}Z")


@main.command()
@click.pass_context
@handles_errors
def logout(ctx) -> None:
    """Forget the saved token."""
    with _client(ctx) as client:
        client.logout()


@main.command()
@click.pass_context
@handles_errors
def whoami(ctx) -> None:
    """Show who the saved token belongs to."""
    from libsgde.security.signing import fingerprint
    with _client(ctx) as client:
        user = client.whoami()
        out.print(f"{user.username} <{user.email}> signing key {fingerprint(user.signing_public_key)}")


# -- models --------------------------------------------------------------------------------------------------------

@main.group()
def models() -> None:
    """Browse, publish and fetch models."""


def _epsilon(privacy: pb.PrivacyReport) -> str:
    if privacy.mechanism in ("", "none"):
        return "not private"
    return f"{privacy.epsilon:.3g}, {privacy.delta:.1e}"


@models.command("list")
@click.option("--owner", default="")
@click.option("--tag", default="")
@click.option("--kind", type=click.Choice(sorted(KINDS)), default=None)
@click.pass_context
@handles_errors
def models_list(ctx, owner: str, tag: str, kind: str | None) -> None:
    """Models you may see."""
    table = Table("name", "kind", "versions", "visibility", "tags", "description")
    with _client(ctx) as client:
        for m in client.list_models(owner=owner, tag=tag, data_kind=KINDS.get(kind, 0)):
            table.add_row(m.name, pb.DataKind.Name(m.data_kind).removeprefix("DATA_KIND_").lower(),
                          str(m.latest_version), pb.Visibility.Name(m.visibility).removeprefix("VISIBILITY_").lower(),
                          ",".join(m.tags), m.description[:60])
    out.print(table)


@models.command("show")
@click.argument("model")
@click.pass_context
@handles_errors
def models_show(ctx, model: str) -> None:
    """A model and its versions."""
    with _client(ctx) as client:
        m = client.get_model(model)
        out.print(f"[bold]{m.name}[/]  {pb.Visibility.Name(m.visibility).removeprefix('VISIBILITY_').lower()}"
                  + (f" (shared with {', '.join(m.shared_with)})" if m.shared_with else ""))
        if m.description:
            out.print(m.description)
        if m.tags:
            out.print("tags: " + ", ".join(m.tags))
        for name, value in sorted(m.metrics.items()):
            out.print(f"{name}: {value:.4g}")
        table = Table("version", "architecture", "epsilon, delta", "size", "sha256", "created")
        for v in client.list_versions(m.name):
            table.add_row(str(v.number), v.architecture, _epsilon(v.privacy), f"{v.size_bytes:,}",
                          v.sha256[:16], v.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M"))
        out.print(table)


@models.command("push")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", "model", required=True, help="OWNER/MODEL or MODEL (yours); made if missing.")
@click.option("--description", default="")
@click.option("--tag", "tags", multiple=True)
@click.option("--visibility", type=click.Choice(["private", "shared", "public"]), default="private")
@click.pass_context
@handles_errors
def models_push(ctx, file: Path, model: str, description: str, tags: tuple[str, ...], visibility: str) -> None:
    """Publish an artifact as the next version of a model (signed with your key)."""
    with _client(ctx) as client, _transfer_bar("push") as bar:
        task = bar.add_task(f"push {file.name}", total=file.stat().st_size)
        version = client.push(file, model, description=description, tags=list(tags), visibility=visibility,
                              progress=lambda done, total: bar.update(task, completed=done))
    out.print(f"published {version.name} (sha256 {version.sha256})")


@models.command("pull")
@click.argument("model")
@click.option("--out", "dest", type=click.Path(path_type=Path), default=None, help="File or folder.")
@click.pass_context
@handles_errors
def models_pull(ctx, model: str, dest: Path | None) -> None:
    """Download a version (MODEL, MODEL@N or .../versions/N), resuming, verified by sha256 and signature."""
    with _client(ctx) as client, _transfer_bar("pull") as bar:
        task = bar.add_task(f"pull {model}", total=None)
        path, version = client.pull(model, dest, progress=lambda d, t: bar.update(task, completed=d, total=t))
    out.print(f"{path} ({version.name}, sha256 and signature verified)")


@models.command("share")
@click.argument("model")
@click.option("--with", "users", multiple=True, help="Username to share with (repeatable).")
@click.option("--public", "visibility", flag_value="public", help="Every registered user may see it.")
@click.option("--private", "visibility", flag_value="private", help="Only you (share list kept).")
@click.pass_context
@handles_errors
def models_share(ctx, model: str, users: tuple[str, ...], visibility: str | None) -> None:
    """Share a model with users, or make it public or private."""
    if not users and not visibility:
        _fail("say --with USER, --public or --private")
    with _client(ctx) as client:
        m = client.share(model, list(users)) if users else client.get_model(model)
        if visibility:
            m = client.update_model(model, visibility=visibility)
    out.print(f"{m.name}: {pb.Visibility.Name(m.visibility).removeprefix('VISIBILITY_').lower()}"
              + (f", shared with {', '.join(m.shared_with)}" if m.shared_with else ""))


@models.command("delete")
@click.argument("model")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_context
@handles_errors
def models_delete(ctx, model: str, yes: bool) -> None:
    """Delete a model and every version of it."""
    if not yes:
        click.confirm(f"delete {model} and all its versions?", abort=True)
    with _client(ctx) as client:
        client.delete_model(model)
    out.print(f"deleted {model}")


@main.command()
@click.option("--out", "report", type=click.Path(path_type=Path), default=Path("sgde-demo"),
              help="Folder for the demo's files.")
def demo(report: Path) -> None:
    """Run the whole flow on one machine: services, an account, publish, browse, pull, verify."""
    from libsgde.demo import run_demo
    run_demo(report, log=out.print)
