"""What a user asks a training run for. Zero fields mean "the default" (filled in by `libsgde.io.training.check_spec`,
which knows the data size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULTS: dict[str, Any] = {"epochs": 10, "batch_size": 256, "clip_norm": 1.0, "learning_rate": 1e-3, "delta": 1e-5}


@dataclass(frozen=True)
class TrainSpec:
    architecture: str
    target_epsilon: float
    config: dict[str, Any] | None = None
    delta: float = 0.0  # 0: the default (1e-5, or 1/(10 N) when that is smaller)
    epochs: int = 0
    batch_size: int = 0
    clip_norm: float = 0.0
    learning_rate: float = 0.0
    seed: int = 0
