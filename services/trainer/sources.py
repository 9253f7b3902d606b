"""Where a job's data comes from, and loading it: an uploaded dataset ("datasets/{id}", the uploader's own), a path
under the trainer's data root (never outside it, symlinks included), or "s3://bucket/key" in the silo's own S3 store.

What a caller learns depends on whether the data is theirs. An upload is its uploader's: errors say which line and
column do not fit and why. Data-root and S3 files belong to the silo; a user allowed to train on them may not read
them, so anything the trainer says about them must not depend on their values (an error citing the first failing
line, or whether some value is outside a chosen category list, answers questions about the rows). For these
"sealed" sources values that do not fit the declared schema are mapped into it by the encoder's public rules
(libsgde.io.encoding, coerce=True); errors are about the file's structure only (its kind, header, shape, whether it
parses) and carry no line or row; counts of coerced values go to the trainer's log, for the silo that owns the data.
Nothing here logs or returns the data's values.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from libsgde.domain.names import DATASET_NAME_RE
from libsgde.errors import FieldError
from libsgde.io.encoding import DataError, EncodedData
from libsgde.io.training_data import DataMismatch, describe_data_error
from libsgde.server.storage import S3Location
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from services.trainer.jobs import JobStore

log = logging.getLogger("sgde.trainer")

# DataMismatch and describe_data_error are libsgde.io.training_data's (a local run words its errors the same)
__all__ = ["DataMismatch", "SourceError", "Sources", "describe_data_error", "is_sealed"]

S3_BUCKET_RE = re.compile(r"\A[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
MAX_REFERENCE = 2048


class SourceError(FieldError):
    """The dataset reference cannot be used; the message says why (it is about the `dataset` field)."""

    def __init__(self, message: str):
        super().__init__("dataset", message, message=message)


def is_sealed(reference: str) -> bool:
    """Whether the caller may train on the data but not read it: everything but their own uploads."""
    return not reference.startswith("datasets/")


class Sources:
    def __init__(
        self,
        store: JobStore,
        state_dir: Path,
        data_root: Path | None = None,
        s3_url: str | None = None,
        data_users: frozenset[str] | None = None,
        max_bytes: int = 1 << 30,
    ):
        self.store = store
        self.state_dir = state_dir.resolve()
        self.data_root = data_root.resolve() if data_root else None
        self.s3 = S3Location.parse(s3_url, bucket_required=False) if s3_url else None
        self._s3_client = self.s3.client() if self.s3 else None  # now: a bad SGDE_S3_CA_FILE stops the start
        # Who may train on the data root and the S3 store (None: every user); uploads are always the uploader's.
        self.data_users = data_users
        self.max_bytes = max_bytes
        self.max_encoded_bytes = 4 * max_bytes  # the model-space arrays of one load
        (state_dir / "tmp").mkdir(parents=True, exist_ok=True)

    # -- references --------------------------------------------------------------------------------------------

    def check(self, reference: str, owner: str) -> None:
        """Raises SourceError unless `owner` may train on `reference` and it exists."""
        with self.local_file(reference, owner, fetch=False):
            pass

    def _shared_allowed(self, owner: str, what: str) -> None:
        if self.data_users is not None and owner not in self.data_users:
            raise SourceError(f"you may not train on this trainer's {what}; upload your data instead")

    def _uploaded(self, reference: str, owner: str) -> Path:
        m = DATASET_NAME_RE.fullmatch(reference)
        row = self.store.get_dataset(m[1]) if m else None
        if row is None or row.owner != owner:
            raise SourceError(
                f"{reference[:100]} not found (or you may not see it); upload with `sgde train --data`"
                " or Client.upload_dataset"
            )
        return self.state_dir / row.path

    def _under_root(self, reference: str, owner: str) -> Path:
        if self.data_root is None:
            raise SourceError(
                "this trainer has no data root (SGDE_TRAINER_DATA_ROOT): upload the file, or name "
                '"datasets/{id}" or "s3://bucket/key"'
            )
        self._shared_allowed(owner, "data root")
        raw = Path(reference)
        candidate = raw if raw.is_absolute() else self.data_root / raw
        # resolve() follows every symlink: a link (or "..") that leads out of the root is refused here, before
        # anything about the target (whether it exists) is revealed.
        resolved = candidate.resolve()
        if not resolved.is_relative_to(self.data_root):
            raise SourceError(f"{reference[:200]!r} is outside the trainer's data root; name a file under it")
        if resolved.is_relative_to(self.state_dir):  # others' uploads, checkpoints: never by path
            raise SourceError(f"{reference[:200]!r} is in the trainer's own state; name your upload as datasets/ID")
        if not resolved.is_file():
            raise SourceError(f"no file {reference[:200]!r} under the trainer's data root")
        return resolved

    def _s3_object(self, reference: str, owner: str) -> tuple[str, str]:
        if self.s3 is None:
            raise SourceError("this trainer has no S3 store (SGDE_TRAINER_S3_URL)")
        self._shared_allowed(owner, "S3 store")
        parts = urlsplit(reference)
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if parts.query or parts.fragment or not S3_BUCKET_RE.fullmatch(bucket) or not key:
            raise SourceError("expected s3://BUCKET/KEY")
        if self.s3.bucket and bucket != self.s3.bucket:
            raise SourceError(f"this trainer reads datasets from bucket {self.s3.bucket!r} only")
        if self.s3.prefix and not key.startswith(self.s3.prefix):
            raise SourceError(f"this trainer reads datasets under {self.s3.prefix!r} only")
        return bucket, key

    def _s3(self):
        if self._s3_client is None:
            self._s3_client = self.s3.client()
        return self._s3_client

    @contextmanager
    def local_file(self, reference: str, owner: str, fetch: bool = True) -> Iterator[Path]:
        """A local path to the dataset's file for as long as the context lasts (an S3 object is downloaded to a
        private temporary file, removed afterwards). Raises SourceError."""
        if not reference or len(reference) > MAX_REFERENCE or "\x00" in reference:
            raise SourceError(
                f"name an uploaded dataset (datasets/ID), a path under the data root or s3://BUCKET/KEY"
                f" of at most {MAX_REFERENCE} characters"
            )
        if reference.startswith("datasets/"):
            yield self._uploaded(reference, owner)
        elif reference.startswith("s3://"):
            bucket, key = self._s3_object(reference, owner)
            yield from self._s3_file(bucket, key, fetch)
        else:
            yield self._under_root(reference, owner)

    def _s3_file(self, bucket: str, key: str, fetch: bool) -> Iterator[Path]:
        from minio.error import MinioException, S3Error

        client = self._s3()
        try:
            size = client.stat_object(bucket, key).size
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise SourceError(f"no object s3://{bucket}/{key} in the silo's S3 store") from None
            raise SourceError(f"the silo's S3 store refused s3://{bucket}/{key}: {e.code}") from None
        except (MinioException, OSError) as e:
            raise SourceError(f"cannot reach the silo's S3 store at {self.s3.endpoint}: {type(e).__name__}") from None
        if size > self.max_bytes:
            raise SourceError(f"s3://{bucket}/{key} has {size} bytes, over this trainer's limit of {self.max_bytes}")
        if not fetch:
            yield Path(key)
            return
        folder = Path(tempfile.mkdtemp(dir=self.state_dir / "tmp", prefix="s3-"))  # mode 0700
        try:
            path = folder / (PurePosixPath(key).name or "data")
            try:
                response = client.get_object(bucket, key)
                try:
                    with open(path, "wb") as f:
                        for block in response.stream(1 << 20):
                            f.write(block)
                finally:
                    response.close()
                    response.release_conn()
            except (MinioException, OSError) as e:
                raise SourceError(f"reading s3://{bucket}/{key} failed: {type(e).__name__}") from None
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def load(
        self, reference: str, owner: str, schema: pb.DataSchema, should_stop: Callable[[], bool] | None = None
    ) -> EncodedData:
        """The dataset encoded against `schema` (sealed sources coerced: module docstring); raises SourceError,
        DataMismatch, or LoadCancelled when `should_stop` answers True."""
        from libsgde.io.datasets import load_dataset  # numpy and the readers: loaded only when a dataset is

        sealed = is_sealed(reference)
        with self.local_file(reference, owner) as path:
            try:
                data = load_dataset(
                    path,
                    schema,
                    max_bytes=self.max_bytes,
                    max_encoded_bytes=self.max_encoded_bytes,
                    coerce=sealed,
                    should_stop=should_stop,
                )
            except DataError as e:
                if sealed:
                    log.info("sealed dataset does not fit its schema", extra={"dataset": reference, "error": str(e)})
                raise DataMismatch(*describe_data_error(e, schema, sealed)) from None
        if sealed and data.coerced:
            coerced = dict(data.coerced)
            log.info("sealed dataset: values mapped into the schema", extra={"dataset": reference, "coerced": coerced})
        return data
