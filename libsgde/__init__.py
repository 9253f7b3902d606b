"""SGDE's Python SDK and library.

The public API a user scripts against::

    from libsgde import Client, TrainSpec, sample_local, train_local, load_generator

    with Client() as sgde:                      # certificates and token under $SGDE_HOME
        job = sgde.create_job(TrainSpec("dp-merf", target_epsilon=1.0), schema, dataset, "models/me/digits")
        for event in sgde.watch_job(job.name): ...
        sgde.publish_job(job.name)
        model = train_local("adult.csv", "schema.json", TrainSpec("cvae", 1.0))  # no service; push it later
        samples = sgde.sample("me/digits", 1000, seed=7)     # .values, .labels, .to_dataframe()

A failed call raises one of libsgde.errors' classes, re-exported here: `except libsgde.NotFound`, `libsgde.FieldError`
(with `.violations`), ..., each one gRPC status.

Names load lazily, so that importing one module of the library (the schema, the accountant) does not pull in
gRPC, JAX and the rest.
"""

from __future__ import annotations

import importlib

# what a call raises: `except libsgde.NotFound`, never a grpc.StatusCode
_ERRORS = (
    "SgdeError",
    "FieldError",
    "NotFound",
    "PermissionDenied",
    "Unauthenticated",
    "Unavailable",
    "Conflict",
    "Exhausted",
    "FailedPrecondition",
    "DataLoss",
    "VerificationError",
)
_EXPORTS = {
    "Client": "libsgde.client",
    "Samples": "libsgde.client",
    "sample_local": "libsgde.client",
    "train_local": "libsgde.client",
    "LocalModel": "libsgde.client",
    "TrainSpec": "libsgde.domain.specs",
    "train": "libsgde.io.training",
    "SpecError": "libsgde.io.training",
    "load_generator": "libsgde.io.generator",
    "load_dataset": "libsgde.io.datasets",
    "infer_schema": "libsgde.io.datasets",
    "schema_from_dict": "libsgde.io.schema",
    "schema_to_dict": "libsgde.io.schema",
    "evaluate_model": "libsgde.client.evaluation",  # (libsgde.evaluate is the package of the parts)
    **dict.fromkeys(_ERRORS, "libsgde.errors"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'libsgde' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
