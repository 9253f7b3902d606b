"""Content-addressed blob storage: a local directory or any S3 server (MinIO, SeaweedFS, AWS).

Blobs are keyed by their sha256. A put streams the bytes through, checks length and hash, and only then makes the
blob visible, so a reader never sees a partial or wrong blob and a failed upload never damages a good one.

Why the registry stays in the data path (and uploads parts in parallel) rather than handing clients presigned PUTs:
a presigned upload would skip one hop, but every client would then need network access to the store (in the cluster
MinIO is deliberately unreachable from outside), the store would accept unverified bytes from anyone holding the URL
until it expires, and the registry would have to read every blob back to check its sha256, size and tensors (the
store's traffic doubles, and a staging object exists that nobody has vetted). Instead the registry verifies the bytes
as they arrive and sends 16 MiB parts to S3 concurrently while the stream is still coming, so the extra hop overlaps
the transfer instead of following it. Only the registry holds store credentials; nothing unverified ever becomes an
object. A failed upload cancels the parts not yet started, waits for the ones being sent, and only then aborts the
multipart upload: no part can land after the abort and survive as an orphan. Uploads that a killed process left
open are aborted by `sweep_abandoned_uploads` once they are older than any publish may take. Downloads read large
blobs as a few concurrent ranged GETs, handed on in order.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import ssl
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from libsgde.domain.names import SHA256_RE
from libsgde.errors import NotFound, SgdeError, Unavailable
from libsgde.io.atomic import atomic_write, sweep_temporaries
from libsgde.server import s3_parts
from libsgde.wire.limits import CHUNK_SIZE


class StorageError(SgdeError):
    """Base of every blob-store error."""


class BlobNotFound(StorageError, NotFound):
    """No blob under this sha256."""


class BlobIntegrityError(StorageError):
    """The uploaded bytes do not match the announced size or sha256; nothing was stored."""

    status = "INVALID_ARGUMENT"


class StorageUnavailable(StorageError, Unavailable):
    """The backend cannot be reached or refuses us; the message says what to check."""


def _check_key(sha256: str) -> str:
    if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
        raise ValueError(f"not a sha256 (64 lowercase hex characters): {sha256!r}")
    return sha256


class _Verifier:
    """Counts and hashes the bytes of one upload; raises as soon as they cannot match."""

    def __init__(self, sha256: str, size: int):
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative integer, not {size!r}")
        self.sha256, self.size, self.seen = _check_key(sha256), size, 0
        self._hash = hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if self.seen > self.size:  # stop reading at once: the sender may be sending without end
            raise BlobIntegrityError(f"more than the announced {self.size} bytes arrived")
        self._hash.update(chunk)

    def finish(self) -> None:
        if self.seen != self.size:
            raise BlobIntegrityError(f"{self.seen} bytes arrived, {self.size} were announced")
        actual = self._hash.hexdigest()
        if actual != self.sha256:
            raise BlobIntegrityError(f"the bytes hash to sha256 {actual}, not the announced {self.sha256}")


class BlobStore(abc.ABC):
    url: str  # where the blobs live, for logs; never contains secrets

    @abc.abstractmethod
    def put(self, sha256: str, chunks: Iterable[bytes], size: int) -> None:
        """Store `size` bytes hashing to `sha256`; visible only once both are verified (else BlobIntegrityError)."""

    @abc.abstractmethod
    def get(self, sha256: str, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The blob's bytes from `offset`, as a generator (closing it stops any reading ahead). Raises BlobNotFound /
        StorageUnavailable here, before iteration."""

    @abc.abstractmethod
    def stat(self, sha256: str) -> int:
        """Size in bytes; BlobNotFound if absent."""

    def exists(self, sha256: str) -> bool:
        try:
            self.stat(sha256)
            return True
        except BlobNotFound:
            return False

    @abc.abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove the blob; a missing blob is not an error."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise StorageUnavailable unless the backend is reachable and writable."""

    def sweep_abandoned_uploads(self, older_than_s: float) -> int:
        """Ends the unfinished uploads started more than `older_than_s` ago (left by a process killed mid-put, or
        whose abort failed); returns how many. The file store sweeps its temporaries when it opens."""
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def _check_offset(offset: int, size: int) -> None:
    if not 0 <= offset <= size:
        raise ValueError(f"offset {offset} is outside the blob of {size} bytes")


# -- local directory --------------------------------------------------------------------------------------------


class FileBlobStore(BlobStore):
    """Blobs as files under `root/sha256/ab/<hex>`, written to a temp file then renamed into place. Private models
    live here: folders it makes are 0700, blobs 0600 (the owner of the process only), whatever the umask."""

    def __init__(self, root: str | os.PathLike):
        # created here: a fresh deployment points at a directory that does not exist yet
        self.root = Path(root).absolute()
        self.url = self.root.as_uri()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Half-written blobs of a process killed mid-put; an hour old, no put (here or in a replica) still owns them.
        sweep_temporaries(self.root, older_than_s=3600)

    def _path(self, sha256: str) -> Path:
        _check_key(sha256)
        return self.root / "sha256" / sha256[:2] / sha256

    def put(self, sha256: str, chunks: Iterable[bytes], size: int) -> None:
        verifier = _Verifier(sha256, size)
        final = self._path(sha256)
        final.parent.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        final.parent.mkdir(exist_ok=True, mode=0o700)
        # Concurrent puts of one blob write their own temporary files; readers see the old good blob or the new one.
        with atomic_write(final, mode=0o600) as f:
            for chunk in chunks:
                verifier.feed(chunk)
                f.write(chunk)
            verifier.finish()

    def get(self, sha256: str, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        try:
            f = open(self._path(sha256), "rb")
        except FileNotFoundError:
            raise BlobNotFound(sha256) from None
        try:
            _check_offset(offset, os.fstat(f.fileno()).st_size)
            f.seek(offset)
        except BaseException:
            f.close()
            raise
        return self._read(f, chunk_size)

    @staticmethod
    def _read(f, chunk_size: int) -> Iterator[bytes]:
        with f:
            while chunk := f.read(chunk_size):
                yield chunk

    def stat(self, sha256: str) -> int:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(sha256) from None

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(sha256).unlink()

    def check(self) -> None:
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StorageUnavailable(f"blob directory {self.root} is not writable: {e}") from None


# -- S3 ---------------------------------------------------------------------------------------------------------
# minio is imported inside the methods: it takes ~0.3 s to import, and the CLI never loads this module.

_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}
_POOL_WORKERS = 16  # parts and ranges being sent or fetched at once, over every transfer of one store


def minio_client(
    endpoint: str,
    *,
    secure: bool,
    region: str | None,
    access_key: str | None,
    secret_key: str | None,
    ca_file: str | None = None,
    pool_size: int = 8,
) -> Any:
    """A minio client that fails in seconds on a dead server (minio's default pool waits 5 minutes and retries 5
    times), verifying TLS against `ca_file` alone when given (a private CA, such as the cluster's: the system's CAs
    are then not trusted), else $SSL_CERT_FILE or certifi's bundle. `pool_size`: connections kept for concurrent
    transfers, each holding one. ValueError, at once, for a CA file that cannot be used."""
    import certifi
    import urllib3
    from minio import Minio

    if ca_file:
        _check_ca_file(ca_file, secure)
    http = urllib3.PoolManager(
        maxsize=pool_size,
        timeout=urllib3.Timeout(connect=3, read=60),
        retries=urllib3.Retry(total=2, connect=1, read=1, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        cert_reqs="CERT_REQUIRED",
        ca_certs=ca_file or os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http)


def _check_ca_file(ca_file: str, secure: bool) -> None:
    """A CA file for S3 is a promise that the connection is verified: refuse one that cannot keep it."""
    if not secure:
        raise ValueError(
            f"SGDE_S3_CA_FILE={ca_file} is set but the S3 URL says secure=false, so nothing would be verified: "
            "use secure=true (the default) or unset SGDE_S3_CA_FILE"
        )
    try:
        ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(
            f"SGDE_S3_CA_FILE={ca_file} is not a readable PEM file of CA certificates ({e}): point it at the CA "
            "that signed the S3 server's certificate"
        ) from None


def tls_refusal(exc: BaseException) -> str | None:
    """What the TLS verification said when `exc` (from the minio SDK or urllib3) comes from a certificate that was
    not trusted, else None."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        e = pending.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return e.verify_message or str(e)
        # urllib3 keeps the cause in .reason (MaxRetryError) or in args (its SSLError wraps ssl's)
        pending += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return None


def s3_credentials() -> dict[str, str | None]:
    """access_key, secret_key and ca_file from SGDE_S3_* (or the AWS_* names): credentials never go in a URL."""
    env = os.environ.get
    return {
        "access_key": env("SGDE_S3_ACCESS_KEY") or env("AWS_ACCESS_KEY_ID"),
        "secret_key": env("SGDE_S3_SECRET_KEY") or env("AWS_SECRET_ACCESS_KEY"),
        "ca_file": env("SGDE_S3_CA_FILE") or None,
    }


@dataclass(frozen=True)
class S3Location:
    """An S3 store as this project names one: `s3://BUCKET?endpoint=HOST:PORT&secure=false&region=...&prefix=...`
    (the blob store's URL, and the trainer's silo store, whose BUCKET may be left out). Credentials never go in the
    URL: SGDE_S3_ACCESS_KEY / SGDE_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), SGDE_S3_CA_FILE."""

    bucket: str
    endpoint: str
    secure: bool
    region: str | None
    prefix: str

    @classmethod
    def parse(cls, url: str, *, bucket_required: bool = True) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or (bucket_required and not parts.netloc) or parts.path not in ("", "/"):
            form = "s3://BUCKET" if bucket_required else "s3://[BUCKET]"
            raise ValueError(f"expected {form}?endpoint=HOST:PORT&..., not {url!r}")
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = set(params) - {"endpoint", "secure", "region", "prefix"}
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} in S3 URL {url!r}")
        secure = params.get("secure", "true").lower()
        if secure not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"secure must be true or false, not {secure!r}")
        return cls(
            parts.netloc,
            params.get("endpoint") or "s3.amazonaws.com",
            secure in ("true", "1", "yes"),
            params.get("region") or None,
            params.get("prefix", ""),
        )

    def client(self, pool_size: int = 8) -> Any:
        """A minio client with the credentials from the environment."""
        return minio_client(
            self.endpoint, secure=self.secure, region=self.region, pool_size=pool_size, **s3_credentials()
        )


class S3BlobStore(BlobStore):
    """Blobs as objects `<prefix>sha256/<hex>` in one bucket, over the minio SDK."""

    def __init__(
        self,
        bucket: str,
        endpoint: str = "s3.amazonaws.com",
        *,
        secure: bool = True,
        region: str | None = None,
        prefix: str = "",
        access_key: str | None = None,
        secret_key: str | None = None,
        ca_file: str | None = None,
    ):
        self.bucket, self.endpoint, self.secure, self.prefix = bucket, endpoint, secure, prefix
        self.ca_file = ca_file
        if prefix and not prefix.endswith("/"):
            self.prefix += "/"
        query = f"endpoint={endpoint}&secure={str(secure).lower()}" + (f"&region={region}" if region else "")
        self.url = f"s3://{bucket}?{query}" + (f"&prefix={self.prefix}" if self.prefix else "")
        self._client = minio_client(
            endpoint,
            secure=secure,
            region=region,
            access_key=access_key,
            secret_key=secret_key,
            ca_file=ca_file,
            pool_size=64,
        )
        self._parts = s3_parts.PartPool(_POOL_WORKERS)
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        where = S3Location.parse(url)
        return cls(
            where.bucket,
            where.endpoint,
            secure=where.secure,
            region=where.region,
            prefix=where.prefix,
            **s3_credentials(),
        )

    def _key(self, sha256: str) -> str:
        return f"{self.prefix}sha256/{_check_key(sha256)}"

    @contextlib.contextmanager
    def _translate(self, what: str, writing: bool = False) -> Iterator[None]:
        """Turn SDK and network errors into BlobNotFound / StorageUnavailable with a hint what to check."""
        import urllib3
        from minio.error import MinioException, S3Error

        try:
            yield
        except S3Error as e:
            if e.code in _MISSING_CODES and writing:  # the bucket was deleted under us: make it again next time
                self._bucket_ready = False
                raise StorageUnavailable(f"bucket {self.bucket} at {self.endpoint} vanished while {what}") from e
            if e.code in _MISSING_CODES:
                raise BlobNotFound(what) from None
            if e.code in _AUTH_CODES:
                raise StorageUnavailable(
                    f"S3 at {self.endpoint} refused {what} ({e.code}); check the credentials in SGDE_S3_ACCESS_KEY "
                    f"and SGDE_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and their rights on "
                    f"bucket {self.bucket}"
                ) from e
            raise StorageUnavailable(f"S3 at {self.endpoint} failed {what}: {e.code}: {e.message}") from e
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as e:
            if refusal := tls_refusal(e):
                trusted = f"the CA in SGDE_S3_CA_FILE={self.ca_file}" if self.ca_file else "the system's CAs"
                raise StorageUnavailable(
                    f"S3 at {self.endpoint} presented a certificate that {trusted} does not vouch for ({refusal}) "
                    f"while {what}; set SGDE_S3_CA_FILE to the CA that signed it (in the cluster: the SGDE CA's "
                    "ca.crt) and check that the endpoint's host name is in the certificate"
                ) from e
            raise StorageUnavailable(
                f"cannot reach S3 at {self.endpoint} (secure={str(self.secure).lower()}) for {what}: "
                f"{type(e).__name__}: {e}; check that the endpoint in the blob URL is right and the server is up"
            ) from e

    def _ensure_bucket(self, force: bool = False) -> None:
        from minio.error import S3Error

        if self._bucket_ready and not force:
            return
        with self._bucket_lock:
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as e:  # another process made it first
                    if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            self._bucket_ready = True

    def put(self, sha256: str, chunks: Iterable[bytes], size: int) -> None:
        key = self._key(sha256)
        verifier = _Verifier(sha256, size)

        def guard() -> contextlib.AbstractContextManager[None]:
            return self._translate(f"storing {key}", writing=True)

        # Only the store's calls are guarded: an error of the sender (even an OSError) reaches the caller unchanged.
        with guard():
            self._ensure_bucket()
        parts = s3_parts.split_parts(chunks, s3_parts.PART_SIZE, verifier.feed)
        if size <= s3_parts.PART_SIZE:  # one PUT, sent only once every byte is verified
            data = b"".join(parts)
            verifier.finish()
            with guard():
                self._client._put_object(self.bucket, key, data, {"Content-Type": "application/octet-stream"})
            return
        upload = s3_parts.MultipartUpload(self._client, self.bucket, key, self._parts, guard, s3_parts.PARTS_IN_FLIGHT)
        upload.run(parts, before_complete=verifier.finish)

    def get(self, sha256: str, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        key = self._key(sha256)
        if offset < 0:
            raise ValueError(f"offset {offset} is negative")
        with self._translate(f"reading {key}"):
            size = self._size(key)  # eagerly: a missing blob or a dead store raises here, not at the first chunk
        _check_offset(offset, size)
        if size - offset <= s3_parts.RANGE_SIZE:  # one GET, streamed
            return self._stream(key, offset, size - offset, chunk_size)

        def fetch(start: int, length: int) -> list[bytes]:
            chunks = list(self._stream(key, start, length, chunk_size))
            if sum(map(len, chunks)) != length:
                raise StorageUnavailable(f"S3 at {self.endpoint} returned a short read of {key} at offset {start}")
            return chunks

        return _flatten(
            s3_parts.ranged_read(fetch, offset, size, self._parts, s3_parts.RANGE_SIZE, s3_parts.RANGES_IN_FLIGHT)
        )

    def _stream(self, key: str, start: int, length: int, chunk_size: int) -> Iterator[bytes]:
        """The bytes [start, start + length) of `key` in chunks of at most `chunk_size`; the GET is sent at once."""
        if length == 0:
            return _flatten(iter(()))  # a generator still: the caller may close it
        with self._translate(f"reading {key}"):
            response = self._client.get_object(self.bucket, key, offset=start, length=length)
        return self._chunks(response, key, chunk_size)

    def _chunks(self, response: Any, key: str, chunk_size: int) -> Iterator[bytes]:
        try:
            with self._translate(f"reading {key}"):
                yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    def _size(self, key: str) -> int:
        size = self._client.stat_object(self.bucket, key).size
        if size is None:
            raise StorageUnavailable(f"S3 at {self.endpoint} gave no size for {key}")
        return size

    def stat(self, sha256: str) -> int:
        key = self._key(sha256)
        with self._translate(f"stat of {key}"):
            return self._size(key)

    def delete(self, sha256: str) -> None:
        key = self._key(sha256)
        with contextlib.suppress(BlobNotFound), self._translate(f"deleting {key}"):
            self._client.remove_object(self.bucket, key)

    def check(self) -> None:
        with self._translate(f"checking bucket {self.bucket}"):
            self._ensure_bucket(force=True)

    def sweep_abandoned_uploads(self, older_than_s: float) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        swept, key_marker, id_marker = 0, None, None
        with self._translate(f"sweeping abandoned uploads in bucket {self.bucket}"):
            if not self._client.bucket_exists(self.bucket):
                return 0
            while True:
                page = self._client._list_multipart_uploads(
                    self.bucket, prefix=f"{self.prefix}sha256/", key_marker=key_marker, upload_id_marker=id_marker
                )
                for upload in page.uploads:
                    if upload.initiated_time is not None and upload.initiated_time < cutoff:
                        self._client._abort_multipart_upload(self.bucket, upload.object_name, upload.upload_id)
                        swept += 1
                if not page.is_truncated or not page.uploads:
                    return swept
                key_marker, id_marker = page.uploads[-1].object_name, page.uploads[-1].upload_id


def _flatten(ranges: Iterator[list[bytes]]) -> Iterator[bytes]:
    """The chunks of each range in turn."""
    try:
        for chunks in ranges:
            yield from chunks
    finally:
        close = getattr(ranges, "close", None)
        if close is not None:
            close()  # a download stopped early cancels the ranges not yet fetched, now


def open_blob_store(url: str) -> BlobStore:
    """`file:///abs/path` or `s3://BUCKET?endpoint=HOST:PORT&secure=false&region=...&prefix=...`."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"expected file:///absolute/path, not {url!r}")
        return FileBlobStore(unquote(parts.path))
    if parts.scheme == "s3":
        return S3BlobStore.from_url(url)
    raise ValueError(f"unsupported blob store URL {url!r}: use file:///path or s3://bucket?endpoint=host:port")
