"""Publish and download one artifact through the registry (backed by SeaweedFS) beside the same bytes moved with
the minio SDK straight to the same server, in one run; prints MB/s and the ratio.

    python benchmarks/registry_transfer.py [--mib 256] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libsgde.security import tls  # noqa: E402
from tests.support.seaweed import SeaweedS3  # noqa: E402
from tests.support.services import RegistryProcess, make_artifact, user_client  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="artifact size in MiB")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sgde-bench-") as tmp_name:
        tmp = Path(tmp_name)
        art = make_artifact(tmp / "artifact.safetensors", n_floats=args.mib << 18)
        size = art.stat().st_size
        with SeaweedS3(tmp / "s3") as s3:
            os.environ.update(s3.env())
            pki = tls.init_pki(tmp / "pki")
            (tmp / "registry").mkdir()
            registry = RegistryProcess(tmp / "registry", pki, s3.url("registry-blobs"), s3.env())
            registry.start()
            try:
                client = user_client(registry.address, pki, tmp / "users")
                direct = s3.client()
                direct.make_bucket("direct") if not direct.bucket_exists("direct") else None
                rows = {"upload": ([], []), "download": ([], [])}
                for i in range(args.repeats):
                    model = f"bench-{i}"
                    rows["upload"][0].append(timed(lambda: client.push(art, model, timeout=3600)))
                    out = tmp / "pulled.safetensors"
                    rows["download"][0].append(timed(lambda: client.pull(model, out, timeout=3600)))
                    out.unlink()
                    key = f"direct-{uuid.uuid4().hex}"
                    rows["upload"][1].append(timed(lambda: direct.fput_object(
                        "direct", key, str(art), part_size=16 << 20)))
                    rows["download"][1].append(timed(lambda: direct.fget_object("direct", key, str(out))))
                    out.unlink()
                    client.delete_model(model)  # content-addressed: the next push must store the bytes again
                client.close()
            finally:
                registry.stop()
    mb = size / 1e6
    print(f"\nregistry transfer: {size / 2**20:.0f} MiB artifact, median of {args.repeats}; "
          f"{os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}")
    print(f"{'operation':<10} {'registry MB/s':>14} {'direct MB/s':>12} {'ratio':>7}")
    for op, (via_registry, via_minio) in rows.items():
        reg, dir_ = mb / statistics.median(via_registry), mb / statistics.median(via_minio)
        print(f"{op:<10} {reg:>14.1f} {dir_:>12.1f} {reg / dir_:>7.2f}")
    print("(registry: sgde client -> gRPC over mTLS -> registry (sha256, artifact check, signature) -> S3; "
          "direct: minio SDK -> S3)")


if __name__ == "__main__":
    main()
