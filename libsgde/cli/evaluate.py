"""`sgde evaluate`: utility, fidelity and a privacy audit of a generator; a report folder."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from libsgde.cli.common import _client, console, handles_errors, main, out
from libsgde.cli.schema import _data_errors_fail


@main.command("evaluate")
@click.argument("model")
@click.option(
    "--real",
    "holdout_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Real records the generator never saw (.csv, .npz, idx): the test set of TSTR and TRTR, the "
    "reference of fidelity, the non-members of the audit.",
)
@click.option(
    "--train",
    "train_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The generator's training data: TRTR and the privacy audit (members) need it.",
)
@click.option(
    "--samples",
    "num_samples",
    type=click.IntRange(min=2, max=1_000_000),
    default=None,
    help="Synthetic samples to draw (default: as many as training records, else held-out ones).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Sampling, classifiers and the audit's subsets.",
)
@click.option(
    "--out",
    "report",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder (default evaluation-OWNER-MODEL-vN).",
)
@click.option(
    "--classifier",
    "classifiers",
    multiple=True,
    type=click.Choice(["logreg", "mlp", "cnn"]),
    help="Classifiers for TSTR (repeatable; default logreg and mlp, and cnn for images).",
)
@click.option("--no-publish", is_flag=True, help="Do not store the metrics on the model in the registry.")
@click.pass_context
@handles_errors
@_data_errors_fail
def evaluate_command(
    ctx,
    model: str,
    holdout_file: Path,
    train_file: Path | None,
    num_samples: int | None,
    seed: int,
    report: Path | None,
    classifiers: tuple[str, ...],
    no_publish: bool,
) -> None:
    """Judge a generator (MODEL, MODEL@N, or a local artifact file): samples from the sampler, then utility
    (train on synthetic, test on real), fidelity and a membership-inference audit; writes a report folder and stores
    the metrics on the model (owner only)."""
    from rich.markup import escape

    from libsgde.client.evaluation import evaluate_model

    console.print("sampling, then training the classifiers (on images the CNN takes minutes on a CPU)")
    with _client(ctx) as client:
        result = evaluate_model(
            client,
            model,
            holdout_file,
            train_path=train_file,
            num_samples=num_samples,
            seed=seed,
            out=report,
            classifiers=list(classifiers) or None,
            publish=not no_publish,
        )
    ev = result.evaluation
    s = ev.sizes
    out.print(
        f"{escape(result.source)}: {s['synthetic']} synthetic samples, {s['holdout']} held-out and "
        f"{s['train']} training records",
        highlight=False,
    )
    if ev.utility:
        table = Table("classifier", "TSTR", "TRTR", "seconds")
        for r in ev.utility:
            table.add_row(
                r.classifier,
                f"{r.tstr_accuracy:.3f}",
                "-" if r.trtr_accuracy is None else f"{r.trtr_accuracy:.3f}",
                f"{r.seconds:.1f}",
            )
        out.print(table)
    for name in (
        "fidelity.marginal_mean",
        "fidelity.correlation_mean_abs_diff",
        "fidelity.mean_image_rms",
        "audit.mia_auc",
        "audit.mia_tpr_at_fpr_1pct",
        "audit.dcr_share_closer_to_train",
        "audit.exact_copies_train",
        "audit.exact_copies_holdout",
    ):
        if name in result.metrics:
            out.print(f"{name}: {result.metrics[name]:.4g}", highlight=False)
    if ev.audit is not None:
        verdict = (
            "[bold red]FLAGGED[/]: " + escape("; ".join(ev.audit.reasons))
            if ev.audit.flagged
            else "not flagged (no evidence of memorisation)"
        )
        out.print(f"privacy audit: {verdict}", highlight=False)
    else:
        out.print("privacy audit: skipped (give --train, the generator's training data)", highlight=False)
    where = escape(str(result.folder / "report.md"))
    stored = f"; metrics stored on {escape(result.source.split('/versions/')[0])}" if result.published else ""
    out.print(f"report: {where}{stored}", highlight=False)
