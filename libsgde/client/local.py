"""Sampling a pulled artifact with no server: the same bytes, and so the same values, as the sampler streams for the
same request."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from libsgde.client.sampling import Samples
from libsgde.client.transfers import Progress, collect
from libsgde.domain.resources import OutputFormat, SampleMetadata
from libsgde.errors import FailedPrecondition
from libsgde.io.artifact import ArtifactError, sha256_file
from libsgde.io.formats import FORMATS, check_format, encode_stream
from libsgde.io.sampling import DEFAULT_MAX_REQUEST_BYTES, CompiledCache, label_counts, plan_labels
from libsgde.wire.convert import privacy_from_proto

COMPILED = CompiledCache(capacity=4)  # the last few compiled generators of this process, by artifact sha256


def sample_local(
    path: str | Path,
    num_samples: int = 0,
    seed: int = 0,
    class_counts: Mapping[str, int] | None = None,
    *,
    format: str = "npy",
    out: str | Path | None = None,
    chunk_samples: int = 0,
    progress: Progress | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> Samples:
    """Samples from an artifact file (one `Client.pull` verified) with no server: the same bytes, and so the same
    values, as the sampler streams for the same request (num_samples or class_counts, seed, format,
    chunk_samples). Loads through the strict reader; the last few compiled generators are kept, by sha256.

    Memory is bounded as in the sampler (libsgde.io.sampling): a request whose plan needs more than
    `max_request_bytes` (256 MiB unless given) raises Exhausted before anything is generated or written, saying
    which chunk_samples fits, or what limit one sample of the model takes."""
    path = Path(path)
    sha = sha256_file(path)
    try:
        sampler = COMPILED.load(sha, path)
    except ArtifactError as e:
        raise FailedPrecondition(f"{path}: not a generator this SDK can load: {e}") from None
    generator = sampler.generator
    fmt = check_format(format, sampler.schema)  # FormatUnavailable: FAILED_PRECONDITION; others INVALID_ARGUMENT
    labels = plan_labels(generator, num_samples, class_counts, seed)
    total = len(labels) if labels is not None else int(num_samples)
    sampler.plan(total, chunk_samples, max_request_bytes, "sample_local's max_request_bytes")  # Exhausted: too big
    stream = encode_stream(
        sampler, labels if labels is not None else total, seed, fmt, chunk_samples, max_request_bytes=max_request_bytes
    )

    def pieces() -> Iterator[bytes]:
        for data, done in stream:
            yield data
            del data  # not held while the next chunk is generated
            if progress:
                progress(done, total)

    digest, data = collect(pieces(), out, lambda _: None)
    metadata = SampleMetadata(
        "",
        sha,
        OutputFormat(FORMATS[fmt]),
        total,
        sampler.schema,
        privacy_from_proto(generator.manifest.privacy),
        label_counts(labels, generator.space.num_classes),
    )
    return Samples(metadata, digest, fmt, data, Path(out) if out is not None else None)
