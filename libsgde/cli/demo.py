"""`sgde demo`: the whole exchange on one machine (libsgde.cli.walkthrough)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from libsgde.cli.common import _fail, console, main, out


@main.command()
@click.option(
    "--out",
    "report",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("sgde-demo"),
    help="Folder for the report (and the demo's own $SGDE_HOME under home/).",
)
@click.option(
    "--epsilon",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Target epsilon of each generator.",
)
@click.option("--delta", type=click.FloatRange(min=0, max=1e-3, min_open=True), default=1e-5, show_default=True)
@click.option(
    "--arch",
    type=click.Choice(["dp-merf", "cvae"]),
    default="dp-merf",
    show_default=True,
    help="Generator architecture for both data sets.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=20, max=100_000),
    default=2000,
    show_default=True,
    help="Synthetic rows / images per data set.",
)
@click.option(
    "--sample-via",
    type=click.Choice(["service", "local"]),
    default="service",
    show_default=True,
    help="service: the sampler streams the samples; local: pull the verified artifacts, sample here.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Public seed: data splits, initialisation, sampling (the DP noise stays secret).",
)
@click.option("--tiny", is_flag=True, help="Tiny models and 100 samples: a smoke test in well under a minute.")
def demo(
    report: Path, epsilon: float, delta: float, arch: str, samples: int, sample_via: str, seed: int, tiny: bool
) -> None:
    """Train DP generators on scikit-learn's digits and breast_cancer through the services, publish, sample, and
    judge them (train on synthetic, test on real); writes a report folder."""
    from libsgde.cli.walkthrough import run_demo
    from libsgde.errors import SgdeError

    try:
        run_demo(
            report,
            log=lambda line: out.print(line, highlight=False, markup=False, soft_wrap=True),
            epsilon=epsilon,
            delta=delta,
            arch=arch,
            samples=samples,
            sample_via=sample_via,
            seed=seed,
            tiny=tiny,
        )
    except SgdeError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        console.print("interrupted; the services were stopped")
        sys.exit(130)
