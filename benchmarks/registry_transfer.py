"""Registry vs. direct S3 throughput: publish and download one artifact through the registry (gRPC over mutual TLS,
blobs in SeaweedFS), and the same bytes straight to the same SeaweedFS with the minio SDK.

    python benchmarks/registry_transfer.py [--mib 256] [--repeats 3]

Registry upload = Client.push (local sha256 + sign + stream + server-side verify, with 16 MiB parts sent to S3
concurrently while the stream arrives); registry download = Client.pull (concurrent ranged reads from S3 in the
registry, stream, written and hashed behind the receiver + fsync + signature check). Direct upload = minio
put_object from the file; direct download = get_object streamed to a file and fsynced. Reports the median MB/s
(10^6 bytes/s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._machine import machine_line
from libsgde.security import tls
from libsgde.server import s3_parts
from libsgde.wire.limits import CHUNK_SIZE
from tests.support.seaweed import SeaweedS3
from tests.support.services import RegistryProcess, make_artifact, user_client

BUCKET = "sgde-bench"
DIRECT_BUCKET = "sgde-bench-direct"
PART_SIZE = s3_parts.PART_SIZE  # the registry's own multipart part size


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def drop(path: Path) -> None:
    path.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="artifact size in MiB (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per operation (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs) for inspection")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sgde-bench-"))
    seaweed = SeaweedS3(work / "seaweed")
    registry: RegistryProcess | None = None
    client = None
    try:
        print(f"building a {args.mib} MiB artifact ...", file=sys.stderr)
        artifact = make_artifact(work / "artifact.safetensors", n_floats=args.mib * 2**18)
        size = artifact.stat().st_size
        mb = size / 1e6

        seaweed.start()
        pki = tls.init_pki(work / "pki")
        home = work / "registry-home"
        home.mkdir()
        registry = RegistryProcess(
            home=home,
            pki=pki,
            blob_url=seaweed.url(BUCKET),
            extra_env={
                **seaweed.env(),
                "SGDE_REGISTRY_MAX_VERSION_BYTES": str(max(512 << 20, 2 * size)),
                "SGDE_LOG_LEVEL": "WARNING",
            },
        )
        registry.start()
        client = user_client(registry.address, pki, work / "users")
        client.timeout = 600
        ref = f"{client.username}/bench"

        # seaweed.client() gives up after 10 s of read silence; a big transfer needs longer
        import urllib3
        from minio import Minio

        s3 = Minio(
            seaweed.endpoint,
            seaweed.access_key,
            seaweed.secret_key,
            secure=False,
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=5, read=300), retries=urllib3.Retry(total=0)
            ),
        )
        if not s3.bucket_exists(DIRECT_BUCKET):
            s3.make_bucket(DIRECT_BUCKET)

        # one warm-up of each path (bucket creation, connection set-up), not measured
        print("warm-up ...", file=sys.stderr)
        client.push(artifact, ref, timeout=600)
        s3.fput_object(DIRECT_BUCKET, "warmup", str(artifact), part_size=PART_SIZE)

        results: dict[str, list[float]] = {"reg_up": [], "reg_down": [], "dir_up": [], "dir_down": []}
        out = work / "out"
        out.mkdir()
        for i in range(args.repeats):
            # registry: each push is a new version of the same model (same bytes, same content address)
            results["reg_up"].append(mb / timed(lambda: client.push(artifact, ref, timeout=600)))
            dest = out / "registry.safetensors"
            results["reg_down"].append(mb / timed(lambda: client.pull(f"{ref}@latest", dest, timeout=600)))
            drop(dest)

            key = f"direct-{i}"

            def put() -> None:
                with open(artifact, "rb") as f:
                    s3.put_object(DIRECT_BUCKET, key, f, length=size, part_size=PART_SIZE)

            def get() -> None:
                target = out / "direct.bin"
                response = s3.get_object(DIRECT_BUCKET, key)
                try:
                    with open(target, "wb") as f:
                        for block in response.stream(CHUNK_SIZE):
                            f.write(block)
                        f.flush()
                        os.fsync(f.fileno())
                finally:
                    response.close()
                    response.release_conn()
                drop(target)

            results["dir_up"].append(mb / timed(put))
            results["dir_down"].append(mb / timed(get))
            print(
                f"repeat {i + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in results.items()),
                file=sys.stderr,
            )

        med = {k: statistics.median(v) for k, v in results.items()}
        print(
            f"\nregistry vs direct S3 (SeaweedFS) transfer, {args.mib} MiB artifact ({size} bytes), "
            f"median of {args.repeats}, MB/s = 10^6 bytes/s"
        )
        print(f"machine: {machine_line()}")
        print()
        header = f"| {'operation':<9} | {'registry MB/s':>13} | {'direct MB/s':>11} | {'ratio (registry/direct)':>23} |"
        print(header)
        print(f"|{'-' * 11}|{'-' * 15}|{'-' * 13}|{'-' * 25}|")
        for name, reg, direct in (
            ("upload", med["reg_up"], med["dir_up"]),
            ("download", med["reg_down"], med["dir_down"]),
        ):
            print(f"| {name:<9} | {reg:>13.1f} | {direct:>11.1f} | {reg / direct:>23.2f} |")
        print()
        print("all runs (MB/s): " + "; ".join(f"{k}: {', '.join(f'{x:.0f}' for x in v)}" for k, v in results.items()))
        return 0
    finally:
        if client is not None:
            client.close()
        if registry is not None and registry.proc is not None and registry.proc.poll() is None:
            try:
                registry.stop()
            except Exception:  # noqa: BLE001 - cleaning up after a benchmark: kill what did not stop
                registry.kill()
        seaweed.stop()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
