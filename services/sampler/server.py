"""Runs the sampler: `sgde serve sampler` or `python -m services.sampler`.

Configuration comes from environment variables (so Kubernetes manifests need no files):
  SGDE_SAMPLER_LISTEN             address to bind (default 127.0.0.1:50053)
  SGDE_SAMPLER_STATE_DIR          the artifact cache (default $SGDE_HOME/sampler)
  SGDE_SAMPLER_MAX_SAMPLES        most samples one request may ask for (default 1000000)
  SGDE_SAMPLER_MAX_REQUEST_BYTES  most memory one request may take (default 268435456, 256 MiB). The sampler plans
                                  each request from the model's bytes per row (its generator's activations, its
                                  decoded and encoded rows) and refuses, with RESOURCE_EXHAUSTED, one whose plan
                                  would need more: the message says which chunk_samples fits, or what this limit
                                  must be for one sample of the model. Requests run concurrently, each within it.
  SGDE_SAMPLER_LOADED_MODELS      compiled generators kept in memory, least recently used dropped first (default 4)
  SGDE_SAMPLER_CACHE_BYTES        disk the cached artifacts may take (default 10 GiB; least recently used removed)
  SGDE_SAMPLER_AUTH_CACHE_SECONDS how long a token checked with the registry stays trusted (default 30)
  SGDE_SAMPLER_METRICS_PORT       Prometheus port (0 disables)
  SGDE_SAMPLER_HEALTH_PORT        plaintext port serving only grpc.health.v1, for Kubernetes probes (0: none)
  SGDE_SAMPLER_HEALTH_CHECK_SECONDS  how often the registry is checked (default 5)
  SGDE_SAMPLER_WORKERS, _MAX_STREAMS, _MAX_STREAMS_PER_CALLER, _STREAM_IDLE_SECONDS, _MAX_RPC_SECONDS[_BY_METHOD]
      what calls may hold (workers, streams, idle and call time): libsgde/server/limits.py, the README's table
  SGDE_REGISTRY_ADDRESS           the registry that checks tokens and serves the artifacts (default 127.0.0.1:50051)
  SGDE_PKI_DIR                    CA and certificates (default $SGDE_HOME/pki); the sampler presents `sampler.crt`
                                  both as a server and to the registry
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from libsgde import config
from libsgde.security import tls
from libsgde.server import serving
from libsgde.server.gate import RegistryGate
from libsgde.server.launch import Service
from libsgde.server.limits import ServerLimits
from libsgde.wire.limits import SAMPLE_REQUEST_BYTES
from libsgde.wire.proto.sgde.v1 import sampler_pb2, sampler_pb2_grpc
from services.sampler.cache import ArtifactCache
from services.sampler.servicer import SamplerServicer, SamplerSettings

log = logging.getLogger("sgde.sampler")
SERVICE_NAME = sampler_pb2.DESCRIPTOR.services_by_name["SamplerService"].full_name


@dataclass
class SamplerConfig:
    listen: str
    state_dir: Path
    registry: str
    pki: tls.PkiPaths
    max_samples: int = 1_000_000
    max_request_bytes: int = SAMPLE_REQUEST_BYTES
    loaded_models: int = 4
    cache_bytes: int = 10 << 30
    auth_cache_seconds: float = 30.0
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"  # where the metrics port binds: loopback unless told
    health_port: int = 0
    health_check_seconds: float = 5.0
    limits: ServerLimits = field(default_factory=ServerLimits)

    @classmethod
    def from_env(cls) -> SamplerConfig:
        env = os.environ.get
        return cls(
            listen=config.listen_address("sampler"),
            state_dir=Path(env("SGDE_SAMPLER_STATE_DIR") or config.sgde_home() / "sampler"),
            registry=config.service_address("registry"),
            pki=tls.PkiPaths(config.pki_dir()),
            max_samples=int(env("SGDE_SAMPLER_MAX_SAMPLES") or 1_000_000),
            max_request_bytes=int(env("SGDE_SAMPLER_MAX_REQUEST_BYTES") or SAMPLE_REQUEST_BYTES),
            loaded_models=int(env("SGDE_SAMPLER_LOADED_MODELS") or 4),
            cache_bytes=int(env("SGDE_SAMPLER_CACHE_BYTES") or 10 << 30),
            auth_cache_seconds=float(env("SGDE_SAMPLER_AUTH_CACHE_SECONDS") or 30),
            metrics_port=config.metrics_port("sampler"),
            metrics_host=config.metrics_host("sampler"),
            health_port=config.health_port("sampler"),
            health_check_seconds=config.health_check_seconds("sampler"),
            limits=ServerLimits.from_env("sampler"),
        )


class SamplerHandle(serving.ServerHandle):
    """A running sampler; `cache` is its artifact cache (for operators and tests)."""

    cache: ArtifactCache | None = None


def _warm_up() -> None:
    """Imports the sampling stack (JAX: seconds) in the background, so that the first Sample does not wait."""
    try:
        import libsgde.io.formats
        import libsgde.io.generator  # noqa: F401
    except Exception:  # the first request reports any real problem
        log.exception("could not import the sampling library")


def start(cfg: SamplerConfig) -> SamplerHandle:
    if cfg.max_samples <= 0:
        raise ValueError("SGDE_SAMPLER_MAX_SAMPLES must be > 0")
    if cfg.max_request_bytes <= 0:
        raise ValueError("SGDE_SAMPLER_MAX_REQUEST_BYTES must be > 0")
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cache = ArtifactCache(cfg.state_dir / "artifacts", cfg.loaded_models, cfg.cache_bytes)
    # The sampler's own certificate, presented to the registry; renewed on disk, it is used from the next check on.
    credentials, renewed = tls.renewable_channel_credentials(cfg.pki, "sampler")
    gate = RegistryGate(cfg.registry, credentials, cfg.auth_cache_seconds, renewed=renewed)
    servicer = SamplerServicer(
        gate, cache, SamplerSettings(max_samples=cfg.max_samples, max_request_bytes=cfg.max_request_bytes)
    )

    def add(server) -> list[str]:
        sampler_pb2_grpc.add_SamplerServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    # NOT_SERVING while the registry (which checks every token and holds every artifact) is unreachable.
    handle = serving.start_server(
        service="sampler",
        address=cfg.listen,
        credentials=tls.server_credentials(cfg.pki, "sampler"),
        add_servicers=add,
        metrics_port=cfg.metrics_port,
        metrics_host=cfg.metrics_host,
        health_port=cfg.health_port,
        health_check=gate.check,
        health_every=cfg.health_check_seconds,
        limits=cfg.limits,
        handle_type=SamplerHandle,
    )
    handle.cache = cache
    threading.Thread(target=_warm_up, daemon=True, name="sampler-warm-up").start()
    handle.on_stop.append(gate.close)
    log.info(
        "sampler ready",
        extra={
            "state_dir": str(cfg.state_dir),
            "registry": cfg.registry,
            "max_samples": cfg.max_samples,
            "max_request_bytes": cfg.max_request_bytes,
            "loaded_models": cfg.loaded_models,
        },
    )
    return handle


def main() -> None:
    serving.serve_until_signalled(start, SamplerConfig.from_env)


if __name__ == "__main__":
    main()


SERVICE = Service("sampler", SamplerConfig, start, main)  # the entry point `sgde.services:sampler` (pyproject.toml)
