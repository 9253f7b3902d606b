"""A model version's card: what a consumer reads before using a generator (what data and schema, what model, what
privacy, how useful, how audited, who signed it), and its markdown rendering for people.

The registry builds a card from its own records (libsgde.wire.convert.card_from_proto reads one) and serves it with
`render_markdown`'s text, so `grpcurl`, `sgde models show` and the SDK all read the same document.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from libsgde.domain.privacy import PrivacyReport
from libsgde.domain.resources import DataKind

# Audit verdicts, from the audit.* metrics that `sgde evaluate --train` stores (libsgde.evaluate.audit).
NOT_AUDITED = "not audited"
NOT_FLAGGED = "not flagged"
FLAGGED = "flagged"
NOT_SHOWN = "not shown"  # to a reader who may read the version only through a federation, not the model
FLAGGED_KEY = "audit.flagged"
MIA_AUC_KEY = "audit.mia_auc"


@dataclass(frozen=True)
class ColumnSummary:
    """One column of a tabular schema, as a card shows it."""

    name: str
    type: str  # "continuous", "integer" or "categorical"
    lower: float | None  # public bounds of a numeric column; None for a categorical one
    upper: float | None
    categories: int  # how many categories a categorical column declares (0 for numeric ones)
    nullable: bool
    point_masses: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SchemaSummary:
    """A data schema in a few facts: its columns (tables) or image shape, and the classes of its label."""

    data_kind: DataKind
    columns: list[ColumnSummary] = field(default_factory=list)  # tables
    label: str = ""  # a table's label column ("" if none)
    classes: list[str] = field(default_factory=list)  # the label column's categories, or the image class names
    height: int = 0  # images
    width: int = 0
    channels: int = 0
    pixel_max: float = 0.0


@dataclass(frozen=True)
class MetricRecord:
    """An evaluation metric with its provenance: who stored it, when, and the version it was measured on."""

    key: str
    value: float
    author: str  # "" when stored before the registry recorded authors
    update_time: datetime | None
    version: int  # 0 when its writer did not say


@dataclass(frozen=True)
class ModelCard:
    name: str  # "models/{owner}/{model}/versions/{n}/card"
    version: str  # "models/{owner}/{model}/versions/{n}"
    model: str
    owner: str
    description: str
    tags: list[str]
    data_kind: DataKind
    schema: SchemaSummary
    architecture: str
    architecture_config: dict[str, Any]
    training: dict[str, Any]
    privacy: PrivacyReport  # the registry's record, recomputed at publish
    metrics: list[MetricRecord]
    audit_verdict: str
    signing_key_fingerprint: str  # of the owner's registered Ed25519 key
    signature_verified: bool  # the version's signature verifies with that key
    sha256: str
    size_bytes: int
    create_time: datetime | None
    markdown: str = ""  # render_markdown(self), as the registry served it

    @property
    def number(self) -> int:
        return int(self.version.rsplit("/", 1)[1])


def audit_verdict(metrics: dict[str, float]) -> str:
    """NOT_AUDITED, NOT_FLAGGED or FLAGGED from a card's metrics: the audit's own rule, stored as audit.flagged."""
    if FLAGGED_KEY not in metrics:
        return NOT_AUDITED
    return FLAGGED if metrics[FLAGGED_KEY] else NOT_FLAGGED


# -- markdown ------------------------------------------------------------------------------------------------------


def _cell(text: object) -> str:
    """Text safe inside a markdown table cell: pipes escaped, lines joined."""
    return " ".join(str(text).replace("|", "\\|").split())


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "infinite" if value > 0 else "-infinite"
    return f"{value:.4g}"


def _exact(value: float) -> str:
    """A declared bound or point mass, as declared (not rounded: it is a public fact, not a measurement)."""
    return f"{value:.15g}"


def _time(when: datetime | None) -> str:
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if when else "not recorded"


def _table(header: tuple[str, ...], rows: Sequence[tuple[object, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _schema_lines(s: SchemaSummary) -> list[str]:
    if s.data_kind == DataKind.IMAGE:
        lines = [
            f"Images of {s.height} x {s.width} pixels, {s.channels} channel{'s' if s.channels != 1 else ''}, "
            f"pixel values in [0, {_exact(s.pixel_max)}]."
        ]
        if s.classes:
            lines.append(f"Label: the class, one of {len(s.classes)}: {', '.join(s.classes)}.")
        return lines
    lines = [f"A table of {len(s.columns)} column{'s' if len(s.columns) != 1 else ''}."]
    if s.label:
        lines.append(f"Label: `{s.label}` ({len(s.classes)} classes: {', '.join(s.classes)}).")
    else:
        lines.append("Label: none (unconditional generation).")
    rows = []
    for c in s.columns:
        if c.type == "categorical":
            values = f"{c.categories} categories"
        else:
            values = f"[{_exact(c.lower or 0.0)}, {_exact(c.upper or 0.0)}]"
        masses = ", ".join(_exact(p) for p in c.point_masses)
        rows.append((c.name, c.type, values, "yes" if c.nullable else "no", masses or "-"))
    return [*lines, "", *_table(("column", "type", "bounds or categories", "nullable", "point masses"), rows)]


def _privacy_lines(p: PrivacyReport) -> list[str]:
    if p.mechanism in ("", "none"):
        return ["Not differentially private: trained without DP, epsilon is infinite. Treat samples as the data."]
    rows: list[tuple[object, ...]] = [
        ("mechanism", p.mechanism),
        ("epsilon", _number(p.epsilon)),
        ("delta", f"{p.delta:.3g}"),
        (
            "accountant",
            p.accountant + (f" (RDP cross-check: epsilon {_number(p.rdp_epsilon)})" if p.rdp_epsilon else ""),
        ),
        ("N (private training examples)", f"{p.dataset_size:,}"),
        ("noise multiplier", _number(p.noise_multiplier)),
        ("sampling rate", _number(p.sampling_rate)),
        ("steps", f"{p.steps:,}"),
        ("clip norm", _number(p.clip_norm)),
    ]
    rows += [("further release", c.describe()) for c in p.components]
    return [
        *_table(("", ""), rows),
        "",
        "The registry recomputed epsilon with the accountant from these parameters when the version was published.",
    ]


def _metric_lines(card: ModelCard) -> list[str]:
    if card.audit_verdict == NOT_SHOWN:
        return ["Not shown: you read this version through a federation, not its model."]
    if not card.metrics:
        return [f"No evaluation stored for this version (`sgde evaluate {card.version}`)."]
    rows = [
        (
            m.key,
            _number(m.value),
            m.author or "not recorded",
            f"v{m.version}" if m.version else "not said",
            _time(m.update_time),
        )
        for m in sorted(card.metrics, key=lambda m: m.key)
    ]
    return _table(("metric", "value", "stored by", "measured on", "stored"), rows)


def _audit_lines(card: ModelCard) -> list[str]:
    if card.audit_verdict in (NOT_AUDITED, NOT_SHOWN):
        advice = (
            f" (`sgde evaluate {card.version} --real HOLDOUT --train TRAIN`)"
            if card.audit_verdict == NOT_AUDITED
            else ""
        )
        return [f"Verdict: **{card.audit_verdict}**{advice}."]
    by = {m.key: m for m in card.metrics}
    flagged = by[FLAGGED_KEY]
    line = f"Verdict: **{card.audit_verdict}** by the membership-inference / distance-to-closest-record audit"
    if MIA_AUC_KEY in by:
        line += f" (attack AUC {_number(by[MIA_AUC_KEY].value)})"
    if flagged.author:
        line += f", stored by {flagged.author}" + (f" on {_time(flagged.update_time)}" if flagged.update_time else "")
    else:
        line += ", stored before the registry recorded authors"
    line += "."
    return [line, "Not flagged is no proof of privacy: the accountant's epsilon is the guarantee."]


def render_markdown(card: ModelCard) -> str:
    """The card as a markdown document: a title, then data, architecture, privacy, evaluation, audit, and the
    artifact with its signature."""
    title = card.model.removeprefix("models/")
    lines = [f"# Model card: {title}, version {card.number}", ""]
    if card.description:
        lines += [card.description, ""]
    if card.tags:
        lines += ["Tags: " + ", ".join(card.tags), ""]
    lines += ["## Data", "", *_schema_lines(card.schema), ""]
    lines += ["## Architecture", "", f"`{card.architecture}`, with this config:", "", "```json"]
    lines += [json.dumps(card.architecture_config, sort_keys=True, indent=2), "```", ""]
    if card.training:
        lines += ["Training: " + ", ".join(f"{k} {v}" for k, v in sorted(card.training.items())) + ".", ""]
    lines += ["## Privacy", "", *_privacy_lines(card.privacy), ""]
    lines += ["## Evaluation", "", *_metric_lines(card), ""]
    lines += ["## Audit", "", *_audit_lines(card), ""]
    signature = "verifies" if card.signature_verified else "DOES NOT VERIFY"
    rows: list[tuple[object, ...]] = [
        ("version", card.version),
        ("owner", card.owner),
        ("published", _time(card.create_time)),
        ("sha256", card.sha256),
        ("size", f"{card.size_bytes:,} bytes"),
        ("owner's signing key", card.signing_key_fingerprint),
        ("signature (Ed25519, over the sha256)", f"{signature} with the owner's key"),
    ]
    lines += ["## Artifact", "", *_table(("", ""), rows)]
    return "\n".join(lines) + "\n"
