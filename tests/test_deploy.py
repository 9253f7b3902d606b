"""The services as Kubernetes runs them: the plaintext health port the kubelet probes (health only, and truthful),
a publish / sample round trip through registry, trainer and sampler started as their containers start, with the
environment the dev overlay sets, and certificates renewed on disk (as cert-manager does) taken up without a restart."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from libsgde.client import Client
from libsgde.errors import SgdeError
from libsgde.security import tls
from libsgde.server.gate import RegistryGate
from libsgde.server.serving import LIVENESS
from libsgde.wire.proto.sgde.v1 import registry_pb2_grpc
from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
from tests.support.container import ContainerProcess, service_pki
from tests.support.fixtures import start_registry
from tests.support.k8s import render, sgde_pods
from tests.support.sampler import start_sampler
from tests.support.seaweed import SeaweedS3
from tests.support.services import free_port, health_status, tabular_schema, user_client, wait_healthy
from tests.support.trainer import TINY_MERF, start_trainer, write_csv

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
FAST = 0.2  # seconds between dependency checks in these tests (SGDE_<SERVICE>_HEALTH_CHECK_SECONDS)


def plain(port: int) -> str:
    return f"127.0.0.1:{port}"


def test_the_health_port_serves_health_and_nothing_else(tmp_path, pki):
    health_port = free_port()
    running, handle = start_registry(tmp_path, pki, health_port=health_port)
    try:
        assert handle.health_port == health_port
        for name in ("", "sgde.v1.RegistryService", LIVENESS):
            assert health_status(plain(health_port), None, name) == SERVING
        with grpc.insecure_channel(plain(health_port)) as channel:
            with pytest.raises(grpc.RpcError) as api:
                registry_pb2_grpc.RegistryServiceStub(channel).WhoAmI(empty_pb2.Empty(), timeout=5)
            assert api.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(grpc.RpcError) as listing:
                stub = reflection_pb2_grpc.ServerReflectionStub(channel)
                list(
                    stub.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                    )
                )
            assert listing.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # the API port still speaks only mutual TLS
        with pytest.raises(grpc.RpcError) as tls_only:
            health_status(running.address, None, timeout=3)
        assert tls_only.value.code() == grpc.StatusCode.UNAVAILABLE
        assert health_status(running.address, pki) == SERVING  # the same servicer behind both ports
    finally:
        handle.stop(grace=0)
    with pytest.raises(grpc.RpcError):  # stopped with the server
        health_status(plain(health_port), None, timeout=2)


def test_no_health_port_unless_asked(tmp_path, pki):
    _, handle = start_registry(tmp_path, pki)
    try:
        assert handle.health_port == 0
    finally:
        handle.stop(grace=0)


def test_the_registry_starts_not_serving_while_its_store_is_unreachable(tmp_path, pki):
    health_port = free_port()
    dead = f"s3://sgde-test?endpoint=127.0.0.1:{free_port()}&secure=false"
    _, handle = start_registry(tmp_path, pki, blob_url=dead, health_port=health_port, health_check_seconds=FAST)
    try:  # at once: the first status comes from a real check, not SERVING then a flip
        assert health_status(plain(health_port), None) == NOT_SERVING
        assert health_status(plain(health_port), None, "sgde.v1.RegistryService") == NOT_SERVING
        assert health_status(plain(health_port), None, LIVENESS) == SERVING  # not a reason to restart it
    finally:
        handle.stop(grace=0)


def test_the_registry_health_follows_its_store(tmp_path, pki, monkeypatch):
    with SeaweedS3(tmp_path / "s3") as s3:
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        health_port = free_port()
        _, handle = start_registry(
            tmp_path,
            pki,
            blob_url=s3.url(f"sgde-{uuid.uuid4().hex[:12]}"),
            health_port=health_port,
            health_check_seconds=FAST,
        )
        try:
            assert health_status(plain(health_port), None) == SERVING
            s3.kill()
            wait_healthy(plain(health_port), None, timeout=20, serving=False)
            assert health_status(plain(health_port), None, LIVENESS) == SERVING
            s3.start()
            wait_healthy(plain(health_port), None, timeout=20)
        finally:
            handle.stop(grace=0)


@pytest.mark.parametrize("start", [start_trainer, start_sampler], ids=["trainer", "sampler"])
def test_trainer_and_sampler_are_ready_only_while_the_registry_answers(start, tmp_path, pki):
    registry_port, health_port = free_port(), free_port()
    _, handle = start(
        tmp_path / "service", pki, plain(registry_port), health_port=health_port, health_check_seconds=FAST
    )
    try:
        assert health_status(plain(health_port), None) == NOT_SERVING
        assert health_status(plain(health_port), None, LIVENESS) == SERVING
        _, registry = start_registry(tmp_path / "registry", pki, listen=plain(registry_port))
        try:
            wait_healthy(plain(health_port), None, timeout=30)
        finally:
            registry.stop(grace=0)
        wait_healthy(plain(health_port), None, timeout=30, serving=False)
    finally:
        handle.stop(grace=0)


# -- as deployed --------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # subprocess forks then execs at once
def test_round_trip_through_the_services_started_as_their_containers(tmp_path, pki, seaweed_tls):
    """Train on the silo's data root, publish, and sample, through registry, trainer and sampler run as
    `sgde serve <service>` with the dev overlay's environment; readiness from the plaintext health ports. The blob
    store speaks S3 over TLS with a certificate of the PKI's CA, as MinIO does in the cluster, and the registry
    verifies it with the CA file its manifest names."""
    containers = {service: container for service, (_, container) in sgde_pods(render("dev")).items()}
    secrets = {
        ("sgde-minio-credentials", "MINIO_ROOT_USER"): seaweed_tls.access_key,
        ("sgde-minio-credentials", "MINIO_ROOT_PASSWORD"): seaweed_tls.secret_key,
    }
    # Not configuration but test speed: this run's shared XLA compilation cache and flags (tests/conftest.py).
    speed = {k: os.environ[k] for k in os.environ if k.startswith(("JAX_PERSISTENT_CACHE_", "XLA_FLAGS"))}
    speed["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAX_COMPILATION_CACHE_DIR"]

    def container(service: str, **kw) -> ContainerProcess:
        root = tmp_path / service
        return ContainerProcess(
            service, root, service_pki(pki, service, root / "pki"), containers[service], extra_env=speed, **kw
        )

    registry = container(
        "registry", s3_endpoint=seaweed_tls.endpoint, bucket=f"sgde-{uuid.uuid4().hex[:12]}", secrets=secrets
    )
    trainer = container("trainer")
    sampler = container("sampler")
    started = []
    try:
        registry.start()
        started.append(registry)
        trainer.registry = sampler.registry = registry.address
        for process in (trainer, sampler):
            process.start(timeout=90)
            started.append(process)
        data_root = trainer.home / "volumes" / "data"  # the trainer's `data` volume, SGDE_TRAINER_DATA_ROOT
        write_csv(data_root / "adult.csv")

        user = user_client(registry.address, pki, tmp_path / "homes")
        with Client(
            registry.address, trainer=trainer.address, sampler=sampler.address, home=user.home, pki=pki.root
        ) as alice:
            user.close()
            spec = tpb.TrainingSpec(architecture="dp-merf", target_epsilon=5.0, delta=1e-3, epochs=1, batch_size=60)
            spec.config.update({**TINY_MERF, "generator_steps": 5})
            job = alice.create_job(spec, tabular_schema(), "adult.csv", "adult")
            events = list(alice.watch_job(job.name, timeout=120))
            assert events[-1].state == tpb.JOB_STATE_SUCCEEDED, events[-1]
            version = alice.publish_job(job.name).published_version
            assert version.startswith(f"models/{alice.username}/adult/versions/")
            samples = alice.sample(version, 50, seed=1)
            assert len(samples) == 50 and len(samples.to_dataframe()) == 50
        assert list(seaweed_tls.client().list_objects(registry.bucket, recursive=True))  # the blob went to S3
    finally:
        for process in reversed(started):
            assert process.stop() == 0, f"{process.service} did not stop cleanly on SIGTERM"


# -- certificate renewal ------------------------------------------------------------------------------------------


def _issue(pki, name: str, *, expired: bool = False) -> None:
    """Rewrites <name>.crt / .key as cert-manager renews a Secret: the same names, the same CA, a new key."""
    now = datetime.now(UTC)
    window = {"not_before": now - timedelta(days=30), "not_after": now - timedelta(days=1)} if expired else {}
    dns, ips = tls.service_names(name) if name in tls.SERVICES else ([], [])
    cert, key = tls.issue_certificate(
        pki.ca_cert.read_bytes(),
        pki.ca_key.read_bytes(),
        name,
        dns,
        ips,
        server=name in tls.SERVICES,
        client=True,
        **window,
    )
    tls.write_private(pki.key(name), key)
    tls.write_public(pki.cert(name), cert)


def test_a_renewed_server_certificate_is_served_without_a_restart(tmp_path):
    pki = tls.init_pki(tmp_path / "pki")
    _issue(pki, "registry", expired=True)
    running, handle = start_registry(tmp_path, pki)
    try:
        with pytest.raises(grpc.RpcError):  # clients refuse the expired certificate
            health_status(running.address, pki, timeout=3)
        _issue(pki, "registry")  # renewed on disk; the process goes on
        wait_healthy(running.address, pki, timeout=20)
    finally:
        handle.stop(grace=0)


def test_the_gate_to_the_registry_moves_to_a_renewed_client_certificate(tmp_path, registry, pki):
    own = service_pki(pki, "trainer", tmp_path / "trainer-pki")
    own.ca_key.parent.mkdir(mode=0o700, exist_ok=True)
    own.ca_key.write_bytes(pki.ca_key.read_bytes())  # only so that this test can issue into `own`
    _issue(own, "trainer", expired=True)
    credentials, renewed = tls.renewable_channel_credentials(own, "trainer")
    gate = RegistryGate(registry.address, credentials, renewed=renewed)
    try:
        with pytest.raises((grpc.RpcError, SgdeError)):  # the registry refuses the expired certificate
            gate.check()
        assert renewed() is None  # nothing changed on disk
        _issue(own, "trainer")
        deadline = time.monotonic() + 20
        while True:
            try:
                gate.check()
                break
            except (grpc.RpcError, SgdeError):
                assert time.monotonic() < deadline, "the gate kept the expired certificate"
                time.sleep(0.2)
    finally:
        gate.close()
