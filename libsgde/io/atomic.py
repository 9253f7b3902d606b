"""The one way this project writes a file that others may read: all of it or nothing.

Bytes go to a unique temporary file beside the target (created with the final mode, so a secret is never readable
by others, not even for a moment), are fsynced, and only then renamed over the target; the directory is fsynced so
that the rename survives a crash too. An error inside the block leaves the old file (or none) and no temporary.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_write(path: str | Path, *, mode: int = 0o600, exclusive: bool = False) -> Iterator[BinaryIO]:
    """A binary file whose bytes appear at `path` when the block ends without an error.

    With `exclusive` an existing file is never replaced: FileExistsError instead."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")  # TEMPORARY_RE matches it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # fails with FileExistsError instead of replacing
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


TEMPORARY_RE = re.compile(r"\A\..+\.[0-9a-f]{12}\.tmp\Z")


def sweep_temporaries(root: Path, older_than_s: float) -> int:
    """Removes what atomic writes killed mid-way (SIGKILL, power loss) left under `root`: temporaries last modified
    more than `older_than_s` ago (younger ones may belong to a write still running, e.g. in another replica).
    Returns how many were removed."""
    removed, cutoff = 0, time.time() - older_than_s
    for path in Path(root).rglob(".*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if TEMPORARY_RE.fullmatch(path.name) and path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o600, exclusive: bool = False) -> None:
    """Writes `data` to `path` atomically (see `atomic_write`)."""
    with atomic_write(path, mode=mode, exclusive=exclusive) as f:
        f.write(data)


def write_private(path: str | Path, data: bytes, *, exclusive: bool = False) -> None:
    """Writes a secret atomically, mode 0600, its folder made (mode 0700) if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, mode=0o600, exclusive=exclusive)


def fsync_dir(path: Path) -> None:
    """Makes a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
