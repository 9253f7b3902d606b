"""`sgde train` and `sgde jobs`: DP training in the silo's trainer, then signing and publishing here; or, with
`sgde train --local`, training here with no service (libsgde.client.training), published later by `models push`."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, Progress
from rich.table import Column, Table

from libsgde.cli.common import (
    _client,
    _fail,
    _transfer_bar,
    console,
    handles_errors,
    json_option,
    main,
    out,
    print_json,
)
from libsgde.cli.schema import CsvFlags, csv_flag_options, with_csv_flags


def _state(state: int) -> str:
    from libsgde.wire.convert import job_state_text

    return job_state_text(state)


def _loss(loss: float) -> str:
    """NaN: the trainer withholds the loss of training on data the caller may not read."""
    return "withheld" if math.isnan(loss) else f"{loss:.4g}"


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _TrainingView:
    """A training run's progress as `sgde train` shows it, for a trainer's job and a local run alike: a bar on a
    terminal (step / total, epoch, loss, epsilon, rate, ETA), and each message as a line `NAME STATE: MESSAGE`."""

    def __init__(self, name: str):
        from rich.progress import MofNCompleteColumn, TextColumn

        self.name = name
        self.bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            disable=not console.is_terminal,
        )

    def __enter__(self) -> _TrainingView:
        self.bar.__enter__()
        self.task = self.bar.add_task(self.name, total=None, stats="")
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def show(self, state: str, p) -> None:
        """`p`: a ProgressEvent or a local run's Progress (the same fields)."""
        if p.total_steps:
            self.bar.update(
                self.task,
                total=p.total_steps,
                completed=p.step,
                stats=(
                    f"epoch {p.epoch}  loss {_loss(p.loss)}  epsilon {p.epsilon_spent:.3g}  "
                    f"{p.examples_per_second:,.0f} ex/s  ETA {_duration(p.eta_seconds)}"
                ),
            )
        else:
            self.bar.update(self.task, stats=state)
        if p.message:
            self.say(state, p.message)

    def say(self, state: str, message: str) -> None:
        console.print(f"{self.name} {state}: {message}", highlight=False)


def _watch(client, name: str):
    """Shows the job's progress live (a bar on a terminal, its messages otherwise) until it ends; returns the job."""
    try:
        with _TrainingView(name) as view:
            for event in client.watch_job(name):
                view.show(_state(event.state), event)
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
    return (
        f"published {job.published_version}: epsilon {job.privacy.epsilon:.4g} at delta {job.privacy.delta:.3g} "
        f"({job.privacy.mechanism})"
    )


@main.command("train")
@click.option(
    "--data",
    "data_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Data file to upload to the trainer (.csv, .npz, MNIST-style idx .gz); with --local, to train on here.",
)
@click.option(
    "--dataset",
    "dataset_ref",
    help="Data already in the silo instead: datasets/ID (uploaded before), a "
    "path under the trainer's data root, or s3://BUCKET/KEY.",
)
@click.option(
    "--schema",
    "schema_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The data schema (JSON; see `sgde schema infer`).",
)
@click.option(
    "--arch",
    required=True,
    help="Architecture: cvae, dp-merf, scatter-merf, translator (images: class disguise), mst, aim or aim-label "
    "(tables).",
)
@click.option("--epsilon", type=float, required=True, help="Target epsilon of the (epsilon, delta) guarantee.")
@click.option("--delta", type=float, default=0.0, help="Default: min(1e-5, 0.1/N), for N training examples.")
@click.option(
    "--epochs", type=int, default=0, help="Default: about 2000 DP-SGD steps, ceil(2000 * batch / N) within [1, 500]."
)
@click.option("--batch-size", type=int, default=0, help="Expected Poisson batch size (default: min(256, N/10)).")
@click.option("--clip-norm", type=float, default=0.0, help="Per-example clipping norm (default 1).")
@click.option("--lr", "learning_rate", type=float, default=0.0, help="Learning rate (default 1e-3).")
@click.option("--seed", type=int, default=0, help="Initialisation seed (public, recorded in the model).")
@click.option("--config", "config_json", help="Architecture settings as JSON, e.g. '{\"hidden\": [64, 64]}'.")
@click.option("--publish", "model", help="Model to publish to: NAME or YOU/NAME (made if missing). Not with --local.")
@click.option("--no-wait", is_flag=True, help="Submit and print the job's name; do not watch or publish.")
@click.option(
    "--delete-data", is_flag=True, help="Delete the uploaded data from the trainer once the model is published."
)
@click.option(
    "--local",
    is_flag=True,
    help="Train here, with no service and no login; write the artifact (signed with your key if you have one) "
    "and publish it later with `sgde models push`.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --local: where to write the artifact (default ./DATA-ARCH.safetensors).",
)
@click.option(
    "--secret-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --local: the DP mechanism's secret key (at least 32 bytes; keep it private). Default: 32 fresh "
    "random bytes, so each run's bytes differ; the same secret and --seed give the same artifact, as the trainer's.",
)
@csv_flag_options
@click.pass_context
@handles_errors
def train_command(
    ctx,
    data_file: Path | None,
    dataset_ref: str | None,
    schema_file: Path,
    arch: str,
    epsilon: float,
    delta: float,
    epochs: int,
    batch_size: int,
    clip_norm: float,
    learning_rate: float,
    seed: int,
    config_json: str | None,
    model: str,
    no_wait: bool,
    delete_data: bool,
    local: bool,
    out_path: Path | None,
    secret_file: Path | None,
    csv_flags: CsvFlags,
) -> None:
    """Train a differentially private generator in the silo's trainer, then sign and publish it; or, with --local,
    train it here and write the artifact.

    The data goes to the trainer only (inside the silo); what reaches the registry is the trained model, signed
    here with your key, with the privacy report the accountant computed. With --local the data stays on this
    machine, and `sgde models push FILE --name MODEL` publishes the artifact later."""
    import json

    from libsgde.io.schema import SchemaError, schema_from_dict
    from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb

    if local:
        misplaced = [
            flag
            for flag, given in (
                ("--dataset", dataset_ref),
                ("--publish", model),
                ("--no-wait", no_wait),
                ("--delete-data", delete_data),
            )
            if given
        ]
        if misplaced or data_file is None:
            _fail(
                "--local trains on a file here: give --data FILE"
                + (f", without {', '.join(misplaced)}" if misplaced else "")
                + "; publish the artifact later with `sgde models push FILE --name MODEL`"
            )
    elif out_path is not None or secret_file is not None:
        _fail("--out and --secret-file go with --local (the trainer keeps its artifact and makes its own secret)")
    elif (data_file is None) == (dataset_ref is None):
        _fail("give the data: --data FILE (uploaded) or --dataset REF (already in the silo)")
    elif model is None:
        _fail("name the model to publish to: --publish NAME (or train here with --local)")
    try:
        schema = with_csv_flags(schema_from_dict(json.loads(schema_file.read_text())), csv_flags)
    except (ValueError, SchemaError) as e:  # not JSON, or not a valid schema
        _fail(f"{schema_file}: {e}")
    spec = tpb.TrainingSpec(
        architecture=arch,
        target_epsilon=epsilon,
        delta=delta,
        epochs=epochs,
        batch_size=batch_size,
        clip_norm=clip_norm,
        learning_rate=learning_rate,
        seed=seed,
    )
    if config_json:
        try:
            settings = json.loads(config_json)
        except ValueError as e:
            _fail(f"--config is not JSON: {e}")
        if not isinstance(settings, dict):
            _fail("--config must be a JSON object of settings")
        spec.config.update(settings)
    if local:
        assert data_file is not None
        _train_here(data_file, schema, spec, out_path, secret_file)
        return
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
        job = client.publish_job(job.name, delete_dataset=delete_data)
        out.print(_published(job), highlight=False)


def _train_here(data_file: Path, schema, spec, out_path: Path | None, secret_file: Path | None) -> None:
    """`sgde train --local`: libsgde.client.train_local, shown as a trainer job is."""
    from libsgde.client.training import train_local
    from libsgde.wire.convert import train_spec_from_proto

    secret = None
    if secret_file is not None:
        if os.name == "posix" and secret_file.stat().st_mode & 0o077:  # as for signing keys: the owner's alone
            _fail(f"--secret-file {secret_file} is readable by group or others: run `chmod 600 {secret_file}`")
        secret = secret_file.read_bytes()
    asked = train_spec_from_proto(spec)
    try:
        with _TrainingView(data_file.name) as view:
            model = train_local(
                data_file, schema, asked, out_path, secret=secret, progress=lambda p: view.show("running", p)
            )
    except KeyboardInterrupt:
        _fail("stopped; nothing was written", 130)
    pr = model.privacy
    out.print(
        f"trained {model.path}: epsilon {pr.epsilon:.4g} at delta {pr.delta:.3g} ({pr.mechanism}); "
        f"sha256 {model.sha256}",
        highlight=False,
    )
    if model.signature_path is not None:
        out.print(f"signed by {model.signer} ({model.fingerprint}): {model.signature_path}", highlight=False)
    else:
        out.print("not signed: no signing key under $SGDE_HOME/keys (`sgde register` makes one)", highlight=False)
    out.print(f"publish it with `sgde models push {model.path} --name MODEL`", highlight=False)


@main.group()
def jobs() -> None:
    """Training jobs in the silo's trainer."""


@jobs.command("list")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "published", "failed", "cancelled"]))
@json_option
@click.pass_context
@handles_errors
def jobs_list(ctx, state: str | None, json_output: bool) -> None:
    """Your jobs, newest first."""
    from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb

    table = Table("state", "model", "architecture", "progress", "epsilon")
    table.columns.insert(0, Column("job", no_wrap=True, min_width=21))  # the whole name: it is what commands take
    with _client(ctx) as client:
        listed = client.list_jobs(state=tpb.JobState.Value(f"JOB_STATE_{state.upper()}") if state else 0)
        if json_output:
            print_json(list(listed))
            return
        for job in listed:
            p = job.latest_progress
            table.add_row(
                job.name,
                _state(job.state),
                job.publish_model.rsplit("/", 1)[-1],
                job.spec.architecture,
                f"{p.step}/{p.total_steps}" if p.total_steps else "",
                f"{job.privacy.epsilon:.3g}"
                if job.privacy is not None
                else (f"{p.epsilon_spent:.3g} of {job.spec.target_epsilon:g}" if p.total_steps else ""),
            )
    out.print(table)


@jobs.command("show")
@click.argument("job")
@json_option
@click.pass_context
@handles_errors
def jobs_show(ctx, job: str, json_output: bool) -> None:
    """A job: its spec, state, progress, privacy report, error."""
    import dataclasses

    with _client(ctx) as client:
        j = client.get_job(job)
    if json_output:
        print_json(j)
        return
    out.print(f"[bold]{j.name}[/]  {_state(j.state)}  (owner {j.owner})")
    out.print(f"dataset {j.dataset} -> {j.publish_model}")

    def plain(v):  # Struct numbers are doubles: show 8, not 8.0
        return (
            int(v)
            if isinstance(v, float) and v.is_integer()
            else [plain(x) for x in v]
            if isinstance(v, list)
            else {k: plain(x) for k, x in sorted(v.items())}
            if isinstance(v, dict)
            else v
        )

    spec = plain({k: v for k, v in dataclasses.asdict(j.spec).items() if v not in (None, "", 0)})  # as set
    out.print("spec: " + ", ".join(f"{k}={v}" for k, v in spec.items()), highlight=False)
    p = j.latest_progress
    if p.total_steps:
        out.print(
            f"progress: step {p.step}/{p.total_steps}, epoch {p.epoch}, loss {_loss(p.loss)}, epsilon spent "
            f"{p.epsilon_spent:.3g}",
            highlight=False,
        )
    if j.privacy is not None:
        pr = j.privacy
        out.print(
            f"privacy: epsilon {pr.epsilon:.4g} at delta {pr.delta:.3g} ({pr.mechanism}, {pr.accountant}; "
            f"noise multiplier {pr.noise_multiplier:.4g}, {pr.steps} steps, N = {pr.dataset_size})"
            + "".join(f"; with {c.describe()}" for c in pr.components),
            highlight=False,
        )
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
    out.print(f"{j.name} {_state(j.state)}" + (" (stopping)" if _state(j.state) == "running" else ""), highlight=False)


@jobs.command("publish")
@click.argument("job")
@click.option("--delete-dataset", is_flag=True, help="Then delete the job's uploaded dataset from the trainer.")
@click.pass_context
@handles_errors
def jobs_publish(ctx, job: str, delete_dataset: bool) -> None:
    """Sign a succeeded job's model with your key (here) and publish it to the registry."""
    with _client(ctx) as client:
        j = client.publish_job(job, delete_dataset=delete_dataset)
    out.print(_published(j), highlight=False)


@main.group()
def datasets() -> None:
    """Your uploaded datasets in the trainer: list and delete."""


@datasets.command("list")
@json_option
@click.pass_context
@handles_errors
def datasets_list(ctx, json_output: bool) -> None:
    """Your uploads, newest first."""
    with _client(ctx) as client:
        rows = list(client.list_datasets())
    if json_output:
        print_json(rows)
        return
    table = Table("dataset", "file", "bytes", "uploaded", box=None)
    for d in rows:
        uploaded = d.create_time.strftime("%Y-%m-%d %H:%M") if d.create_time else ""
        table.add_row(d.name, d.filename, f"{d.size_bytes:,}", uploaded)
    out.print(table if rows else "no datasets", highlight=False)


@datasets.command("delete")
@click.argument("dataset")
@click.pass_context
@handles_errors
def datasets_delete(ctx, dataset: str) -> None:
    """Delete an upload (refused while a queued or running job uses it)."""
    with _client(ctx) as client:
        client.delete_dataset(dataset)
    out.print(f"deleted {dataset}", highlight=False)
