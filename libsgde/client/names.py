"""Resource names from what people type: 'alice/digits', 'digits' (yours), 'alice/digits@3', 'jobs/ID' or 'ID'."""

from __future__ import annotations

from libsgde.errors import FieldError


def model_name(ref: str, me: str | None = None) -> str:
    """'alice/digits' or 'models/alice/digits' -> 'models/alice/digits'; 'digits' -> models/<me>/digits."""
    if ref.startswith("models/"):
        return ref
    if "/" in ref:
        return f"models/{ref}"
    if not me:
        raise FieldError("model", f"say whose model {ref!r} is: OWNER/{ref}")
    return f"models/{me}/{ref}"


def version_name(ref: str, me: str | None = None) -> str:
    """A model reference, optionally ending in /versions/N or @N -> a version name (latest by default)."""
    if "@" in ref:
        ref, number = ref.rsplit("@", 1)
        return f"{model_name(ref, me)}/versions/{number}"
    if "/versions/" in ref:
        return model_name(ref, me)
    return f"{model_name(ref, me)}/versions/latest"


def job_name(ref: str) -> str:
    """'jobs/ID' or 'ID' -> 'jobs/ID'."""
    return ref if ref.startswith("jobs/") else f"jobs/{ref}"


def dataset_name(ref: str) -> str:
    """'datasets/ID' or 'ID' -> 'datasets/ID'."""
    return ref if ref.startswith("datasets/") else f"datasets/{ref}"
