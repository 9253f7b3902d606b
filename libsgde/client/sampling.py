"""Synthetic data from the sampler service, checked against the sha256 the stream announces, and what it decodes
to (`Samples`)."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import grpc

from libsgde.client.names import version_name
from libsgde.client.registry import RegistrySession
from libsgde.client.transfers import Progress, cancelling, collect
from libsgde.domain.resources import SampleMetadata
from libsgde.errors import FailedPrecondition, FieldError, Internal, Unavailable, VerificationError
from libsgde.io.formats import FORMAT_NAMES, FORMATS, format_name
from libsgde.io.sampling import SamplingError
from libsgde.wire.convert import sample_metadata_from_proto
from libsgde.wire.proto.sgde.v1 import sampler_pb2 as spb
from libsgde.wire.proto.sgde.v1 import sampler_pb2_grpc
from libsgde.wire.status import from_rpc_error


@dataclass
class Samples:
    """Sampled data: the stream's metadata (resolved version, artifact sha256, schema, privacy report, per-class
    counts), the sha256 of its bytes, and the bytes themselves (`data`), or the file they were written to (`path`).

    `values` and `labels` are decoded on first use, in the types the schema's encoder decodes to: tabular values are
    {column: array} (the label column as class names), images an [N, H, W, C] array; labels are int32 class indices
    in the schema's order (None for an unconditional model)."""

    metadata: SampleMetadata
    sha256: str
    format: str
    data: bytes | None = None
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.metadata.num_samples)

    def raw(self) -> bytes:
        """The output's bytes (read from `path` when written to a file)."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return Path(self.path).read_bytes()

    @cached_property
    def _decoded(self) -> tuple[Any, Any]:
        from libsgde.io.formats import read_samples

        source = self.data if self.data is not None else self.path
        assert source is not None
        return read_samples(source, self.format, self.metadata.data_schema, list(self.metadata.class_counts))

    @property
    def values(self) -> Any:
        return self._decoded[0]

    @property
    def labels(self) -> Any:
        return self._decoded[1]

    @property
    def class_names(self) -> list[str]:
        from libsgde.io.sampling import class_names

        return class_names(self.metadata.data_schema)

    def to_dataframe(self) -> Any:
        """A pandas DataFrame (pandas is imported only here): tabular samples one column per schema column; images
        an `image` column of [H, W, C] arrays and a `label` column of class names (when conditional)."""
        try:
            import pandas as pd
        except ImportError:
            raise FailedPrecondition("to_dataframe needs pandas: pip install pandas") from None
        if isinstance(self.values, dict):
            return pd.DataFrame(self.values)
        frame = pd.DataFrame({"image": list(self.values)})
        if self.labels is not None:
            frame["label"] = [self.class_names[i] for i in self.labels]
        return frame


def _collect_part(messages: Iterator[Any], out: str | Path | None, progress: Progress | None) -> Samples:
    """One Sample stream's messages (metadata, chunks, the sha256) into Samples, checked against the sha256."""
    state: dict = {}

    def pieces() -> Iterator[bytes]:
        for message in messages:
            which = message.WhichOneof("payload")
            if which == "metadata":
                state["metadata"] = sample_metadata_from_proto(message.metadata)
                if progress:
                    progress(0, state["metadata"].num_samples)
            elif which == "chunk":
                if "metadata" not in state:
                    raise Internal("the sampler sent data before its metadata")
                yield message.chunk
                if progress:
                    progress(message.samples_done, state["metadata"].num_samples)
            elif message.sha256:
                state["sha256"] = message.sha256
                return  # the part's last message

    def check(digest: str) -> None:
        if "sha256" not in state:
            raise Unavailable("the sample stream ended before its last message; nothing was kept, try again")
        if state["sha256"] != digest:
            raise VerificationError(
                f"the sampled bytes hash to {digest}, the sampler announced {state['sha256']}; nothing was kept, "
                "try again"
            )

    digest, data = collect(pieces(), out, check)
    metadata = state["metadata"]
    return Samples(metadata, digest, FORMAT_NAMES[metadata.format], data, Path(out) if out is not None else None)


def _until_next_part(messages: Iterator[Any]) -> Iterator[Any]:
    """The messages of the current part of a SampleFederation stream: up to and including its sha256 message."""
    for message in messages:
        yield message
        if message.sample.sha256:
            return


@dataclass
class FederationSamples:
    """SampleFederation's parts, one per member: (source, Samples). `sources` names each row's member; `labels`
    and `values` join the parts in order (tables: {column: array}; images: one array)."""

    parts: list[tuple[str, Samples]]

    def __len__(self) -> int:
        return sum(len(samples) for _, samples in self.parts)

    @property
    def sources(self) -> Any:
        import numpy as np

        return np.concatenate([np.full(len(s), member, dtype=object) for member, s in self.parts])

    @property
    def labels(self) -> Any:
        import numpy as np

        labels = [s.labels for _, s in self.parts]
        return None if any(x is None for x in labels) else np.concatenate(labels)

    @property
    def values(self) -> Any:
        import numpy as np

        values = [s.values for _, s in self.parts]
        if isinstance(values[0], dict):
            return {k: np.concatenate([v[k] for v in values]) for k in values[0]}
        return np.concatenate(values)


def checked_format(fmt: str) -> str:
    """The canonical format name, or a FieldError on `format`."""
    try:
        return format_name(fmt)
    except SamplingError as e:
        raise FieldError(e.field, e.description, message=str(e)) from None


class Sampling(RegistrySession, abc.ABC):
    """`Client`'s sampler calls: a registry session that also reaches the sampler."""

    @property
    @abc.abstractmethod
    def sampler(self) -> sampler_pb2_grpc.SamplerServiceStub:
        """The sampler's stub (Client opens its channel)."""

    def sample(
        self,
        model: str,
        num_samples: int = 0,
        *,
        seed: int = 0,
        class_counts: Mapping[str, int] | None = None,
        format: str = "npy",
        out: str | Path | None = None,
        progress: Progress | None = None,
        chunk_samples: int = 0,
        timeout: float | None = None,
    ) -> Samples:
        """Synthetic samples streamed by the sampler from a model version (MODEL, MODEL@N or .../versions/N; the
        latest by default): `num_samples` of them (classes drawn from the model's class prior), or exactly
        `class_counts` ({class name: count}; the output is grouped by class in the schema's class order).
        `format` is "npy", "csv" (tables) or "parquet" (tables; where the sampler has pyarrow). The same request and
        seed give the same bytes. The stream is checked against its sha256; with `out` its bytes are written to that
        file atomically (nothing appears there unless the whole stream arrived and verified). `progress(done, total)`
        is called as samples arrive. Stopping early (Ctrl-C) cancels the call, and the sampler stops generating."""
        fmt = checked_format(format)
        me = self._username if "/" in model else self._me()
        request = spb.SampleRequest(
            model=version_name(model, me),
            num_samples=num_samples,
            seed=seed,
            class_counts=dict(class_counts or {}),
            format=FORMATS[fmt],
            chunk_samples=chunk_samples,
        )
        stream = self.sampler.Sample(request, metadata=self._metadata(), timeout=timeout)
        with cancelling(stream):
            try:
                return _collect_part(iter(stream), out, progress)
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None

    def sample_federation(
        self,
        federation: str,
        num_samples: int = 0,
        *,
        seed: int = 0,
        class_counts: Mapping[str, int] | None = None,
        quota: str = "equal",
        include_own: bool = False,
        format: str = "npy",
        chunk_samples: int = 0,
        timeout: float | None = None,
    ) -> FederationSamples:
        """Synthetic data from every generator admitted to a federation you are a member of (not your own unless
        `include_own`): `num_samples` in all, split between the members equally or in proportion to their N
        (`quota` "equal" | "proportional"), or exactly `class_counts` in all, each class split equally. One part per
        member, each checked against its sha256; the same request and seed give the same bytes."""
        fmt = checked_format(format)
        quotas = {"equal": spb.FEDERATION_QUOTA_EQUAL, "proportional": spb.FEDERATION_QUOTA_PROPORTIONAL_TO_N}
        if quota not in quotas:
            raise FieldError("quota", f"'equal' or 'proportional', not {quota!r}")
        request = spb.SampleFederationRequest(
            federation=federation if federation.startswith("federations/") else f"federations/{federation}",
            num_samples=num_samples,
            seed=seed,
            class_counts=dict(class_counts or {}),
            format=FORMATS[fmt],
            chunk_samples=chunk_samples,
            quota=quotas[quota],
            include_own=include_own,
        )
        stream = self.sampler.SampleFederation(request, metadata=self._metadata(), timeout=timeout)
        parts: list[tuple[str, Samples]] = []
        with cancelling(stream):
            try:
                messages = iter(stream)
                for message in messages:
                    if not message.source:
                        raise Internal("the sampler sent a part without saying whose it is")
                    part = (m.sample for m in _until_next_part(messages))
                    parts.append((message.source, _collect_part(part, None, None)))
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None
        return FederationSamples(parts)
