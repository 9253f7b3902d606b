"""`sgde sample`: synthetic data streamed by the sampler into a file."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TimeRemainingColumn

from libsgde.cli.common import _client, _fail, console, handles_errors, main, out


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
@click.option(
    "-n",
    "--num-samples",
    "num_samples",
    type=click.IntRange(min=1),
    default=None,
    help="How many samples (classes drawn from the model's class prior).",
)
@click.option("--seed", type=int, default=0, help="The same seed and request give the same bytes (default 0).")
@click.option(
    "--class",
    "classes",
    multiple=True,
    metavar="NAME=COUNT",
    help="Exactly COUNT samples of class NAME (repeatable; instead of -n). Output is grouped by class in "
    "the schema's class order.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "npy", "parquet"]),
    default=None,
    help="Default: from the --out suffix (.csv, .npy, .parquet), else npy.",
)
@click.option(
    "--out",
    "dest",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (appears only once the whole stream arrived and its sha256 checked).",
)
@click.pass_context
@handles_errors
def sample_command(
    ctx, model: str, num_samples: int | None, seed: int, classes: tuple[str, ...], fmt: str | None, dest: Path
) -> None:
    """Stream synthetic data from a model (MODEL, MODEL@N or .../versions/N) through the sampler into a file."""
    from rich.markup import escape
    from rich.progress import MofNCompleteColumn, TextColumn

    counts = _class_counts(classes)
    if counts and num_samples is not None:
        _fail("give -n N or --class NAME=COUNT ..., not both")
    if not counts and num_samples is None:
        _fail("say how many samples: -n N, or --class NAME=COUNT ...")
    fmt = fmt or {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(dest.suffix.lower(), "npy")
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with _client(ctx) as client, bar:
        task = bar.add_task(f"sample {model}", total=None)
        try:
            samples = client.sample(
                model,
                num_samples or 0,
                seed=seed,
                class_counts=counts,
                format=fmt,
                out=dest,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except KeyboardInterrupt:
            console.print("stopped; nothing was written (the sampler stopped too)")
            sys.exit(130)
    m = samples.metadata
    privacy = (
        f"epsilon {m.privacy.epsilon:.3g} at delta {m.privacy.delta:.1e}"
        if m.privacy.mechanism not in ("", "none")
        else "not private"
    )
    out.print(
        f"wrote {escape(str(dest))}: {m.num_samples:,} samples of {m.version} ({fmt}; {privacy}; sha256 "
        f"{samples.sha256})",
        highlight=False,
    )
