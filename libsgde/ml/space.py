"""The model space a generator works in: a per-example shape, the tabular column blocks and the number of classes.

`libsgde.io.encoding` derives it from a data schema and maps data into it; everything in `libsgde.ml` sees only this.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    """Where one part of a tabular column lives in a model-space row. A column is one block, except a numeric
    column with point masses or missing values: its numeric block (named as the column) and its mode block
    (categorical, named column + ":mode": continuous, each point mass, missing). Generators need not know: they
    model numeric and categorical blocks alike, whatever column they come from (one may use `mode_of` to learn a
    numeric value only where it is continuous: elsewhere it holds a fixed position)."""

    name: str
    kind: str  # "numeric" (continuous or integer: one value in [0, 1]) or "categorical" (one-hot)
    start: int
    width: int
    mode_of: str = ""  # a mode block: the name of the numeric block whose mode it is (its slot 0: "continuous")


@dataclass(frozen=True)
class ModelSpace:
    """What a generator sees: the per-example shape, the tabular column blocks, and the number of classes."""

    kind: str  # "tabular" or "image"
    shape: tuple[int, ...]  # (D,) for tabular, (H, W, C) for images
    blocks: tuple[Block, ...] = ()  # tabular only, in row order
    num_classes: int = 0  # 0: unconditional (no label column / no class names)
