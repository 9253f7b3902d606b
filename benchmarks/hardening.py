"""The attacks of the hardening issue against a real registry process, with its limits on (the defaults) and off (the
same build told to allow everything), side by side in one run:

    python benchmarks/hardening.py [--logins 32] [--streams 70]

- login storm: `--logins` concurrent Logins for names that do not exist (each a 32 MiB scrypt check unless refused):
  the registry's peak memory (VmHWM), how many checks ran, and what the callers got;
- idle streams: `--streams` PublishVersion streams from one caller that send their header and then nothing, then one
  GetModel: how many streams the registry held and refused, and how long GetModel took (10 s: it timed out).

Off means SGDE_REGISTRY_MAX_PASSWORD_CHECKS=1000, streams allowed on every worker from any one caller, and no idle
limit: what a registry without these limits does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc

from benchmarks._machine import machine_line
from libsgde.security import signing, tls
from libsgde.wire.limits import secure_channel
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.proto.sgde.v1 import registry_pb2_grpc
from tests.support.services import RegistryProcess, make_artifact, user_client

UNLIMITED = {
    "SGDE_REGISTRY_MAX_PASSWORD_CHECKS": "1000",
    "SGDE_REGISTRY_MAX_STREAMS": "64",  # every worker (64, the default)
    "SGDE_REGISTRY_MAX_STREAMS_PER_CALLER": "1000",
    "SGDE_REGISTRY_STREAM_IDLE_SECONDS": "0",
}
OPEN = {"SGDE_REGISTRY_LOGIN_FAILURES_PER_SOURCE": "100000"}  # the storm comes from one address


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    return 0


def login_storm(proc: RegistryProcess, pki: tls.PkiPaths, n: int) -> dict:
    channel = secure_channel(proc.address, tls.channel_credentials(pki))
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    before, barrier, answers = peak_kib(proc.proc.pid), threading.Barrier(n), []

    def one(i: int) -> None:
        barrier.wait()
        try:
            stub.Login(rpb.LoginRequest(username=f"nobody-{i:04d}", password="not the password"), timeout=120)
            answers.append("OK")
        except grpc.RpcError as e:
            answers.append(e.code().name)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    channel.close()
    counts = Counter(answers)
    return {
        "peak MiB": peak_kib(proc.proc.pid) / 1024,
        "growth MiB": (peak_kib(proc.proc.pid) - before) / 1024,
        "checked": counts["UNAUTHENTICATED"],
        "logins refused": counts["UNAVAILABLE"],
    }


def idle_streams(proc: RegistryProcess, pki: tls.PkiPaths, home: Path, n: int) -> dict:
    alice = user_client(proc.address, pki, home)
    alice.push(make_artifact(home / "a.safetensors"), "target")
    sha = "0" * 64  # never sent: the stream stops after its header
    key = signing.load_signing_key(alice.signing_key_path(alice.username))
    header = rpb.PublishVersionRequest.Header(
        model=f"models/{alice.username}/target",
        sha256=sha,
        size_bytes=1 << 20,
        signature=signing.sign_artifact(key, sha),
    )
    hold = threading.Event()

    def requests():
        yield rpb.PublishVersionRequest(header=header)
        hold.wait()

    channel = secure_channel(proc.address, tls.channel_credentials(pki))
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    calls = [stub.PublishVersion.future(requests(), metadata=alice._metadata(), timeout=120) for _ in range(n)]
    time.sleep(3)  # the registry has taken each header (or refused the call)
    refused = sum(1 for c in calls if c.done())
    started = time.perf_counter()
    try:
        alice.registry.GetModel(
            rpb.GetModelRequest(name=f"models/{alice.username}/target"), metadata=alice._metadata(), timeout=10
        )
        latency = f"{time.perf_counter() - started:.3f}"
    except grpc.RpcError as e:
        latency = f"{e.code().name} after {time.perf_counter() - started:.1f}"
    hold.set()
    for c in calls:
        c.cancel()
    channel.close()
    return {"held": n - refused, "streams refused": refused, "GetModel s": latency}


def run(label: str, env: dict[str, str], args, root: Path, pki: tls.PkiPaths) -> dict:
    home = root / label
    home.mkdir()
    proc = RegistryProcess(home, pki, (home / "blobs").as_uri(), {**OPEN, **env})
    proc.start()
    try:
        return {**login_storm(proc, pki, args.logins), **idle_streams(proc, pki, home, args.streams)}
    finally:
        proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logins", type=int, default=32)
    parser.add_argument("--streams", type=int, default=70)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sgde-hardening-"))
    pki = tls.init_pki(root / "pki")
    results = {"limits on": run("on", {}, args, root, pki), "limits off": run("off", UNLIMITED, args, root, pki)}
    on, off = results["limits on"], results["limits off"]
    print(f"login storm: {args.logins} concurrent Logins for unknown names")
    print("| registry | peak MiB | growth MiB | scrypt checks run | refused (UNAVAILABLE) |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['peak MiB']:.0f} | {r['growth MiB']:.0f} | {r['checked']} | {r['logins refused']} |")
    print(f"memory growth off / on: {off['growth MiB'] / max(on['growth MiB'], 1):.1f}x")
    print()
    print(f"idle streams: {args.streams} PublishVersion streams that send a header and then nothing, then GetModel")
    print("| registry | streams held or queued | refused at once | GetModel (s) |")
    print("|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['held']} | {r['streams refused']} | {r['GetModel s']} |")
    print()
    print(machine_line())


if __name__ == "__main__":
    main()
