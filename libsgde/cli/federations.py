"""`sgde federation`: agree on a schema and a privacy policy with other silos, push your generator, pull theirs."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Column, Table

from libsgde.cli.common import _client, _fail, as_json, handles_errors, json_option, main, out, print_json
from libsgde.domain.resources import PrivacyPolicy


@main.group()
def federation() -> None:
    """Federations: create, invite, accept, push your generator, pull everyone's."""


def _policy_line(p: PrivacyPolicy) -> str:
    parts = [
        f"epsilon <= {p.max_epsilon:g}" if p.max_epsilon else "",
        f"delta <= {p.max_delta:g}" if p.max_delta else "",
        f"architectures {', '.join(p.architectures)}" if p.architectures else "",
        f"N >= {p.min_dataset_size}" if p.min_dataset_size else "",
    ]
    return "; ".join(x for x in parts if x) or "no limits"


@federation.command("create")
@click.argument("federation_id")
@click.option("--schema", "schema_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--description", default="")
@click.option("--max-epsilon", type=float, default=0.0, help="Largest epsilon admitted (default: no limit).")
@click.option("--max-delta", type=float, default=0.0, help="Largest delta admitted (default: no limit).")
@click.option("--arch", "architectures", multiple=True, help="An architecture admitted (repeat; default: any).")
@click.option("--min-n", type=int, default=0, help="Smallest number of training examples admitted.")
@click.pass_context
@handles_errors
def federation_create(ctx, federation_id, schema_file, description, max_epsilon, max_delta, architectures, min_n):
    """Create a federation on a schema (its label column or class names are the task); you coordinate it."""
    from libsgde.io.schema import SchemaError, schema_from_dict

    try:
        schema = schema_from_dict(json.loads(schema_file.read_text()))
    except (ValueError, SchemaError) as e:
        _fail(f"{schema_file}: {e}")
    policy = PrivacyPolicy(max_epsilon, max_delta, list(architectures), min_n)
    with _client(ctx) as client:
        f = client.create_federation(federation_id, schema, policy, description)
    out.print(f"created {f.name}: {_policy_line(f.policy)}", highlight=False)


@federation.command("list")
@json_option
@click.pass_context
@handles_errors
def federation_list(ctx, json_output: bool) -> None:
    """Federations you belong to or are invited to."""
    with _client(ctx) as client:
        me, rows = client._me(), list(client.list_federations())
    if json_output:
        return print_json(rows)
    # The whole name (it is what commands take); the other columns wrap.
    name = Column("federation", no_wrap=True, min_width=max((len(f.name) for f in rows), default=10))
    table = Table(name, "coordinator", "you", "members", "policy", "description", box=None)
    for f in rows:
        mine = next((m.state.text for m in f.members if m.username == me), "")
        table.add_row(f.name, f.coordinator, mine, str(len(f.members)), _policy_line(f.policy), f.description)
    out.print(table if rows else "no federations")


@federation.command("show")
@click.argument("federation_ref")
@json_option
@click.pass_context
@handles_errors
def federation_show(ctx, federation_ref: str, json_output: bool) -> None:
    """The federation: schema, policy, members and their admitted generators."""
    from libsgde.io.schema import schema_to_dict

    with _client(ctx) as client:
        f = client.get_federation(federation_ref)
        me = client._me()
        active = any(m.username == me and m.state.text == "active" for m in f.members)
        generators = {g.member: g for g in client.generators(federation_ref)} if active else {}
    if json_output:
        return print_json({**as_json(f), "generators": as_json(list(generators.values()))})
    out.print(f"{f.name} (coordinator {f.coordinator}) {f.description}", highlight=False)
    out.print(f"policy: {_policy_line(f.policy)}", highlight=False)
    out.print(f"schema: {json.dumps(schema_to_dict(f.data_schema))}", highlight=False)
    table = Table("member", "state", Column("generator", no_wrap=True), "epsilon", "delta", "N", box=None)
    for m in f.members:
        g = generators.get(m.username)
        privacy = g.privacy if g else None
        table.add_row(
            m.username,
            m.state.text,
            g.version if g else "",
            f"{privacy.epsilon:.3g}" if privacy else "",
            f"{privacy.delta:.1e}" if privacy else "",
            str(privacy.dataset_size) if privacy else "",
        )
    out.print(table)


def _membership(name: str, help_text: str, call, done: str) -> None:
    @federation.command(name, help=help_text)
    @click.argument("federation_ref")
    @click.pass_context
    @handles_errors
    def command(ctx, federation_ref: str) -> None:
        with _client(ctx) as client:
            call(client, federation_ref)
        out.print(f"{done} {federation_ref}", highlight=False)


_membership("accept", "Accept an invitation.", lambda c, f: c.accept_invitation(f), "you are a member of")
_membership("decline", "Decline an invitation.", lambda c, f: c.decline_invitation(f), "declined")
_membership("leave", "Leave a federation (your generator leaves with you).", lambda c, f: c.leave_federation(f), "left")


@federation.command("delete")
@click.argument("federation_ref")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_context
@handles_errors
def federation_delete(ctx, federation_ref: str, yes: bool) -> None:
    """Delete a federation you coordinate (members keep their models)."""
    if not yes:
        click.confirm(f"delete {federation_ref} for every member?", abort=True)
    with _client(ctx) as client:
        client.delete_federation(federation_ref)
    out.print(f"deleted {federation_ref}", highlight=False)


@federation.command("invite")
@click.argument("federation_ref")
@click.argument("usernames", nargs=-1, required=True)
@click.pass_context
@handles_errors
def federation_invite(ctx, federation_ref: str, usernames: tuple[str, ...]) -> None:
    """Invite users (coordinator only)."""
    with _client(ctx) as client:
        for username in usernames:
            client.invite(federation_ref, username)
            out.print(f"invited {username}", highlight=False)


@federation.command("remove")
@click.argument("federation_ref")
@click.argument("username")
@click.pass_context
@handles_errors
def federation_remove(ctx, federation_ref: str, username: str) -> None:
    """Remove a member, or withdraw an invitation (coordinator only)."""
    with _client(ctx) as client:
        client.remove_member(federation_ref, username)
    out.print(f"removed {username}", highlight=False)


@federation.command("push")
@click.argument("federation_ref")
@click.argument("model")
@click.pass_context
@handles_errors
def federation_push(ctx, federation_ref: str, model: str) -> None:
    """Submit one of your model versions (MODEL, MODEL@N); it replaces your previous one."""
    with _client(ctx) as client:
        g = client.push_generator(federation_ref, model)
    privacy = g.privacy
    shown = f"epsilon {privacy.epsilon:.3g} at delta {privacy.delta:.1e}, checked by the registry" if privacy else ""
    out.print(f"admitted {g.version} to {federation_ref}: {shown}", highlight=False)


@federation.command("pull")
@click.argument("federation_ref")
@click.option("--out", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--include-mine", is_flag=True, help="Your own generator too.")
@click.pass_context
@handles_errors
def federation_pull(ctx, federation_ref: str, folder: Path, include_mine: bool) -> None:
    """Download the members' generators (sha256 and each owner's signature checked)."""
    with _client(ctx) as client:
        pulled = client.pull_federation(federation_ref, folder, include_mine=include_mine)
    for path, version in pulled:
        out.print(f"{version.name} -> {path}", highlight=False)
    if not pulled:
        out.print("no generators to pull yet", highlight=False)


@federation.command("sample")
@click.argument("federation_ref")
@click.option("-n", "num_samples", type=int, default=0, help="Samples in all, split between the members.")
@click.option("--class", "classes", multiple=True, metavar="NAME=COUNT", help="Exact counts per class in all.")
@click.option("--quota", type=click.Choice(["equal", "proportional"]), default="equal", help="Shares by member.")
@click.option("--include-mine", is_flag=True, help="Your own generator too.")
@click.option("--seed", type=int, default=0)
@click.option("--format", "fmt", type=click.Choice(["csv", "npy", "parquet"]), default="npy")
@click.option("--out", "folder", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.pass_context
@handles_errors
def federation_sample(ctx, federation_ref, num_samples, classes, quota, include_mine, seed, fmt, folder) -> None:
    """Synthetic data from the members' generators: one file per member, MEMBER.FORMAT in the folder."""
    from libsgde.cli.sample import _class_counts
    from libsgde.io.atomic import write_atomic

    counts = _class_counts(classes)
    if bool(counts) == bool(num_samples):
        _fail("say how many samples: -n N, or --class NAME=COUNT ... (not both)")
    with _client(ctx) as client:
        samples = client.sample_federation(
            federation_ref,
            num_samples,
            seed=seed,
            class_counts=counts,
            quota=quota,
            include_own=include_mine,
            format=fmt,
        )
    folder.mkdir(parents=True, exist_ok=True)
    for member, part in samples.parts:
        path = folder / f"{member}.{fmt}"
        write_atomic(path, part.raw(), mode=0o644)
        out.print(f"{path}: {len(part):,} samples of {part.metadata.version} (sha256 {part.sha256})", highlight=False)


@federation.command("evaluate")
@click.argument("federation_ref")
@click.option("--train", "train_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--real", "holdout_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--samples", type=int, default=0, help="Synthetic samples from the others (default: your rows).")
@click.option("--seed", type=int, default=0)
@click.option("--out", "folder", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--classifier", "classifiers", multiple=True, help="logreg, mlp or cnn (repeat; default: all).")
@click.pass_context
@handles_errors
def federation_evaluate(ctx, federation_ref, train_file, holdout_file, samples, seed, folder, classifiers) -> None:
    """What membership buys: on your held-out data (--real), a classifier trained on your data (--train), on the
    others' synthetic data, and on both."""
    from libsgde.client.evaluation import evaluate_federation

    with _client(ctx) as client:
        result = evaluate_federation(
            client,
            federation_ref,
            train_file,
            holdout_file,
            num_samples=samples or None,
            seed=seed,
            out=folder,
            classifiers=list(classifiers) or None,
        )
    table = Table("classifier", "(a) local", "(b) others' synthetic", "(c) both", box=None)
    for r in result.results:
        table.add_row(r.classifier, *(f"{r.accuracy[a]:.3f}" for a in ("local", "others", "both")))
    out.print(table)
    out.print(f"report: {result.folder / 'report.md'}", highlight=False)
