"""Flower's own virtual environment, benchmarks/.venv-flower, made on first use.

`flwr` pins protobuf below 7 (and an older `cryptography`), while this project's gRPC stubs need protobuf 7, so
Flower cannot live in the project's venv; it runs in a venv of its own, as the Opacus comparison does
(benchmarks/.venv-opacus). The venv gets `flwr` at the version pinned here and jax, jaxlib, optax and numpy at the
versions the project's venv has, so Flower's clients train model.py's classifier with exactly the numerics of the
other arms. Not `flwr[simulation]`: that pulls in Ray, and the benchmark runs a real deployment, not the simulator.

A marker file records what was installed; a venv whose marker matches is reused as it is (no pip, no import check),
so the tests and the benchmark pay the install once per machine (about 30 s from a warm pip cache, ~830 MB).
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
VENV = REPO / "benchmarks" / ".venv-flower"
FLWR_VERSION = "1.42.0"
MATCHED = ("jax", "jaxlib", "optax", "numpy")  # at the project venv's versions
_MARKER = VENV / "sgde-requirements.txt"


def requirements() -> list[str]:
    """The exact pins the Flower venv gets: flwr, and the project venv's jax / jaxlib / optax / numpy."""
    return [f"flwr=={FLWR_VERSION}", *(f"{name}=={metadata.version(name)}" for name in MATCHED)]


def venv_python() -> Path:
    return VENV / "bin" / "python"


def venv_bin() -> Path:
    """Where flower-superlink, flower-supernode, flwr and the rest are."""
    return VENV / "bin"


def is_ready() -> bool:
    """True when the venv exists and holds exactly `requirements()` (as recorded after a successful install)."""
    try:
        return venv_python().exists() and _MARKER.read_text().split() == requirements()
    except OSError:
        return False


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One installer at a time (two test processes, or a test beside the benchmark)."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / ".venv-flower.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_flower_env(log: Callable[[str], object] = print) -> Path:
    """The python of benchmarks/.venv-flower, created and pip-installed first if it is missing or out of date.
    Raises RuntimeError saying what to run by hand when the venv cannot be made."""
    if is_ready():
        return venv_python()
    with _locked():
        if is_ready():  # another process made it while this one waited
            return venv_python()
        pins = requirements()
        log(f"setting up {VENV.relative_to(REPO)} ({' '.join(pins)}; about a minute the first time) ...")
        by_hand = (
            f"Make it by hand and rerun: {sys.executable} -m venv {VENV} && {venv_python()} -m pip install "
            + " ".join(pins)
        )
        if not venv_python().exists():
            made = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True)
            if made.returncode:
                raise RuntimeError(
                    f"python -m venv {VENV} failed: {(made.stderr or made.stdout).strip()[-800:]}\n{by_hand}"
                )
        pip = subprocess.run([str(venv_python()), "-m", "pip", "install", "-q", *pins], capture_output=True, text=True)
        if pip.returncode:
            raise RuntimeError(
                f"pip install {' '.join(pins)} into {VENV} failed (is PyPI reachable?):\n"
                f"{(pip.stderr or pip.stdout).strip()[-1500:]}\n{by_hand}"
            )
        check = subprocess.run(
            [str(venv_python()), "-c", "import flwr, jax, optax, numpy; print(flwr.__version__)"],
            capture_output=True,
            text=True,
        )
        if check.returncode or check.stdout.strip() != FLWR_VERSION:
            raise RuntimeError(
                f"the packages installed into {VENV} do not import: {(check.stderr or check.stdout).strip()[-800:]}\n"
                f"Remove {VENV} and rerun, or: {by_hand}"
            )
        _MARKER.write_text("\n".join(pins) + "\n")
        log(f"ready: {venv_python().relative_to(REPO)}")
        return venv_python()
