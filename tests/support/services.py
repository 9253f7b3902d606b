"""Real registries for tests: in-process (fast) or as a subprocess (for SIGKILL / restart tests)."""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libsgde.client import Client
from libsgde.io.artifact import build_manifest, write_artifact
from libsgde.security import tls
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

PASSWORD = "correct horse battery staple"
REPO = Path(__file__).resolve().parents[2]


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: set[int] = set()
_PORTS = random.Random()  # seeded by the OS


def free_port() -> int:
    """A loopback port for a server a test starts: free now, not handed out before in this run, and BELOW the kernel's
    ephemeral range. A port from bind(0) lies in that range, where any outgoing connection (a service calling S3 or
    the registry) may take it as its source port before the server binds it: "Address already in use"."""
    floor = _ephemeral_floor()
    for _ in range(1000):
        port = _PORTS.randrange(max(1024, floor - 12000), floor)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free loopback port below {floor}")


def _channel(address: str, pki: tls.PkiPaths | None) -> grpc.Channel:
    return grpc.secure_channel(address, tls.channel_credentials(pki)) if pki else grpc.insecure_channel(address)


def health_status(address: str, pki: tls.PkiPaths | None, service: str = "", timeout: float = 5.0) -> int:
    """The health status of `service` at `address`: over mutual TLS with `pki`, or plaintext (the health-only
    port the kubelet probes) when `pki` is None."""
    with _channel(address, pki) as channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            .status
        )


def wait_healthy(
    address: str, pki: tls.PkiPaths | None, timeout: float = 30.0, *, serving: bool = True, service: str = ""
) -> None:
    """Waits until `address` reports SERVING (or, with serving=False, NOT_SERVING); `pki` None: plaintext."""
    wanted = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    deadline = time.monotonic() + timeout
    last: object = None
    with _channel(address, pki) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                last = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                if last == wanted:
                    return
            except grpc.RpcError as e:
                last = e
            time.sleep(0.1)
    raise TimeoutError(f"{address} did not become {health_pb2.HealthCheckResponse.ServingStatus.Name(wanted)}: {last}")


class ServiceProcess:
    """`python -m services.<service>` configured only through environment variables, as a container runs it.
    Subclasses are dataclasses with `home`, `pki`, `extra_env`, `port` and `proc`, and name their own settings."""

    service: ClassVar[str]
    home: Path
    pki: tls.PkiPaths
    extra_env: dict[str, str]
    port: int
    proc: subprocess.Popen | None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def service_env(self) -> dict[str, str]:
        return {}

    def command(self) -> list[str]:
        return [sys.executable, "-m", f"services.{self.service}"]

    def environment(self) -> dict[str, str]:
        prefix = f"SGDE_{self.service.upper()}"
        return {
            **os.environ,
            **self.extra_env,
            "SGDE_HOME": str(self.home),
            "SGDE_PKI_DIR": str(self.pki.root),
            f"{prefix}_LISTEN": self.address,
            f"{prefix}_METRICS_PORT": "0",
            "PYTHONPATH": str(REPO),
            **self.service_env(),
        }

    def cwd(self) -> Path:
        return REPO

    def wait_ready(self, timeout: float) -> None:
        wait_healthy(self.address, self.pki, timeout=timeout)

    def start(self, timeout: float = 60) -> None:
        self.port = self.port or free_port()
        log = open(self.home / f"{self.service}-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            self.command(), env=self.environment(), stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd()
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def kill(self) -> None:
        assert self.proc
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@dataclass
class RegistryProcess(ServiceProcess):
    service: ClassVar[str] = "registry"
    home: Path
    pki: tls.PkiPaths
    blob_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None

    def service_env(self) -> dict[str, str]:
        return {"SGDE_REGISTRY_BLOB_URL": self.blob_url}


def user_client(registry_address: str, pki: tls.PkiPaths, home_root: Path, name: str | None = None) -> Client:
    """Registers and logs in a fresh user with their own $SGDE_HOME (keys, token); returns their client."""
    username = name or f"u{uuid.uuid4().hex[:10]}"
    home = home_root / username
    home.mkdir(parents=True, exist_ok=True)
    client = Client(registry_address, home=home, pki=pki.root)
    client.register(username, f"{username}@example.org", PASSWORD)
    client.login(username, PASSWORD)
    return client


def tabular_schema() -> pb.DataSchema:
    return pb.DataSchema(
        tabular=pb.TabularSchema(
            columns=[
                pb.Column(name="age", type=pb.COLUMN_TYPE_INTEGER, lower=0, upper=120),
                pb.Column(name="label", type=pb.COLUMN_TYPE_CATEGORICAL, categories=["no", "yes"]),
            ],
            label_column="label",
        )
    )


SMALL_MERF = {"latent_dim": 2, "features": 50, "generator_batch": 16}  # the hidden widths size the artifact


def generator_tensors(schema: pb.DataSchema, config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 tensors of exactly the shapes dp-merf with this (complete) config implies for `schema`, and a
    uniform class prior: an artifact's weights made without initialising a model (shapes by jax.eval_shape)."""
    from libsgde.io.encoding import model_space
    from libsgde.ml.architectures import CLASS_PRIOR, artifact_tensor_shapes, get_architecture

    shapes = artifact_tensor_shapes(get_architecture("dp-merf"), model_space(schema), config)
    rng = np.random.default_rng(seed)
    tensors = {name: rng.standard_normal(shape, np.float32) for name, shape in shapes.items()}
    tensors[CLASS_PRIOR] = np.full(shapes[CLASS_PRIOR], 1 / shapes[CLASS_PRIOR][0], np.float32)
    return tensors


def merf_config(schema: pb.DataSchema, hidden: list[int]) -> dict:
    """The complete dp-merf config (every setting written out, as an artifact holds it) with these hidden widths."""
    from libsgde.io.encoding import model_space
    from libsgde.ml.architectures import get_architecture

    return get_architecture("dp-merf").configure({**SMALL_MERF, "hidden": hidden}, model_space(schema))


def sized_merf_config(schema: pb.DataSchema, n_floats: int) -> dict:
    """A dp-merf config whose artifact holds about `n_floats` float32 values: the last hidden layer is as wide as it
    needs to be, with full-width layers before it when one layer is not enough."""
    from libsgde.io.encoding import model_space
    from libsgde.ml.architectures import artifact_tensor_shapes, get_architecture

    arch, space = get_architecture("dp-merf"), model_space(schema)
    widest = int(arch.options(space)["hidden"].high)

    def floats(hidden: list[int]) -> int:
        shapes = artifact_tensor_shapes(arch, space, merf_config(schema, hidden))
        return sum(math.prod(s) for s in shapes.values())

    hidden: list[int] = []
    while True:  # the size grows linearly with the last layer's width
        one, two = floats([*hidden, 1]), floats([*hidden, 2])
        width = max(1, 1 + round((n_floats - one) / (two - one)))
        if width <= widest or len(hidden) == 7:
            return merf_config(schema, [*hidden, min(width, widest)])
        hidden.append(widest)


def merf_privacy(noise_multiplier: float = 4.0, dataset_size: int = 500, delta: float = 1e-4) -> pb.PrivacyReport:
    """The accountant's report of one dp-merf release with these parameters (what the registry recomputes)."""
    from libsgde.ml.mechanisms import MeanEmbeddingRelease
    from libsgde.wire.convert import privacy_to_proto

    return privacy_to_proto(MeanEmbeddingRelease().report(noise_multiplier, 1.0, 1, 0.0, dataset_size, delta))


def make_artifact(
    path: Path,
    n_floats: int = 64,
    seed: int = 0,
    schema: pb.DataSchema | None = None,
    privacy: pb.PrivacyReport | None = None,
) -> Path:
    """A small valid artifact: dp-merf with random weights, about `n_floats` of them, each tensor of the shape the
    architecture implies (so the registry's tensor check passes). Its privacy report says "none" unless given
    (merf_privacy gives an honest one): these bytes come from no training at all."""
    schema = schema or tabular_schema()
    config = sized_merf_config(schema, n_floats)
    privacy = privacy or pb.PrivacyReport(mechanism="none", epsilon=float("inf"))
    manifest = build_manifest("dp-merf", config, schema, privacy, {"note": "test"})
    write_artifact(path, generator_tensors(schema, config, seed), manifest)
    return path
