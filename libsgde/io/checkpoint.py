"""Training checkpoints: the optimiser state, the step and the run's secret key, in one safetensors file.

A checkpoint is private to the silo (it holds the secret that drives the DP noise): mode 0600, never published.
It is only resumed by the run with the same fingerprint (spec, schema and data).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import load_file, save

from libsgde.io.atomic import write_atomic
from libsgde.ml.train import Checkpoint

FILENAME = "checkpoint.safetensors"
META_KEY = "sgde.checkpoint"


def save_checkpoint(directory: Path, fingerprint: str, step: int, secret: bytes, state, extra: dict) -> None:
    """Atomically replace the checkpoint in `directory` with this state."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tensors = {f"state/{i:06d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(state))}
    tensors.update({f"extra/{k}": np.asarray(v) for k, v in extra.items()})
    meta = json.dumps({"fingerprint": fingerprint, "step": step, "secret": secret.hex()})
    data = save(tensors, metadata={META_KEY: meta})
    write_atomic(directory / FILENAME, data)  # mode 0600: it holds the secret


def load_checkpoint(directory: Path, fingerprint: str) -> Checkpoint | None:
    """The checkpoint of this run, or None if there is none (or it belongs to another spec or data)."""
    path = directory / FILENAME
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(path, "np") as f:
        meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
    if meta.get("fingerprint") != fingerprint:
        return None
    tensors = load_file(path)
    leaves = [tensors[k] for k in sorted(k for k in tensors if k.startswith("state/"))]
    extra = {k.removeprefix("extra/"): v for k, v in tensors.items() if k.startswith("extra/")}
    return Checkpoint(int(meta["step"]), bytes.fromhex(meta["secret"]), leaves, extra)


def remove_checkpoint(directory: Path) -> None:
    (directory / FILENAME).unlink(missing_ok=True)
