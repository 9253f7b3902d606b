"""SamplerService: validates requests, resolves the version with the CALLER's token (a refusal by the registry is the
answer here), and streams what libsgde.io.sampling and libsgde.io.formats make. No modelling logic lives here.

The stream: metadata, then chunks of at most 1 MiB, then a last message with the sha256 of all chunk bytes. The next
chunk is made while one is sent (services/sampler/ahead.py). Between chunks the servicer asks whether the call is
still active: a cancelled call, or one past its deadline, generates nothing more than the chunk being made.

Memory is bounded per request: the request's plan (libsgde.io.sampling.plan_sampling, from the model's bytes per row)
must fit in `max_request_bytes`, or the call is refused with RESOURCE_EXHAUSTED before its metadata, saying which
chunk_samples fits or what limit one sample of the model takes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from libsgde import errors
from libsgde.client.registry import RegistrySession
from libsgde.domain.names import FEDERATION_NAME_RE, MODEL_ID_RE, MODEL_OR_VERSION_RE, USERNAME_RE
from libsgde.domain.resources import ModelVersion
from libsgde.server.gate import RegistryGate
from libsgde.wire.convert import privacy_to_proto
from libsgde.wire.limits import CHUNK_SIZE, SAMPLE_REQUEST_BYTES
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.proto.sgde.v1 import sampler_pb2 as spb
from libsgde.wire.proto.sgde.v1 import sampler_pb2_grpc
from services.sampler.ahead import MadeAhead
from services.sampler.cache import ArtifactCache

log = logging.getLogger("sgde.sampler")


SAMPLES = Counter("sgde_sampler_samples_total", "Samples generated")
BYTES = Counter("sgde_sampler_bytes_total", "Bytes of sampled output streamed")
REQUESTS = Counter(
    "sgde_sampler_requests_total",
    "Sample calls that streamed, by how they ended: done, cancelled "
    "(by the client), deadline (ended within a second of it), or error",
    ["outcome"],
)
ACTIVE = Gauge("sgde_sampler_active_streams", "Sample streams in progress")


@dataclass(frozen=True)
class SamplerSettings:
    max_samples: int = 1_000_000
    max_request_bytes: int = SAMPLE_REQUEST_BYTES  # the memory one request may take (SGDE_SAMPLER_MAX_REQUEST_BYTES)


def _parse_model(name: str) -> str:
    """The version name to resolve: ".../versions/N" as given, a model name as its latest version."""
    m = MODEL_OR_VERSION_RE.fullmatch(name)
    if (
        not m
        or not USERNAME_RE.fullmatch(m[1])
        or not MODEL_ID_RE.fullmatch(m[2])
        or (m[3] is not None and m[3] != "latest" and not re.fullmatch(r"[1-9][0-9]{0,9}", m[3]))
    ):
        raise errors.FieldError(
            "model",
            "expected models/{owner}/{model} (its latest version) or "
            f"models/{{owner}}/{{model}}/versions/{{n}}, got {name[:200]!r}",
        )
    return name if m[3] is not None else f"{name}/versions/latest"


def _manifest_schema(version: ModelVersion) -> pb.DataSchema | None:
    """The data schema the registry's copy of the manifest declares (for checks before any download)."""
    from libsgde.io.schema import SchemaError, schema_from_dict

    try:
        return schema_from_dict(json.loads(version.manifest_json)["data_schema"])
    except (ValueError, KeyError, TypeError, SchemaError):
        return None


def _as_sample_request(request: spb.SampleFederationRequest) -> spb.SampleRequest:
    """The request's totals as one Sample request (for the checks every part must pass in all)."""
    return spb.SampleRequest(
        num_samples=request.num_samples,
        seed=request.seed,
        class_counts=dict(request.class_counts),
        format=request.format,
        chunk_samples=request.chunk_samples,
    )


def _shares(total: int, weights: list[float]) -> list[int]:
    """`total` split in proportion to `weights` by largest remainders (ties to the earlier), summing to `total`."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights] if whole > 0 else [total / len(weights)] * len(weights)
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _part_seed(seed: int, member: str) -> int:
    """A part's seed: from the request's seed and the member alone, so that a part is the same whoever else is in."""
    digest = hashlib.sha256(f"{seed}\0{member}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def federation_parts(request: spb.SampleFederationRequest, generators) -> list[spb.SampleRequest]:
    """One Sample request per generator: its share of the rows (or of each class), its own seed, the same format."""
    if request.quota == spb.FEDERATION_QUOTA_PROPORTIONAL_TO_N:
        weights = [float(g.privacy.dataset_size) for g in generators]
    else:
        weights = [1.0] * len(generators)
    if request.class_counts:
        per_class = {c: _shares(n, [1.0] * len(generators)) for c, n in sorted(request.class_counts.items())}
        counts = [{c: shares[i] for c, shares in per_class.items() if shares[i]} for i in range(len(generators))]
        totals = [0] * len(generators)
    else:
        counts, totals = [{} for _ in generators], _shares(int(request.num_samples), weights)
    return [
        spb.SampleRequest(
            model=g.version,
            num_samples=n,
            seed=_part_seed(request.seed, g.member),
            class_counts=c,
            format=request.format,
            chunk_samples=request.chunk_samples,
        )
        for g, n, c in zip(generators, totals, counts, strict=True)
    ]


def _why_stopped(context) -> str:
    """ "deadline" for a call that ended at (or within a second of) its deadline: the client's deadline fires a little
    before the server's copy of it, and reaches the server as a cancellation; else "cancelled"."""
    remaining = context.time_remaining()
    return "deadline" if remaining is not None and remaining < 1.0 else "cancelled"


class SamplerServicer(sampler_pb2_grpc.SamplerServiceServicer):
    def __init__(self, gate: RegistryGate, cache: ArtifactCache, settings: SamplerSettings = SamplerSettings()):
        self.gate, self.cache, self.settings = gate, cache, settings

    def _check_request(
        self, request: spb.SampleRequest, schema: pb.DataSchema | None, kind: str | None
    ) -> list[tuple[str, str]]:
        """Field violations of the request (those the schema and data kind decide, when known)."""
        from libsgde.io import formats, sampling

        violations: list[tuple[str, str]] = []
        limit = self.settings.max_samples
        if request.class_counts:
            total = sum(request.class_counts.values())
            if schema is not None:
                try:
                    sampling.check_class_counts(schema, dict(request.class_counts))
                except sampling.SamplingError as e:
                    violations.append((e.field, e.description))
            if total > limit:
                violations.append(
                    (
                        "class_counts",
                        f"asks for {total} samples in all, over this sampler's limit of "
                        f"{limit}; ask in several requests (other seeds)",
                    )
                )
        elif request.num_samples <= 0:
            violations.append(("num_samples", "must be > 0 (or give class_counts)"))
        elif request.num_samples > limit:
            violations.append(
                (
                    "num_samples",
                    f"{request.num_samples} is over this sampler's limit of {limit}; "
                    "ask in several requests (other seeds)",
                )
            )
        try:
            sampling.check_chunk_samples(request.chunk_samples)
        except sampling.SamplingError as e:
            violations.append((e.field, e.description))
        try:
            formats.check_format(request.format, kind) if kind else formats.format_name(request.format)
        except formats.FormatUnavailable:
            pass  # FAILED_PRECONDITION, raised once the request is otherwise valid
        except sampling.SamplingError as e:
            violations.append((e.field, e.description))
        return violations

    def Sample(self, request: spb.SampleRequest, context) -> Iterator[spb.SampleResponse]:
        user, token = self.gate.caller(context)
        name = _parse_model(request.model)
        violations = self._check_request(request, None, None)
        if violations:
            raise errors.FieldError.many(violations)
        yield from self._stream(user, self.gate.session_for(token, user), name, request, context)

    def SampleFederation(self, request: spb.SampleFederationRequest, context) -> Iterator[spb.SampleFederationResponse]:
        user, token = self.gate.caller(context)
        if not FEDERATION_NAME_RE.fullmatch(request.federation):
            raise errors.FieldError("federation", f"expected federations/{{id}}, got {request.federation[:200]!r}")
        if request.quota not in spb.FederationQuota.values():
            raise errors.FieldError("quota", "EQUAL or PROPORTIONAL_TO_N")
        violations = self._check_request(_as_sample_request(request), None, None)
        if violations:
            raise errors.FieldError.many(violations)
        client = self.gate.session_for(token, user)
        listed = client._call(client.federations.ListGenerators, rpb.ListGeneratorsRequest(name=request.federation))
        generators = [g for g in listed.generators if request.include_own or g.member != user]
        if not generators:
            raise errors.FailedPrecondition(
                f"{request.federation} has no admitted generator"
                + ("" if request.include_own else " of another member (include_own adds yours)")
            )
        for generator, part in zip(generators, federation_parts(request, generators), strict=True):
            if not (part.num_samples or part.class_counts):
                continue  # a share of nothing
            yield spb.SampleFederationResponse(source=generator.member)
            for message in self._stream(user, client, generator.version, part, context):
                yield spb.SampleFederationResponse(sample=message)
            if not context.is_active():
                return

    def _stream(
        self, user: str, client: RegistrySession, name: str, request: spb.SampleRequest, context
    ) -> Iterator[spb.SampleResponse]:
        """One Sample stream of version `name`, checked against its schema, its format and this sampler's limits."""
        from libsgde.io import formats, sampling

        version = client.get_version(name)  # NOT_FOUND, PERMISSION_DENIED...: the registry's answer is ours
        kind = version.data_kind.text if version.data_kind else None
        violations = self._check_request(request, _manifest_schema(version), kind)
        if violations:
            raise errors.FieldError.many(violations)
        try:
            fmt = formats.check_format(request.format, kind or "tabular")
        except formats.FormatUnavailable as e:
            raise errors.FailedPrecondition(str(e), [(e.field, e.description)]) from None

        sampler = self.cache.sampler(version, client)
        generator = sampler.generator
        schema = generator.manifest.data_schema
        try:
            formats.check_format(fmt, schema)
            labels = sampling.plan_labels(generator, request.num_samples, dict(request.class_counts), request.seed)
        except formats.FormatUnavailable as e:
            raise errors.FailedPrecondition(str(e), [(e.field, e.description)]) from None
        except sampling.SamplingError as e:
            raise errors.FieldError(e.field, e.description) from None
        total = len(labels) if labels is not None else int(request.num_samples)
        limit = self.settings.max_request_bytes
        # Exhausted (RESOURCE_EXHAUSTED) when the request would need more memory than this sampler allows.
        sampler.plan(total, request.chunk_samples, limit, "this sampler's SGDE_SAMPLER_MAX_REQUEST_BYTES")
        yield spb.SampleResponse(
            metadata=spb.SampleMetadata(
                version=version.name,
                artifact_sha256=version.sha256,
                format=formats.FORMATS[fmt],
                num_samples=total,
                data_schema=schema,
                privacy=privacy_to_proto(version.privacy),
                class_counts=sampling.label_counts(labels, generator.space.num_classes),
            )
        )

        started = time.perf_counter()
        sent, done = 0, 0
        ACTIVE.inc()
        outcome = "error"

        def log_stopped(reason: str) -> None:
            log.info(
                "sample stopped",
                extra={
                    "version": version.name,
                    "user": user,
                    "reason": reason,
                    "samples_done": done,
                    "num_samples": total,
                },
            )

        pieces = formats.encode_stream(
            sampler,
            labels if labels is not None else total,
            request.seed,
            fmt,
            request.chunk_samples,
            should_stop=lambda: not context.is_active(),
            max_request_bytes=limit,
        )
        try:
            with MadeAhead(pieces) as ahead:  # the next chunk is made while this one is sent
                for data, now in ahead:
                    SAMPLES.inc(now - done)
                    done = now
                    # A chunk of at most CHUNK_SIZE bytes goes as it is: slicing a bytes object whole copies nothing.
                    for offset in range(0, len(data), CHUNK_SIZE):
                        piece = data[offset : offset + CHUNK_SIZE]
                        sent += len(piece)
                        BYTES.inc(len(piece))
                        yield spb.SampleResponse(chunk=piece, samples_done=done)
                    data = piece = b""  # released before the chunk after next is made (two are held at most)
            if done < total or not context.is_active():
                outcome = _why_stopped(context)
                log_stopped(outcome)
                return
            yield spb.SampleResponse(samples_done=done, sha256=ahead.sha256())
            outcome = "done"
            log.info(
                "sampled",
                extra={
                    "version": version.name,
                    "user": user,
                    "samples": total,
                    "bytes": sent,
                    "format": fmt,
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
        except GeneratorExit:  # the call ended while a chunk was on its way
            outcome = _why_stopped(context)
            log_stopped(outcome)
            raise
        finally:
            ACTIVE.dec()
            REQUESTS.labels(outcome).inc()
