"""`sgde train` and `sgde jobs`: DP training in the silo's trainer, then signing and publishing here."""

from __future__ import annotations

import math
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


def _state(state: int) -> str:
    from libsgde.wire.convert import job_state_text

    return job_state_text(state)


def _loss(loss: float) -> str:
    """NaN: the trainer withholds the loss of training on data the caller may not read."""
    return "withheld" if math.isnan(loss) else f"{loss:.4g}"


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _watch(client, name: str):
    """Shows the job's progress live (a bar on a terminal, its messages otherwise) until it ends; returns the job."""
    from rich.progress import MofNCompleteColumn, TextColumn

    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
        disable=not console.is_terminal,
    )
    try:
        with bar:
            task = bar.add_task(name, total=None, stats="")
            for event in client.watch_job(name):
                if event.total_steps:
                    bar.update(
                        task,
                        total=event.total_steps,
                        completed=event.step,
                        stats=(
                            f"epoch {event.epoch}  loss {_loss(event.loss)}  epsilon {event.epsilon_spent:.3g}  "
                            f"{event.examples_per_second:,.0f} ex/s  ETA {_duration(event.eta_seconds)}"
                        ),
                    )
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
    return (
        f"published {job.published_version}: epsilon {job.privacy.epsilon:.4g} at delta {job.privacy.delta:.3g} "
        f"({job.privacy.mechanism})"
    )


@main.command("train")
@click.option(
    "--data",
    "data_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Data file to upload to the trainer (.csv, .npz, MNIST-style idx .gz).",
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
    "--arch", required=True, help="Architecture: cvae, dp-merf, scatter-merf (images), mst, aim or aim-label (tables)."
)
@click.option("--epsilon", type=float, required=True, help="Target epsilon of the (epsilon, delta) guarantee.")
@click.option("--delta", type=float, default=0.0, help="Default: 1e-5 or 1/(10 N), whichever is smaller.")
@click.option("--epochs", type=int, default=0, help="Default 10.")
@click.option("--batch-size", type=int, default=0, help="Expected Poisson batch size (default 256).")
@click.option("--clip-norm", type=float, default=0.0, help="Per-example clipping norm (default 1).")
@click.option("--lr", "learning_rate", type=float, default=0.0, help="Learning rate (default 1e-3).")
@click.option("--seed", type=int, default=0, help="Initialisation seed (public, recorded in the model).")
@click.option("--config", "config_json", help="Architecture settings as JSON, e.g. '{\"hidden\": [64, 64]}'.")
@click.option("--publish", "model", required=True, help="Model to publish to: NAME or YOU/NAME (made if missing).")
@click.option("--no-wait", is_flag=True, help="Submit and print the job's name; do not watch or publish.")
@click.option(
    "--delete-data", is_flag=True, help="Delete the uploaded data from the trainer once the model is published."
)
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
) -> None:
    """Train a differentially private generator in the silo's trainer, then sign and publish it.

    The data goes to the trainer only (inside the silo); what reaches the registry is the trained model, signed
    here with your key, with the privacy report the accountant computed."""
    import json

    from libsgde.io.schema import SchemaError, schema_from_dict
    from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb

    if (data_file is None) == (dataset_ref is None):
        _fail("give the data: --data FILE (uploaded) or --dataset REF (already in the silo)")
    try:
        schema = schema_from_dict(json.loads(schema_file.read_text()))
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
