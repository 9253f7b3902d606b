"""Where things live and which addresses services use; every default can be overridden by environment variable."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PORTS = {"registry": 50051, "trainer": 50052, "sampler": 50053}
DEFAULT_METRICS_PORTS = {"registry": 9451, "trainer": 9452, "sampler": 9453}


def sgde_home() -> Path:
    """$SGDE_HOME, default ~/.sgde: PKI, tokens, signing keys and the embedded services' data."""
    return Path(os.environ.get("SGDE_HOME") or Path.home() / ".sgde").expanduser()


def pki_dir() -> Path:
    return Path(os.environ.get("SGDE_PKI_DIR") or sgde_home() / "pki")


def service_address(service: str) -> str:
    """Address clients dial: $SGDE_<SERVICE>_ADDRESS, default 127.0.0.1:<default port>."""
    env = os.environ.get(f"SGDE_{service.upper()}_ADDRESS")
    return env or f"127.0.0.1:{DEFAULT_PORTS[service]}"


def listen_address(service: str) -> str:
    """Address a server binds: $SGDE_<SERVICE>_LISTEN, default the client address."""
    return os.environ.get(f"SGDE_{service.upper()}_LISTEN") or service_address(service)


def metrics_port(service: str) -> int:
    """Prometheus port: $SGDE_<SERVICE>_METRICS_PORT; 0 disables the metrics endpoint."""
    env = os.environ.get(f"SGDE_{service.upper()}_METRICS_PORT")
    return int(env) if env is not None else DEFAULT_METRICS_PORTS[service]


def metrics_host(service: str) -> str:
    """Where the plain-HTTP metrics port binds: $SGDE_<SERVICE>_METRICS_HOST, default 127.0.0.1 (this host only).
    A pod sets 0.0.0.0 so that Prometheus can scrape it, and its NetworkPolicy says from where."""
    return os.environ.get(f"SGDE_{service.upper()}_METRICS_HOST") or "127.0.0.1"


def health_port(service: str) -> int:
    """Plaintext health-only port for the kubelet's probes: $SGDE_<SERVICE>_HEALTH_PORT; 0 (the default) opens none."""
    return int(os.environ.get(f"SGDE_{service.upper()}_HEALTH_PORT") or 0)


def health_check_seconds(service: str) -> float:
    """How often a service checks its dependencies for its health status: $SGDE_<SERVICE>_HEALTH_CHECK_SECONDS."""
    seconds = float(os.environ.get(f"SGDE_{service.upper()}_HEALTH_CHECK_SECONDS") or 5.0)
    if seconds <= 0:
        raise ValueError(f"SGDE_{service.upper()}_HEALTH_CHECK_SECONDS must be > 0")
    return seconds
