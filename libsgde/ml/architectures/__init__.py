"""The allow-list of generator architectures, looked up by name. Adding one is its module plus one line here."""

from __future__ import annotations

from typing import Any

from libsgde.ml.architectures.base import Architecture, ConfigError
from libsgde.ml.architectures.cvae import CVAE
from libsgde.ml.architectures.dpmerf import DPMERF
from libsgde.ml.architectures.marginals import AIM, MST, AIMLabel
from libsgde.ml.architectures.scatter import ScatterMerf
from libsgde.ml.architectures.translator import Translator
from libsgde.ml.space import ModelSpace

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (CVAE(), DPMERF(), ScatterMerf(), MST(), AIM(), AIMLabel(), Translator())
}
CLASS_PRIOR = "class_prior"  # float32 [max(K, 1)]: label proportions used when a caller asks for no labels

__all__ = ["ARCHITECTURES", "CLASS_PRIOR", "Architecture", "ConfigError", "artifact_tensor_shapes", "get_architecture"]


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(
            "architecture", f"unknown architecture {name!r}; choose one of {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def artifact_tensor_shapes(arch: Architecture, space: ModelSpace, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every float32 tensor an artifact of this architecture and config holds: the sampling
    parameters and the class prior."""
    return {**arch.tensor_shapes(space, config), CLASS_PRIOR: (max(space.num_classes, 1),)}
