"""The sampler's caches: artifacts on disk, keyed by sha256, and compiled generators in memory (an LRU).

An artifact is downloaded once, with the CALLER's forwarded token (so the registry decides who may have it), through
the SDK's `RegistrySession.pull`, which verifies the sha256 and the owner's signature before the file appears in the
cache. A file already in the cache is verified again (`RegistrySession.verify`: its sha256 re-hashed, the signature
checked with the owner's registered key) before it is loaded; one whose bytes no longer match is deleted and downloaded
again, so a tampered cache never serves. Artifacts load only through the strict reader with the architecture check
(`load_generator`).

A generator compiled in memory came from verified bytes; it serves a version once that version's (sha256, owner,
signature) was checked, without reading the disk again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from prometheus_client import Counter

from libsgde import errors
from libsgde.client.registry import RegistrySession
from libsgde.domain.names import SHA256_RE
from libsgde.domain.resources import ModelVersion
from libsgde.errors import SgdeError, VerificationError
from libsgde.io.artifact import ArtifactError
from libsgde.io.atomic import sweep_temporaries
from libsgde.io.sampling import CompiledCache

log = logging.getLogger("sgde.sampler")

CACHE_EVENTS = Counter(
    "sgde_sampler_cache_events_total",
    "Artifact cache events: memory (a compiled generator "
    "reused), disk (a cached file verified and loaded), download, corrupt (a cached file that "
    "failed verification, deleted), evicted (a file removed to stay under the size limit)",
    ["event"],
)
SUFFIX = ".safetensors"


class ArtifactCache:
    """Verified artifacts under `root` and up to `max_loaded` compiled generators in memory; the files are trimmed
    (least recently used first) to `max_bytes`."""

    def __init__(self, root: Path, max_loaded: int = 4, max_bytes: int = 10 << 30, pull_timeout: float = 600.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._sweep()
        self.max_bytes = int(max_bytes)
        self.pull_timeout = pull_timeout
        self.compiled = CompiledCache(max_loaded)
        self._verified: set[tuple[str, str, bytes]] = set()  # (sha256, owner, signature) checked with the key
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _sweep(self) -> None:
        """What a killed sampler left: temporaries of atomic writes, and partial downloads no one resumed for a day
        (a partial download resumes when its version is asked for again; the cache's byte limit does not see it)."""
        sweep_temporaries(self.root, older_than_s=0)  # this cache belongs to this process alone
        cutoff = time.time() - 86_400
        for part in self.root.glob("*.part"):
            with contextlib.suppress(OSError):
                if part.stat().st_mtime < cutoff:
                    part.unlink()

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}{SUFFIX}"

    def _lock(self, sha256: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(sha256, threading.Lock())

    def loaded(self) -> list[str]:
        """The sha256 of the generators compiled in memory, least recently used first."""
        return self.compiled.keys()

    def sampler(self, version: ModelVersion, client: RegistrySession):
        """The compiled generator of `version` (resolved by the caller's GetVersion), fetching and verifying its
        artifact with `client` (acting with the caller's token) as needed. Raises SgdeError."""
        sha = version.sha256
        if not SHA256_RE.fullmatch(sha):
            raise errors.DataLoss(f"the registry gave {version.name} no valid sha256")
        owner = version.owner
        proof = (sha, owner, bytes(version.signature))
        with self._lock(sha):
            sampler = self.compiled.get(sha)
            with self._guard:
                if sampler is not None and proof in self._verified:
                    CACHE_EVENTS.labels("memory").inc()
                    return sampler
            path = self.path(sha)
            if path.exists() and self._verify_cached(path, version, owner, client):
                CACHE_EVENTS.labels("disk").inc()
            else:
                self._download(path, version, client)
            with self._guard:
                if len(self._verified) >= 100_000:
                    self._verified.clear()
                self._verified.add(proof)
            if sampler is None:
                try:
                    sampler = self.compiled.load(sha, path)
                except ArtifactError as e:
                    raise errors.FailedPrecondition(
                        f"{version.name} cannot be sampled: its artifact is not a generator this sampler can load ({e})"
                    ) from None
            try:
                os.utime(path)  # recently used: trimmed last
            except OSError:
                pass
            return sampler

    def _verify_cached(self, path: Path, version: ModelVersion, owner: str, client: RegistrySession) -> bool:
        """Whether the cached file still is the version's verified artifact; a file that is not is deleted."""
        try:
            client.verify(path, version, owner)  # re-hashes the file; deletes it when the sha256 differs
            return True
        except VerificationError as e:
            CACHE_EVENTS.labels("corrupt").inc()
            log.warning(
                "cached artifact failed verification: deleted, downloading it again",
                extra={"version": version.name, "sha256": version.sha256, "error": str(e)},
            )
            path.unlink(missing_ok=True)
            self.compiled.discard(version.sha256)
            return False
        except SgdeError as e:
            raise _registry_error(version, e) from None

    def _download(self, path: Path, version: ModelVersion, client: RegistrySession) -> None:
        try:
            client.pull(version.name, path, timeout=self.pull_timeout)  # sha256 and signature verified first
        except VerificationError as e:
            raise errors.DataLoss(f"the artifact of {version.name} does not verify: {e}") from None
        except SgdeError as e:
            raise _registry_error(version, e) from None
        CACHE_EVENTS.labels("download").inc()
        log.info(
            "artifact cached", extra={"version": version.name, "sha256": version.sha256, "bytes": version.size_bytes}
        )
        self._trim(keep=path)

    def _trim(self, keep: Path) -> None:
        """Deletes the least recently used files (not `keep`) while the cache is over max_bytes."""
        files = []
        for entry in self.root.glob(f"*{SUFFIX}"):
            try:
                st = entry.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, entry))
        total = sum(size for _, size, _ in files)
        for _, size, entry in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                return
            if entry == keep:
                continue
            entry.unlink(missing_ok=True)
            total -= size
            CACHE_EVENTS.labels("evicted").inc()


def _registry_error(version: ModelVersion, e: SgdeError) -> SgdeError:
    """The registry's error, its code and violations kept, saying what the sampler was doing."""
    return errors.from_status(
        e.status, f"fetching {version.name} from the registry failed: {e.message}", e.violations, remote=False
    )
