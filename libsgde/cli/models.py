"""`sgde models`: browse, publish, fetch, share and delete models."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Column, Table

from libsgde.cli.common import (
    _client,
    _fail,
    _transfer_bar,
    as_json,
    handles_errors,
    json_option,
    main,
    out,
    print_json,
)
from libsgde.domain.privacy import PrivacyReport
from libsgde.domain.resources import DataKind


@main.group()
def models() -> None:
    """Browse, publish and fetch models."""


def _epsilon(privacy: PrivacyReport) -> str:
    if privacy.mechanism in ("", "none"):
        return "not private"
    return f"{privacy.epsilon:.3g}, {privacy.delta:.1e}"


def _evaluation_summary(metrics) -> str:
    """The best TSTR and the audit's verdict from a model's metrics (what `sgde evaluate` stored), in a few words."""
    parts = []
    tstr = {k.removeprefix("tstr."): v for k, v in metrics.items() if k.startswith("tstr.")}
    if tstr:
        best = max(tstr, key=lambda name: tstr[name])
        trtr = metrics.get(f"trtr.{best}")
        parts.append(f"TSTR {tstr[best]:.2f}" + (f"/{trtr:.2f}" if trtr is not None else "") + f" {best}")
    if "audit.flagged" in metrics:
        parts.append("audit FLAGGED" if metrics["audit.flagged"] else "audit ok")
    version = metrics.get("evaluate.version")
    return ", ".join(parts) + (f" (v{version:.0f})" if parts and version is not None else "")


@models.command("list")
@click.option("--owner", default="")
@click.option("--tag", default="")
@click.option("--kind", type=click.Choice([k.text for k in DataKind if k]), default=None)
@json_option
@click.pass_context
@handles_errors
def models_list(ctx, owner: str, tag: str, kind: str | None, json_output: bool) -> None:
    """Models you may see."""
    with _client(ctx) as client:
        listed = list(
            client.list_models(owner=owner, tag=tag, data_kind=DataKind[kind.upper()] if kind else DataKind.UNSPECIFIED)
        )
        if json_output:
            print_json(listed)
            return
        # The whole name (it is what commands take); the other columns wrap.
        table = Table(
            Column("name", no_wrap=True, min_width=max((len(m.name) for m in listed), default=4)),
            "kind",
            "versions",
            "visibility",
            "tags",
            "evaluation",
            "description",
        )
        for m in listed:
            table.add_row(
                m.name,
                m.data_kind.text,
                str(m.latest_version),
                m.visibility.text,
                ",".join(m.tags),
                _evaluation_summary(m.metrics),
                m.description[:60],
            )
    out.print(table)


@models.command("show")
@click.argument("model")
@json_option
@click.pass_context
@handles_errors
def models_show(ctx, model: str, json_output: bool) -> None:
    """A model, its versions, and the model card of its latest version (MODEL@N: of version N)."""
    with _client(ctx) as client:
        m = client.get_model(model.rsplit("@", 1)[0].split("/versions/")[0])
        names_version = "@" in model or "/versions/" in model
        card = client.model_card(model) if m.latest_version or names_version else None
        if json_output:  # the model's fields, its versions as the table lists them, and the card (null if none)
            print_json({**as_json(m), "versions": list(client.list_versions(m.name)), "card": card})
            return
        out.print(
            f"[bold]{m.name}[/]  {m.visibility.text}"
            + (f" (shared with {', '.join(m.shared_with)})" if m.shared_with else "")
        )
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
            table.add_row(
                str(v.number),
                v.architecture,
                _epsilon(v.privacy),
                f"{v.size_bytes:,}",
                v.sha256[:16],
                f"{v.create_time:%Y-%m-%d %H:%M}" if v.create_time else "",
            )
        out.print(table)
        if card is not None:  # as markdown, unrendered: people read it, and it pastes into a README as it is
            out.print("\n" + card.markdown, markup=False, highlight=False, emoji=False, soft_wrap=True, end="")


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
        version = client.push(
            file,
            model,
            description=description,
            tags=list(tags),
            visibility=visibility,
            progress=lambda done, total: bar.update(task, completed=done),
        )
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
    out.print(f"{m.name}: {m.visibility.text}" + (f", shared with {', '.join(m.shared_with)}" if m.shared_with else ""))


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
