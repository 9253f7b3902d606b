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
from rich.table import Column, Table

from libsgde import config
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

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
    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True,
                    disable=not console.is_terminal)


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

        from libsgde.io.encoding import DataError
        from libsgde.io.schema import SchemaError
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
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Labels file of an idx images FILE (default: its labels-idx1 sibling).")
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
    out.print(f"{file.name}: N = {len(data)}, model space {data.space.kind} {data.space.shape}, "
              f"classes {data.space.num_classes or 'none'}", highlight=False)
    if data.clipped:
        for name, count in sorted(data.clipped.items()):
            out.print(f"clipped into bounds: {name}: {count}", highlight=False)
    else:
        out.print("nothing clipped: every value lies inside the declared bounds", highlight=False)


@main.command()
@click.argument("service", type=click.Choice(["registry", "trainer", "sampler"]))
@click.option("--listen", help="Address to bind (default from $SGDE_<SERVICE>_LISTEN or the default port).")
def serve(service: str, listen: str | None) -> None:
    """Run one service in the foreground (configured by environment variables; see README)."""
    if listen:
        os.environ[f"SGDE_{service.upper()}_LISTEN"] = listen
    if service == "trainer":
        from services.trainer.server import main as trainer_main
        trainer_main()
        return
    if service == "sampler":
        from services.sampler.server import main as sampler_main
        sampler_main()
        return
    from services.registry.server import main as registry_main
    registry_main()


@main.command()
def up() -> None:
    """Start registry, trainer and sampler on loopback with the embedded default (PKI made on first start); Ctrl-C
    stops them."""
    from libsgde.server import serving
    from libsgde.security.tls import init_pki
    from services.registry.server import RegistryConfig, start
    from services.sampler.server import SamplerConfig
    from services.sampler.server import start as start_sampler
    from services.trainer.server import TrainerConfig
    from services.trainer.server import start as start_trainer
    serving.setup_logging(os.environ.get("SGDE_LOG_LEVEL", "WARNING"))
    init_pki(config.pki_dir())
    stop = serving.stop_on_signal()  # before any server starts: a Ctrl-C during start-up still stops cleanly
    handle = start(RegistryConfig.from_env())
    trainer_config, sampler_config = TrainerConfig.from_env(), SamplerConfig.from_env()
    if not os.environ.get("SGDE_REGISTRY_ADDRESS"):
        # the registry just started, wherever it listens
        trainer_config.registry = sampler_config.registry = f"127.0.0.1:{handle.port}"
    started = [handle]
    try:
        started.insert(0, start_trainer(trainer_config))
        started.insert(0, start_sampler(sampler_config))
    except BaseException:
        for running in started:
            running.stop(1)
        raise
    console.print(f"registry on {config.listen_address('registry')}, trainer on {trainer_config.listen}, sampler on "
                  f"{sampler_config.listen} (mTLS; PKI in {config.pki_dir()}; trainer state in "
                  f"{trainer_config.state_dir}, sampler cache in {sampler_config.state_dir}). Ctrl-C stops them.")
    # Sampler and trainer first (streams end, jobs checkpoint) while the registry they call still lives.
    serving.run_until_signalled(started, stop)
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


def _evaluation_summary(metrics) -> str:
    """The best TSTR and the audit's verdict from a model's metrics (what `sgde evaluate` stored), in a few words."""
    parts = []
    tstr = {k.removeprefix("tstr."): v for k, v in metrics.items() if k.startswith("tstr.")}
    if tstr:
        best = max(tstr, key=tstr.get)
        trtr = metrics.get(f"trtr.{best}")
        parts.append(f"TSTR {tstr[best]:.2f}" + (f"/{trtr:.2f}" if trtr is not None else "") + f" {best}")
    if "audit.flagged" in metrics:
        parts.append("audit FLAGGED" if metrics["audit.flagged"] else "audit ok")
    version = metrics.get("evaluate.version")
    return ", ".join(parts) + (f" (v{version:.0f})" if parts and version is not None else "")


@models.command("list")
@click.option("--owner", default="")
@click.option("--tag", default="")
@click.option("--kind", type=click.Choice(sorted(KINDS)), default=None)
@click.pass_context
@handles_errors
def models_list(ctx, owner: str, tag: str, kind: str | None) -> None:
    """Models you may see."""
    with _client(ctx) as client:
        listed = list(client.list_models(owner=owner, tag=tag, data_kind=KINDS.get(kind, 0)))
        # The whole name (it is what commands take); the other columns wrap.
        table = Table(Column("name", no_wrap=True, min_width=max((len(m.name) for m in listed), default=4)),
                      "kind", "versions", "visibility", "tags", "evaluation", "description")
        for m in listed:
            table.add_row(m.name, pb.DataKind.Name(m.data_kind).removeprefix("DATA_KIND_").lower(),
                          str(m.latest_version), pb.Visibility.Name(m.visibility).removeprefix("VISIBILITY_").lower(),
                          ",".join(m.tags), _evaluation_summary(m.metrics), m.description[:60])
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
        if m.metrics:
            metrics = Table("metric", "value", title="metrics (sgde evaluate)")
            for name, value in sorted(m.metrics.items()):
                metrics.add_row(name, f"{value:.4g}")
            out.print(metrics)
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


# -- training ------------------------------------------------------------------------------------------------------

def _state(state: int) -> str:
    from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
    return tpb.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _watch(client, name: str):
    """Shows the job's progress live (a bar on a terminal, its messages otherwise) until it ends; returns the job."""
    from rich.progress import MofNCompleteColumn, TextColumn
    bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[stats]}"), console=console, disable=not console.is_terminal)
    try:
        with bar:
            task = bar.add_task(name, total=None, stats="")
            for event in client.watch_job(name):
                if event.total_steps:
                    bar.update(task, total=event.total_steps, completed=event.step, stats=(
                        f"epoch {event.epoch}  loss {event.loss:.4g}  epsilon {event.epsilon_spent:.3g}  "
                        f"{event.examples_per_second:,.0f} ex/s  ETA {_duration(event.eta_seconds)}"))
                else:
                    bar.update(task, stats=_state(event.state))
                if event.message:
                    console.print(f"{name} {_state(event.state)}: {event.message}", highlight=False)
    except KeyboardInterrupt:
        console.print(f"stopped watching; {name} goes on: `sgde jobs watch {name}`", highlight=False)
        sys.exit(130)
    return client.get_job(name)


def _report_end(job) -> None:
    """One line for a job that ended; exit status 1 unless it succeeded (or was published)."""
    from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
    if job.state == tpb.JOB_STATE_FAILED:
        _fail(f"{job.name} failed: {job.error}")
    if job.state == tpb.JOB_STATE_CANCELLED:
        _fail(f"{job.name} was cancelled")


def _published(job) -> str:
    return (f"published {job.published_version}: epsilon {job.privacy.epsilon:.4g} at delta {job.privacy.delta:.3g} "
            f"({job.privacy.mechanism})")


@main.command("train")
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Data file to upload to the trainer (.csv, .npz, MNIST-style idx .gz).")
@click.option("--dataset", "dataset_ref", help="Data already in the silo instead: datasets/ID (uploaded before), a "
                                               "path under the trainer's data root, or s3://BUCKET/KEY.")
@click.option("--schema", "schema_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The data schema (JSON; see `sgde schema infer`).")
@click.option("--arch", required=True, help="Architecture, e.g. cvae or dp-merf.")
@click.option("--epsilon", type=float, required=True, help="Target epsilon of the (epsilon, delta) guarantee.")
@click.option("--delta", type=float, default=0.0, help="Default: 1e-5 or 1/(10 N), whichever is smaller.")
@click.option("--epochs", type=int, default=0, help="Default 10.")
@click.option("--batch-size", type=int, default=0, help="Expected Poisson batch size (default 256).")
@click.option("--clip-norm", type=float, default=0.0, help="Per-example clipping norm (default 1).")
@click.option("--lr", "learning_rate", type=float, default=0.0, help="Learning rate (default 1e-3).")
@click.option("--seed", type=int, default=0, help="Initialisation seed (public, recorded in the model).")
@click.option("--config", "config_json", help='Architecture settings as JSON, e.g. \'{"hidden": [64, 64]}\'.')
@click.option("--publish", "model", required=True, help="Model to publish to: NAME or YOU/NAME (made if missing).")
@click.option("--no-wait", is_flag=True, help="Submit and print the job's name; do not watch or publish.")
@click.pass_context
@handles_errors
def train_command(ctx, data_file: Path | None, dataset_ref: str | None, schema_file: Path, arch: str,
                  epsilon: float, delta: float, epochs: int, batch_size: int, clip_norm: float, learning_rate: float,
                  seed: int, config_json: str | None, model: str, no_wait: bool) -> None:
    """Train a differentially private generator in the silo's trainer, then sign and publish it.

    The data goes to the trainer only (inside the silo); what reaches the registry is the trained model, signed
    here with your key, with the privacy report the accountant computed."""
    import json

    from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
    from libsgde.io.schema import SchemaError, schema_from_dict
    if (data_file is None) == (dataset_ref is None):
        _fail("give the data: --data FILE (uploaded) or --dataset REF (already in the silo)")
    try:
        schema = schema_from_dict(json.loads(schema_file.read_text()))
    except (ValueError, SchemaError) as e:  # not JSON, or not a valid schema
        _fail(f"{schema_file}: {e}")
    spec = tpb.TrainingSpec(architecture=arch, target_epsilon=epsilon, delta=delta, epochs=epochs,
                            batch_size=batch_size, clip_norm=clip_norm, learning_rate=learning_rate, seed=seed)
    if config_json:
        try:
            settings = json.loads(config_json)
        except ValueError as e:
            _fail(f"--config is not JSON: {e}")
        if not isinstance(settings, dict):
            _fail("--config must be a JSON object of settings")
        spec.config.update(settings)
    with _client(ctx) as client:
        if data_file is not None:
            with _transfer_bar("upload") as bar:
                task = bar.add_task(f"upload {data_file.name}", total=data_file.stat().st_size)
                dataset = client.upload_dataset(data_file, progress=lambda d, t: bar.update(task, completed=d))
            console.print(f"uploaded {data_file.name} to the trainer as {dataset.name}", highlight=False)
            dataset_ref = dataset.name
        job = client.create_job(spec, schema, dataset_ref, model)
        console.print(f"submitted {job.name} ({_state(job.state)})", highlight=False)
        if no_wait:
            out.print(job.name)
            return
        job = _watch(client, job.name)
        _report_end(job)
        job = client.publish_job(job.name)
        out.print(_published(job), highlight=False)


@main.group()
def jobs() -> None:
    """Training jobs in the silo's trainer."""


@jobs.command("list")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "published", "failed", "cancelled"]))
@click.pass_context
@handles_errors
def jobs_list(ctx, state: str | None) -> None:
    """Your jobs, newest first."""
    from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
    table = Table("state", "model", "architecture", "progress", "epsilon")
    table.columns.insert(0, Column("job", no_wrap=True, min_width=21))  # the whole name: it is what commands take
    with _client(ctx) as client:
        for job in client.list_jobs(state=tpb.JobState.Value(f"JOB_STATE_{state.upper()}") if state else 0):
            p = job.latest_progress
            table.add_row(job.name, _state(job.state), job.publish_model.rsplit("/", 1)[-1], job.spec.architecture,
                          f"{p.step}/{p.total_steps}" if p.total_steps else "",
                          f"{job.privacy.epsilon:.3g}" if job.HasField("privacy") else
                          (f"{p.epsilon_spent:.3g} of {job.spec.target_epsilon:g}" if p.total_steps else ""))
    out.print(table)


@jobs.command("show")
@click.argument("job")
@click.pass_context
@handles_errors
def jobs_show(ctx, job: str) -> None:
    """A job: its spec, state, progress, privacy report, error."""
    from google.protobuf import json_format
    with _client(ctx) as client:
        j = client.get_job(job)
    out.print(f"[bold]{j.name}[/]  {_state(j.state)}  (owner {j.owner})")
    out.print(f"dataset {j.dataset} -> {j.publish_model}")
    def plain(v):  # Struct numbers are doubles: show 8, not 8.0
        return (int(v) if isinstance(v, float) and v.is_integer() else [plain(x) for x in v] if isinstance(v, list)
                else {k: plain(x) for k, x in sorted(v.items())} if isinstance(v, dict) else v)
    spec = plain(json_format.MessageToDict(j.spec, preserving_proto_field_name=True))
    out.print("spec: " + ", ".join(f"{k}={v}" for k, v in spec.items()), highlight=False)
    p = j.latest_progress
    if p.total_steps:
        out.print(f"progress: step {p.step}/{p.total_steps}, epoch {p.epoch}, loss {p.loss:.4g}, epsilon spent "
                  f"{p.epsilon_spent:.3g}", highlight=False)
    if j.HasField("privacy"):
        pr = j.privacy
        out.print(f"privacy: epsilon {pr.epsilon:.4g} at delta {pr.delta:.3g} ({pr.mechanism}, {pr.accountant}; "
                  f"noise multiplier {pr.noise_multiplier:.4g}, {pr.steps} steps, N = {pr.dataset_size})",
                  highlight=False)
    if j.artifact_sha256:
        out.print(f"artifact sha256 {j.artifact_sha256}")
    if j.published_version:
        out.print(f"published as {j.published_version}")
    if j.error:
        out.print(f"[red]error:[/] {j.error}", highlight=False)


@jobs.command("watch")
@click.argument("job")
@click.pass_context
@handles_errors
def jobs_watch(ctx, job: str) -> None:
    """Follow a job's progress until it ends."""
    from libsgde.client import job_name
    with _client(ctx) as client:
        j = _watch(client, job_name(job))
    _report_end(j)
    out.print(f"{j.name} {_state(j.state)}", highlight=False)


@jobs.command("cancel")
@click.argument("job")
@click.pass_context
@handles_errors
def jobs_cancel(ctx, job: str) -> None:
    """Cancel a queued or running job."""
    with _client(ctx) as client:
        j = client.cancel_job(job)
    out.print(f"{j.name} {_state(j.state)}" + (" (stopping)" if _state(j.state) == "running" else ""),
              highlight=False)


@jobs.command("publish")
@click.argument("job")
@click.pass_context
@handles_errors
def jobs_publish(ctx, job: str) -> None:
    """Sign a succeeded job's model with your key (here) and publish it to the registry."""
    with _client(ctx) as client:
        j = client.publish_job(job)
    out.print(_published(j), highlight=False)


# -- sampling ------------------------------------------------------------------------------------------------------

def _class_counts(specs: tuple[str, ...]) -> dict[str, int]:
    from rich.markup import escape
    counts: dict[str, int] = {}
    for spec in specs:
        name, sep, count = spec.rpartition("=")
        if not sep or not name or not count.strip().isdigit():
            _fail(escape(f"--class takes NAME=COUNT (e.g. --class yes=500), not {spec!r}"))
        if name in counts:
            _fail(escape(f"--class {name} is given twice"))
        counts[name] = int(count)
    return counts


@main.command("sample")
@click.argument("model")
@click.option("-n", "--num-samples", "num_samples", type=click.IntRange(min=1), default=None,
              help="How many samples (classes drawn from the model's class prior).")
@click.option("--seed", type=int, default=0, help="The same seed and request give the same bytes (default 0).")
@click.option("--class", "classes", multiple=True, metavar="NAME=COUNT",
              help="Exactly COUNT samples of class NAME (repeatable; instead of -n). Output is grouped by class in "
                   "the schema's class order.")
@click.option("--format", "fmt", type=click.Choice(["csv", "npy", "parquet"]), default=None,
              help="Default: from the --out suffix (.csv, .npy, .parquet), else npy.")
@click.option("--out", "dest", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (appears only once the whole stream arrived and its sha256 checked).")
@click.pass_context
@handles_errors
def sample_command(ctx, model: str, num_samples: int | None, seed: int, classes: tuple[str, ...], fmt: str | None,
                   dest: Path) -> None:
    """Stream synthetic data from a model (MODEL, MODEL@N or .../versions/N) through the sampler into a file."""
    from rich.markup import escape
    from rich.progress import MofNCompleteColumn, TextColumn
    counts = _class_counts(classes)
    if counts and num_samples is not None:
        _fail("give -n N or --class NAME=COUNT ..., not both")
    if not counts and num_samples is None:
        _fail("say how many samples: -n N, or --class NAME=COUNT ...")
    fmt = fmt or {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(dest.suffix.lower(), "npy")
    bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)
    with _client(ctx) as client, bar:
        task = bar.add_task(f"sample {model}", total=None)
        try:
            samples = client.sample(model, num_samples or 0, seed=seed, class_counts=counts, format=fmt, out=dest,
                                    progress=lambda done, total: bar.update(task, completed=done, total=total))
        except KeyboardInterrupt:
            console.print("stopped; nothing was written (the sampler stopped too)")
            sys.exit(130)
    m = samples.metadata
    privacy = f"epsilon {m.privacy.epsilon:.3g} at delta {m.privacy.delta:.1e}" if m.privacy.mechanism not in (
        "", "none") else "not private"
    out.print(f"wrote {escape(str(dest))}: {m.num_samples:,} samples of {m.version} ({fmt}; {privacy}; sha256 "
              f"{samples.sha256})", highlight=False)


# -- evaluation ----------------------------------------------------------------------------------------------------

@main.command("evaluate")
@click.argument("model")
@click.option("--real", "holdout_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Real records the generator never saw (.csv, .npz, idx): the test set of TSTR and TRTR, the "
                   "reference of fidelity, the non-members of the audit.")
@click.option("--train", "train_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The generator's training data: TRTR and the privacy audit (members) need it.")
@click.option("--samples", "num_samples", type=click.IntRange(min=2, max=1_000_000), default=None,
              help="Synthetic samples to draw (default: as many as training records, else held-out ones).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Sampling, classifiers and the audit's subsets.")
@click.option("--out", "report", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder (default evaluation-OWNER-MODEL-vN).")
@click.option("--classifier", "classifiers", multiple=True, type=click.Choice(["logreg", "mlp", "cnn"]),
              help="Classifiers for TSTR (repeatable; default logreg and mlp, and cnn for images).")
@click.option("--no-publish", is_flag=True, help="Do not store the metrics on the model in the registry.")
@click.pass_context
@handles_errors
@_data_errors_fail
def evaluate_command(ctx, model: str, holdout_file: Path, train_file: Path | None, num_samples: int | None,
                     seed: int, report: Path | None, classifiers: tuple[str, ...], no_publish: bool) -> None:
    """Judge a generator (MODEL, MODEL@N, or a local artifact file): samples from the sampler, then utility
    (train on synthetic, test on real), fidelity and a membership-inference audit; writes a report folder and stores
    the metrics on the model (owner only)."""
    from rich.markup import escape

    from libsgde.client.evaluation import evaluate_model
    console.print("sampling, then training the classifiers (on images the CNN takes minutes on a CPU)")
    with _client(ctx) as client:
        result = evaluate_model(client, model, holdout_file, train_path=train_file, num_samples=num_samples,
                                seed=seed, out=report, classifiers=list(classifiers) or None,
                                publish=not no_publish)
    ev = result.evaluation
    s = ev.sizes
    out.print(f"{escape(result.source)}: {s['synthetic']} synthetic samples, {s['holdout']} held-out and "
              f"{s['train']} training records", highlight=False)
    if ev.utility:
        table = Table("classifier", "TSTR", "TRTR", "seconds")
        for r in ev.utility:
            table.add_row(r.classifier, f"{r.tstr_accuracy:.3f}",
                          "-" if r.trtr_accuracy is None else f"{r.trtr_accuracy:.3f}", f"{r.seconds:.1f}")
        out.print(table)
    for name in ("fidelity.marginal_mean", "fidelity.correlation_mean_abs_diff", "fidelity.mean_image_rms",
                 "audit.mia_auc", "audit.mia_tpr_at_fpr_1pct", "audit.dcr_share_closer_to_train",
                 "audit.exact_copies_train", "audit.exact_copies_holdout"):
        if name in result.metrics:
            out.print(f"{name}: {result.metrics[name]:.4g}", highlight=False)
    if ev.audit is not None:
        verdict = "[bold red]FLAGGED[/]: " + escape("; ".join(ev.audit.reasons)) if ev.audit.flagged else \
            "not flagged (no evidence of memorisation)"
        out.print(f"privacy audit: {verdict}", highlight=False)
    else:
        out.print("privacy audit: skipped (give --train, the generator's training data)", highlight=False)
    where = escape(str(result.folder / "report.md"))
    stored = f"; metrics stored on {escape(result.source.split('/versions/')[0])}" if result.published else ""
    out.print(f"report: {where}{stored}", highlight=False)


@main.command()
@click.option("--out", "report", type=click.Path(file_okay=False, path_type=Path), default=Path("sgde-demo"),
              help="Folder for the report (and the demo's own $SGDE_HOME under home/).")
@click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Target epsilon of each generator.")
@click.option("--delta", type=click.FloatRange(min=0, max=1e-3, min_open=True), default=1e-5, show_default=True)
@click.option("--arch", type=click.Choice(["dp-merf", "cvae"]), default="dp-merf", show_default=True,
              help="Generator architecture for both data sets.")
@click.option("--samples", type=click.IntRange(min=20, max=100_000), default=2000, show_default=True,
              help="Synthetic rows / images per data set.")
@click.option("--sample-via", type=click.Choice(["auto", "service", "local"]), default="auto", show_default=True,
              help="auto: the sampler service when there is one, else pull and sample here.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Public seed: data splits, initialisation, sampling (the DP noise stays secret).")
@click.option("--tiny", is_flag=True, help="Tiny models and 100 samples: a smoke test in well under a minute.")
def demo(report: Path, epsilon: float, delta: float, arch: str, samples: int, sample_via: str, seed: int,
         tiny: bool) -> None:
    """Train DP generators on scikit-learn's digits and breast_cancer through the services, publish, sample, and
    judge them (train on synthetic, test on real); writes a report folder."""
    from libsgde.errors import SgdeError
    from libsgde.cli.demo import DemoError, run_demo
    try:
        run_demo(report, log=lambda line: out.print(line, highlight=False, markup=False, soft_wrap=True),
                 epsilon=epsilon, delta=delta, arch=arch, samples=samples, sample_via=sample_via, seed=seed,
                 tiny=tiny)
    except (DemoError, SgdeError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        console.print("interrupted; the services were stopped")
        sys.exit(130)
