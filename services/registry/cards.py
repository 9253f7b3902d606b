"""Model cards: a version's facts from the registry's own records (the version's row, the owner's registered key,
the model's metrics with their provenance), rendered to markdown by libsgde.domain.card."""

from __future__ import annotations

import json

from google.protobuf import json_format

from libsgde.domain.card import NOT_SHOWN, audit_verdict, render_markdown
from libsgde.security import signing
from libsgde.wire.convert import card_from_proto, time_to_proto
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from services.registry.catalogue import Catalogue, UserRow, VersionRow


def _metric_records(catalogue: Catalogue, version: VersionRow) -> list[rpb.MetricRecord]:
    """The model's metrics measured on this version, or on no version said; a key stored before the registry kept
    provenance has no author, time or version."""
    records = []
    for key, (value, p) in sorted(catalogue.metrics_with_provenance(version.model).items()):
        if p is not None and p.version not in (0, version.number):
            continue  # measured on another version: that version's card shows it
        records.append(
            rpb.MetricRecord(
                key=key,
                value=value,
                author=p.author if p else "",
                update_time=time_to_proto(p.updated_at) if p else None,
                version=p.version if p else 0,
            )
        )
    return records


def model_card(version: VersionRow, owner: UserRow, *, reader_sees_model: bool, catalogue: Catalogue) -> rpb.ModelCard:
    """The card of `version` for a reader; one who reads it only through a federation (`reader_sees_model` False)
    gets no model description, tags or metrics, as GetModel would show them nothing."""
    model = version.model
    name = f"models/{model.owner}/{model.model_id}"
    manifest = json.loads(version.manifest_json)
    metrics = _metric_records(catalogue, version) if reader_sees_model else []
    verdict = audit_verdict({m.key: m.value for m in metrics}) if reader_sees_model else NOT_SHOWN
    card = rpb.ModelCard(
        name=f"{name}/versions/{version.number}/card",
        version=f"{name}/versions/{version.number}",
        model=name,
        owner=model.owner,
        description=model.description if reader_sees_model else "",
        tags=model.tags if reader_sees_model else [],
        data_kind=version.data_kind,
        # the version's own (its CSV options too); parsed, not validated again: it was at publish
        data_schema=json_format.ParseDict(manifest["data_schema"], pb.DataSchema()),
        architecture=version.architecture,
        architecture_config_json=json.dumps(manifest.get("config", {}), sort_keys=True),
        training_json=json.dumps(manifest.get("training", {}), sort_keys=True),
        privacy=version.privacy,
        metrics=metrics,
        audit_verdict=verdict,
        signing_key_fingerprint=signing.fingerprint(owner.signing_public_key),
        signature_verified=signing.verify_artifact(owner.signing_public_key, version.sha256, version.signature),
        sha256=version.sha256,
        size_bytes=version.size_bytes,
        create_time=time_to_proto(version.created_at),
    )
    card.markdown = render_markdown(card_from_proto(card))
    return card
