"""The deployment as the tests see it: kustomize overlays rendered by `kubectl kustomize`, the pods they describe,
and the Dockerfile's instructions."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
SERVICES = ("registry", "trainer", "sampler")
SGDE_IMAGE = re.compile(r"^ghcr\.io/sgde-project/sgde(-cuda)?:")


def kubectl() -> str:
    found = shutil.which("kubectl")
    assert found, (
        "the manifest tests render deploy/k8s with kubectl's built-in kustomize (offline): install kubectl "
        "(apt-get install kubectl, or https://kubernetes.io/docs/tasks/tools/)"
    )
    return found


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    """Every document `kubectl kustomize deploy/k8s/overlays/<overlay>` renders (offline)."""
    return render_dir(K8S / "overlays" / overlay)


def render_dir(kustomization: Path) -> tuple[dict, ...]:
    """Every document `kubectl kustomize <folder>` renders (offline): an overlay of the tests' own, for one."""
    out = subprocess.run([kubectl(), "kustomize", str(kustomization)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def of_kind(docs, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def named(docs, kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


@dataclass
class Pod:
    """A pod template and the workload that owns it."""

    owner: dict
    spec: dict
    labels: dict
    annotations: dict

    @property
    def name(self) -> str:
        return self.owner["metadata"]["name"]

    @property
    def containers(self) -> list[dict]:
        return [*self.spec.get("initContainers", []), *self.spec["containers"]]


def pods(docs) -> list[Pod]:
    found = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            template = doc["spec"]["template"]
            meta = template.get("metadata", {})
            found.append(Pod(doc, template["spec"], meta.get("labels", {}), meta.get("annotations", {})))
    return found


def sgde_container(pod: Pod) -> tuple[str, dict] | None:
    """(service, container) of the SGDE container of a pod (the service is its command argument), or None."""
    for container in pod.spec["containers"]:
        if SGDE_IMAGE.match(container["image"]):
            (service,) = container["args"]
            assert service in SERVICES, container["args"]
            return service, container
    return None


def sgde_pods(docs) -> dict[str, tuple[Pod, dict]]:
    found = {}
    for pod in pods(docs):
        hit = sgde_container(pod)
        if hit:
            found[hit[0]] = (pod, hit[1])
    assert set(found) == set(SERVICES), sorted(found)
    return found


def env_values(container: dict) -> dict[str, dict]:
    """name -> the env entry (`value` or `valueFrom`)."""
    return {e["name"]: e for e in container.get("env", [])}


# -- Dockerfile -------------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    op: str
    args: str


def dockerfile_stages(path: Path = REPO / "Dockerfile") -> list[list[Instruction]]:
    """Instructions grouped by build stage (each starts with its FROM); continuation lines joined, comments gone."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    stages: list[list[Instruction]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        op, _, args = line.strip().partition(" ")
        op = op.upper()
        if op == "FROM":
            stages.append([])
        assert stages, "a Dockerfile starts with FROM"
        stages[-1].append(Instruction(op, args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


def dockerfile_env(stage: list[Instruction]) -> dict[str, str]:
    """ENV KEY=VALUE ... of a stage, in order (values unquoted; $VAR left as written)."""
    env: dict[str, str] = {}
    for ins in stage:
        if ins.op == "ENV":
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {ins.args!r}: use KEY=VALUE"
                env[key] = value
    return env
