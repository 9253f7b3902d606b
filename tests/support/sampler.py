"""Real samplers for tests: in-process (fast, shares the test's JAX) or as a subprocess (configured by environment
only); and small generator artifacts made without training."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from libsgde.security import tls
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from services.sampler.server import SamplerConfig, SamplerHandle, start
from tests.support.services import ServiceProcess, free_port


def start_sampler(root: Path, pki: tls.PkiPaths, registry: str, **overrides) -> tuple[SamplerConfig, SamplerHandle]:
    cfg = SamplerConfig(
        listen=f"127.0.0.1:{free_port()}", state_dir=root / "state", registry=registry, pki=pki, metrics_port=0
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg, start(cfg)


def make_generator_artifact(
    path: Path, schema: pb.DataSchema, config: dict | None = None, seed: int = 0, prior: list[float] | None = None
) -> str:
    """A dp-merf artifact with freshly initialised (untrained) weights, through the same writer training uses; its
    privacy report honestly says "none". Returns its sha256."""
    import jax

    from libsgde.io.artifact import build_manifest, write_artifact
    from libsgde.io.encoding import model_space
    from libsgde.ml.architectures import CLASS_PRIOR, get_architecture
    from libsgde.ml.architectures.base import flatten

    arch = get_architecture("dp-merf")
    space = model_space(schema)
    cfg = arch.configure(config or {"hidden": [8], "latent_dim": 2, "features": 50, "generator_batch": 16}, space)
    params = arch.sampling_params(arch.init(jax.random.key(seed), space, cfg))
    tensors = {name: np.asarray(value, np.float32) for name, value in flatten(params).items()}
    k = max(space.num_classes, 1)
    tensors[CLASS_PRIOR] = np.asarray(prior if prior is not None else np.full(k, 1 / k), np.float32)
    manifest = build_manifest(
        arch.name,
        cfg,
        schema,
        pb.PrivacyReport(mechanism="none", epsilon=float("inf")),
        {"note": "untrained, for tests"},
    )
    return write_artifact(Path(path), tensors, manifest)


@dataclass
class SamplerProcess(ServiceProcess):
    service: ClassVar[str] = "sampler"
    home: Path
    pki: tls.PkiPaths
    registry: str
    state_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None

    def service_env(self) -> dict[str, str]:
        return {"SGDE_SAMPLER_STATE_DIR": str(self.state_dir), "SGDE_REGISTRY_ADDRESS": self.registry}
