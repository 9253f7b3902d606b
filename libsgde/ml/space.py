"""The model space a generator works in: a per-example shape, the tabular column blocks and the number of classes.

`libsgde.io.encoding` derives it from a data schema and maps data into it; everything in `libsgde.ml` sees only this.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    """Where one tabular column lives in a model-space row."""

    name: str
    kind: str  # "numeric" (continuous or integer: one value in [0, 1]) or "categorical" (one-hot)
    start: int
    width: int


@dataclass(frozen=True)
class ModelSpace:
    """What a generator sees: the per-example shape, the tabular column blocks, and the number of classes."""

    kind: str  # "tabular" or "image"
    shape: tuple[int, ...]  # (D,) for tabular, (H, W, C) for images
    blocks: tuple[Block, ...] = ()  # tabular only, in row order
    num_classes: int = 0  # 0: unconditional (no label column / no class names)
