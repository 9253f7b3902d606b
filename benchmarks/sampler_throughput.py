"""Sampler throughput: rows per second streamed by the sampler service (mTLS gRPC, one client and eight concurrent
clients) beside the same generator called in-process, and the first-sample latency of a cold and a warm model.

    python benchmarks/sampler_throughput.py [--rows 200000] [--repeats 3]

Both sides produce the same bytes (checked: the same sha256 for the same request): `sample_local` is the in-process
path the SDK offers (the strict reader, the bucketed compiled generator, the same output format), and the service
streams exactly what it would return. The model is a dp-merf generator at its default width with untrained weights
(sampling cost does not depend on what the weights learned) on a breast-cancer-sized table (30 continuous columns
and a 2-class label; 276 bytes a row in NPY) and on 28x28 images (pixel_max 255: uint8 levels, rounded on the
device; 784 bytes a row). The registry and the sampler run as subprocesses, as deployed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
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
from libsgde.client import Client, sample_local
from libsgde.security import tls
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from tests.support.sampler import SamplerProcess, make_generator_artifact
from tests.support.services import RegistryProcess, user_client

CLIENTS = 8
TABLE = pb.DataSchema(
    tabular=pb.TabularSchema(
        columns=[pb.Column(name=f"x{i}", type=pb.COLUMN_TYPE_CONTINUOUS, lower=0, upper=100) for i in range(30)]
        + [pb.Column(name="diagnosis", type=pb.COLUMN_TYPE_CATEGORICAL, categories=["malignant", "benign"])],
        label_column="diagnosis",
    )
)
IMAGES = pb.DataSchema(
    image=pb.ImageSchema(height=28, width=28, channels=1, pixel_max=255, class_names=[str(i) for i in range(10)])
)
DEFAULT_CONFIG = {"hidden": [256, 256], "latent_dim": 16}  # dp-merf's default widths


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median_rate(rows: int, fn, repeats: int) -> float:
    return statistics.median(rows / timed(fn) for _ in range(repeats))


def concurrent_rate(clients: list[Client], ref: str, rows: int, repeats: int) -> float:
    """Total rows per second with every client streaming rows / len(clients) at once."""
    share = rows // len(clients)

    def once() -> None:
        with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
            for f in [pool.submit(c.sample, ref, share, seed=i, timeout=600) for i, c in enumerate(clients)]:
                f.result()

    return median_rate(share * len(clients), once, repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="table rows per measurement (images: 1/10)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    load_before = os.getloadavg()  # other work on the machine makes the service's extra CPU show (see README)
    work = Path(tempfile.mkdtemp(prefix="sgde-sampler-bench-"))
    registry = sampler = None
    try:
        pki = tls.init_pki(work / "pki")
        (work / "registry").mkdir()
        registry = RegistryProcess(
            home=work / "registry",
            pki=pki,
            blob_url=f"file://{work / 'blobs'}",
            extra_env={"SGDE_LOG_LEVEL": "WARNING"},
        )
        registry.start()
        (work / "sampler").mkdir()
        sampler = SamplerProcess(
            home=work / "sampler",
            pki=pki,
            registry=registry.address,
            state_dir=work / "sampler" / "state",
            extra_env={"SGDE_LOG_LEVEL": "WARNING", "SGDE_SAMPLER_MAX_SAMPLES": "10000000"},
        )
        sampler.start()
        owner = user_client(registry.address, pki, work / "users")
        clients = [
            Client(registry.address, sampler=sampler.address, home=owner.home, pki=pki.root) for _ in range(CLIENTS)
        ]
        rows_of = {"table": args.rows, "images 28x28": max(args.rows // 10, CLIENTS)}
        table = []
        for kind, schema in (("table", TABLE), ("images 28x28", IMAGES)):
            path = work / f"{kind.split()[0]}.safetensors"
            make_generator_artifact(path, schema, config=DEFAULT_CONFIG)
            ref = f"{owner.username}/bench-{kind.split()[0]}"
            owner.push(path, ref)
            rows = rows_of[kind]
            print(f"{kind}: cold and warm first samples ...", file=sys.stderr)
            cold = timed(lambda: clients[0].sample(ref, 1, timeout=600))  # download, verify, load, compile
            warm = statistics.median(timed(lambda: clients[0].sample(ref, 1, seed=s)) for s in range(5))
            local_cold = timed(lambda: sample_local(path, 1))
            for size in (rows, rows // CLIENTS):  # compile the buckets these request sizes use
                clients[0].sample(ref, size, timeout=600)
            if clients[0].sample(ref, rows, timeout=600).sha256 != sample_local(path, rows).sha256:
                raise SystemExit(f"{kind}: the service and sample_local gave different bytes for the same request")
            print(f"{kind}: throughput ...", file=sys.stderr)
            local = median_rate(rows, lambda: sample_local(path, rows), args.repeats)
            one = median_rate(rows, lambda: clients[0].sample(ref, rows, timeout=600), args.repeats)
            many = concurrent_rate(clients, ref, rows, args.repeats)
            table.append((kind, rows, local, one, many, cold, warm, local_cold))

        print(f"\nsampler service vs in-process sampling (npy), median of {args.repeats}; machine: {machine_line()}\n")
        print(
            "| data | rows | in-process rows/s | service, 1 client rows/s | ratio | "
            f"service, {CLIENTS} clients rows/s | ratio |"
        )
        print("|---|---|---|---|---|---|---|")
        for kind, rows, local, one, many, *_ in table:
            print(
                f"| {kind} | {rows:,} | {local:,.0f} | {one:,.0f} | {one / local:.2f} | {many:,.0f} | "
                f"{many / local:.2f} |"
            )
        print("\n| data | first sample, cold model (download + verify + compile) | warm model | in-process cold load |")
        print("|---|---|---|---|")
        for kind, *_, cold, warm, local_cold in table:
            print(f"| {kind} | {cold * 1e3:,.0f} ms | {warm * 1e3:,.1f} ms | {local_cold * 1e3:,.0f} ms |")
        before, after = (" ".join(f"{x:.2f}" for x in load) for load in (load_before, os.getloadavg()))
        print(f"\nload average before: {before}; after: {after}")
        return 0
    finally:
        for service in (sampler, registry):
            if service is not None and service.proc is not None:
                service.proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
