"""`sgde demo`: the registry flow end to end on loopback, in a fresh $SGDE_HOME under the report folder.

For now it publishes a placeholder artifact whose privacy report honestly says "none" (no training ran); the trainer
issue replaces it with DP generators trained on scikit-learn's digits and breast_cancer.
"""
from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from libsgde.artifact import build_manifest, write_artifact
from libsgde.client import Client, SgdeError
from libsgde.proto.sgde.v1 import common_pb2 as pb
from libsgde.security import signing, tls


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _placeholder_artifact(path: Path) -> None:
    schema = pb.DataSchema(tabular=pb.TabularSchema(columns=[
        pb.Column(name="age", type=pb.COLUMN_TYPE_INTEGER, lower=18, upper=100),
        pb.Column(name="outcome", type=pb.COLUMN_TYPE_CATEGORICAL, categories=["healthy", "ill"])],
        label_column="outcome"))
    manifest = build_manifest("placeholder", {}, schema, pb.PrivacyReport(mechanism="none", epsilon=float("inf")),
                              {"note": "demo placeholder: not trained, carries no data"})
    write_artifact(path, {"weights": np.zeros(1024, np.float32)}, manifest)


def run_demo(out: Path, log: Callable[[str], None] = print) -> dict:
    from services.registry.server import RegistryConfig, start

    out = out.resolve()
    home = out / "home"
    home.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pki = tls.init_pki(home / "pki")
    address = f"127.0.0.1:{_free_port()}"
    cfg = RegistryConfig(listen=address, database_url=f"sqlite:///{home / 'registry' / 'registry.db'}",
                         blob_url=(home / "registry" / "blobs").as_uri(), token_key=home / "registry" / "token.pem",
                         pki=pki, metrics_port=0)
    handle = start(cfg)
    log(f"registry on {address} over mutual TLS (CA {pki.ca_cert})")
    steps: list[str] = []
    try:
        suffix = secrets.token_hex(3)
        alice_name, bob_name = f"alice-{suffix}", f"bob-{suffix}"
        password = secrets.token_urlsafe(18)
        clients = {}
        for name in (alice_name, bob_name):
            client = Client(address, home=home / name, pki=pki.root)
            user = client.register(name, f"{name}@example.org", password)
            client.login(name, password)
            clients[name] = client
            steps.append(f"registered and logged in {name} (signing key "
                         f"{signing.fingerprint(user.signing_public_key)})")
            log(steps[-1])
        alice, bob = clients[alice_name], clients[bob_name]
        artifact = out / "placeholder.safetensors"
        _placeholder_artifact(artifact)
        version = alice.push(artifact, "demo-model", description="demo", tags=["demo"])
        steps.append(f"{alice_name} published {version.name} ({version.size_bytes} bytes, sha256 "
                     f"{version.sha256[:16]}..., signed)")
        log(steps[-1])
        try:
            bob.get_model(f"{alice_name}/demo-model")
            raise RuntimeError("bob could see a private model")
        except SgdeError as e:
            steps.append(f"{bob_name} cannot see it while it is private: {e}")
            log(steps[-1])
        alice.share("demo-model", [bob_name])
        seen = [m.name for m in bob.list_models()]
        steps.append(f"after sharing, {bob_name} lists {seen}")
        log(steps[-1])
        pulled, _ = bob.pull(f"{alice_name}/demo-model", out / "pulled.safetensors")
        steps.append(f"{bob_name} pulled {pulled.name}: sha256 and {alice_name}'s signature verified")
        log(steps[-1])
        assert pulled.read_bytes() == artifact.read_bytes()
        for client in clients.values():
            client.close()
    finally:
        handle.stop(grace=2)
    seconds = round(time.perf_counter() - started, 2)
    summary = {"registry": address, "version": version.name, "sha256": version.sha256, "steps": steps,
               "seconds": seconds,
               "privacy": "placeholder artifact, not trained: its report says mechanism none (epsilon = inf)"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text("# SGDE demo\n\n" + "\n".join(f"1. {s}" for s in steps)
                                    + f"\n\nTook {seconds} s. {summary['privacy']}.\n")
    log(f"done in {seconds} s; report in {out / 'summary.md'}")
    return summary
