"""The committed stubs in libsgde/proto must be exactly what scripts/gen_protos.py makes from protos/."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_stubs_are_fresh(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True)
    committed = REPO / "libsgde" / "wire" / "proto"
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert fresh, "the generator wrote nothing"
    stale = [str(rel) for rel, data in fresh.items() if (committed / rel).read_bytes() != data]
    assert not stale, f"stale stubs {stale}: run `python scripts/gen_protos.py` and commit the result"
    extra = {p.relative_to(committed) for p in committed.rglob("*_pb2*.py*")} - set(fresh)
    assert not extra, f"stubs without a .proto: {sorted(map(str, extra))}"


def test_contract_has_every_service():
    from libsgde.wire.proto.sgde.v1 import registry_pb2, sampler_pb2, trainer_pb2

    assert "RegistryService" in registry_pb2.DESCRIPTOR.services_by_name
    assert "TrainerService" in trainer_pb2.DESCRIPTOR.services_by_name
    assert "SamplerService" in sampler_pb2.DESCRIPTOR.services_by_name
