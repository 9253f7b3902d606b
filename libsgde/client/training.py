"""Training on one's own machine, with no service, no certificate and no login: `train_local` (the face of
`sgde train --local`). Publish the artifact later with `Client.push` / `sgde models push FILE --name MODEL`.

It runs what the trainer runs for an uploaded dataset (libsgde.io.training.train_file): the same checks with the
same field names, the same defaults chosen from N, the same training; for the same data, schema, spec, seed and
secret, the same artifact bytes. The secret is the DP mechanism's key: without one, 32 fresh random bytes (as in the
trainer), so two runs give different bytes; with one, keep it as private as the data (with the secret and the seed,
the noise can be regenerated and subtracted).

When the user has a signing key under $SGDE_HOME/keys (made by `sgde register`), the artifact is signed with it as
the registry expects (libsgde.security.signing), in a detached file next to it, `<artifact>.sig.json`: who signed,
the key's fingerprint, the artifact's sha256 and the signature. Ed25519 signatures are deterministic, so `push`
later sends this very signature.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from libsgde import config
from libsgde.domain.privacy import PrivacyReport
from libsgde.domain.resources import Progress
from libsgde.domain.specs import TrainSpec
from libsgde.errors import FieldError
from libsgde.io.atomic import write_atomic
from libsgde.security import signing
from libsgde.wire.convert import privacy_from_proto
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

SIGNATURE_SUFFIX = ".sig.json"


@dataclass(frozen=True)
class LocalModel:
    """What `train_local` made: the artifact, its sha256 and privacy report, the spec that ran (every default filled
    in), the defaults chosen from N (one line each), and the signature file when a key of the user's signed it."""

    path: Path
    sha256: str
    privacy: PrivacyReport
    spec: TrainSpec
    defaults: tuple[str, ...] = ()
    signature_path: Path | None = None
    signer: str | None = None  # the user whose key signed
    fingerprint: str | None = None  # of that key's public half, as `sgde whoami` / the registry show it


def default_artifact_path(data: Path, architecture: str) -> Path:
    """`adult.csv` and cvae -> ./adult-cvae.safetensors."""
    stem = Path(data).name.split(".")[0] or "model"
    return Path.cwd() / f"{stem}-{architecture}.safetensors"


def signing_key_for(home: Path | None = None) -> tuple[str, Path] | None:
    """(user name, key path) of the key to sign with: the logged-in user's (token.json) if their key is here, else
    the only key under $SGDE_HOME/keys; None when there is none (or several and nobody logged in)."""
    home = Path(home) if home is not None else config.sgde_home()
    keys = home / "keys"
    try:
        username = json.loads((home / "token.json").read_text()).get("username")
    except (OSError, ValueError, AttributeError):
        username = None
    if isinstance(username, str) and (keys / f"{username}.pem").is_file():
        return username, keys / f"{username}.pem"
    found = sorted(keys.glob("*.pem")) if keys.is_dir() else []
    return (found[0].stem, found[0]) if len(found) == 1 else None


def _schema(schema: pb.DataSchema | Mapping[str, Any] | str | Path) -> pb.DataSchema:
    from libsgde.io.schema import SchemaError, schema_from_dict

    if isinstance(schema, pb.DataSchema):
        return schema
    try:
        return schema_from_dict(dict(schema) if isinstance(schema, Mapping) else json.loads(Path(schema).read_text()))
    except (OSError, ValueError, SchemaError) as e:  # unreadable, not JSON, or not a schema
        raise FieldError("data_schema", f"{schema if isinstance(schema, (str, Path)) else 'the schema'}: {e}") from None


def train_local(
    data: str | Path,
    schema: pb.DataSchema | Mapping[str, Any] | str | Path,
    spec: TrainSpec,
    out: str | Path | None = None,
    *,
    secret: bytes | None = None,
    progress: Callable[[Progress], None] | None = None,
    sign: bool = True,
    home: str | Path | None = None,
    overwrite: bool = False,
) -> LocalModel:
    """Trains a DP generator on the data file `data` (.csv, .npz, idx[.gz]) against `schema` (a DataSchema, its
    dict, or a JSON file's path) and writes the artifact to `out` (default ./<data's stem>-<architecture>.safetensors).

    `progress` receives the run's reports (step, total_steps, epoch, loss, epsilon_spent, ..., message), as a
    trainer job's watchers do; when defaults were chosen from N, a first report (total_steps 0) says which.
    `secret`: the mechanism's key (at least 32 bytes; module docstring). Signs with the user's key under `home`
    (default $SGDE_HOME) when `sign` and there is one. Refuses with FieldError what the trainer refuses, with the
    same fields ("spec.target_epsilon", "data_schema.tabular.columns[2]", ...), and an existing `out` unless
    `overwrite`."""
    from libsgde.io.training import request_violations, train_file  # JAX: loaded when a model trains

    data, data_schema = Path(data), _schema(schema)
    out_path = Path(out) if out is not None else default_artifact_path(data, spec.architecture)
    violations = request_violations(spec, data_schema)  # the trainer's refusals first, in its words
    if out_path.exists() and not overwrite:
        violations.append(("out", f"{out_path} exists: name another file, or delete it first"))
    elif out_path.resolve() == data.resolve():
        violations.append(("out", "the artifact would replace the data file: name another file"))
    if violations:
        raise FieldError.many(violations)
    signer = signing_key_for(Path(home) if home is not None else None) if sign else None
    key = signing.load_signing_key(signer[1]) if signer else None  # a key that cannot sign fails before training
    result = train_file(data, data_schema, spec, out_path, secret=secret, on_progress=progress)
    assert result.spec is not None  # train_file says which spec ran
    model = LocalModel(result.path, result.sha256, privacy_from_proto(result.privacy), result.spec, result.defaults)
    signature_path = out_path.with_name(out_path.name + SIGNATURE_SUFFIX)
    if key is None or signer is None:
        signature_path.unlink(missing_ok=True)  # an overwritten artifact's old signature would not verify
        return model
    # Ed25519 is deterministic: this is the very signature `push` will send for these bytes.
    public = signing.public_key_bytes(key)
    record = {
        "artifact": out_path.name,
        "sha256": result.sha256,
        "signer": signer[0],
        "public_key_fingerprint": signing.fingerprint(public),
        "signature": base64.b64encode(signing.sign_artifact(key, result.sha256)).decode("ascii"),
    }
    write_atomic(signature_path, (json.dumps(record, indent=2) + "\n").encode(), mode=0o644)
    return replace(model, signature_path=signature_path, signer=signer[0], fingerprint=record["public_key_fingerprint"])
