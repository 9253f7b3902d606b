"""A service started as its container would start it: the Dockerfile's ENTRYPOINT with the manifest's `args`, and
only the environment that the image (ENV) and the manifest (the container's `env`) set. What cannot be the same on
loopback is replaced, and nothing else: listen addresses and ports (the metrics host becomes 127.0.0.1), where the
registry is, the S3 endpoint and bucket, the values the manifest takes from Secrets, and the volumes' mount paths
(each becomes a folder here; the PKI mount becomes a folder holding exactly what the pod's projected Secret holds)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from libsgde.security import tls
from tests.support.k8s import dockerfile_env, dockerfile_stages, env_values, exec_form
from tests.support.services import ServiceProcess, free_port, wait_healthy

IMAGE_VENV = "/opt/sgde"  # where the Dockerfile puts the virtual environment; here it is this interpreter's


def service_pki(pki: tls.PkiPaths, service: str, root: Path) -> tls.PkiPaths:
    """The files a pod of `service` gets from its cert-manager Secret: ca.crt, <service>.crt, <service>.key (no CA
    key, no other identity)."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for source in (pki.ca_cert, pki.cert(service), pki.key(service)):
        shutil.copy2(source, root / source.name)
    return tls.PkiPaths(root)


@dataclass
class ContainerProcess(ServiceProcess):
    service: str
    home: Path  # the pod's volumes become folders under it
    pki: tls.PkiPaths  # what the PKI volume holds
    container: dict  # the manifest's container
    registry: str = ""  # the registry's loopback address, for SGDE_REGISTRY_ADDRESS
    s3_endpoint: str = ""  # for SGDE_REGISTRY_BLOB_URL's endpoint; its bucket becomes `bucket`
    bucket: str = ""
    secrets: dict[tuple[str, str], str] = field(default_factory=dict)  # (Secret, key) -> the value here
    extra_env: dict[str, str] = field(default_factory=dict)  # test-speed knobs only (see test_deploy)
    port: int = 0
    proc: subprocess.Popen | None = None
    health_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        final = dockerfile_stages()[-1]
        (self.entrypoint,) = [exec_form(i.args) for i in final if i.op == "ENTRYPOINT"]
        self.image_env = dockerfile_env(final)
        (self.workdir,) = [i.args for i in final if i.op == "WORKDIR"][-1:]

    # -- what differs on loopback ------------------------------------------------------------------------------

    def _mounts(self) -> dict[str, Path]:
        """mount path -> the folder standing for it here."""
        pki_dir = env_values(self.container)["SGDE_PKI_DIR"]["value"]
        mounts = {}
        for mount in self.container["volumeMounts"]:
            if mount["mountPath"] == pki_dir:
                mounts[pki_dir] = self.pki.root
            else:
                mounts[mount["mountPath"]] = folder = self.home / "volumes" / mount["name"]
                folder.mkdir(parents=True, exist_ok=True)
        return mounts

    def _local(self, value: str, mounts: dict[str, Path]) -> str:
        """`value` with every mount path (and the image's venv) in it replaced by the folder here, in one pass (a
        replacement is never replaced again)."""
        local = {**mounts, IMAGE_VENV: Path(sys.prefix)}
        alternatives = "|".join(re.escape(path) for path in sorted(local, key=len, reverse=True))
        return re.sub(rf"(?<![\w.-])({alternatives})(?=/|$|[^\w.-])", lambda m: str(local[m.group(1)]), value)

    def _blob_url(self, url: str) -> str:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        query["endpoint"] = self.s3_endpoint
        return f"{parts.scheme}://{self.bucket}?{urlencode(query, safe=':')}"

    def _value(self, entry: dict) -> str:
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            return self.secrets[(ref["name"], ref["key"])]
        return entry["value"]

    def command(self) -> list[str]:
        return [*self.entrypoint, *self.container["args"]]

    def environment(self) -> dict[str, str]:
        mounts = self._mounts()
        env = {k: self._local(v.replace("$PATH", os.environ["PATH"]), mounts) for k, v in self.image_env.items()}
        prefix = f"SGDE_{self.service.upper()}"
        for name, entry in env_values(self.container).items():
            value = self._value(entry)
            if name == f"{prefix}_LISTEN":
                value = self.address
            elif name == f"{prefix}_HEALTH_PORT":
                value = str(self.health_port)
            elif name == f"{prefix}_METRICS_PORT":
                value = str(free_port())
            elif name == f"{prefix}_METRICS_HOST":
                value = "127.0.0.1"
            elif name == "SGDE_REGISTRY_ADDRESS":
                value = self.registry
            elif name == "SGDE_REGISTRY_BLOB_URL":
                value = self._blob_url(value)
            else:
                value = self._local(value, mounts)
            env[name] = value
        if "/tmp" in mounts:  # in the pod /tmp is the emptyDir itself; here temporary files go to its folder
            env["TMPDIR"] = str(mounts["/tmp"])
        return {**env, **self.extra_env}

    def cwd(self) -> Path:
        return Path(self._local(self.workdir, self._mounts()))

    def wait_ready(self, timeout: float) -> None:
        """Readiness as the kubelet asks it: the plaintext health port."""
        wait_healthy(f"127.0.0.1:{self.health_port}", None, timeout=timeout)
