"""The `sgde` command: a thin face over libsgde.client, one module per command group. The services start through
their entry points (libsgde.server.launch); the CLI imports none of them."""

from __future__ import annotations

from libsgde.cli import (  # noqa: F401
    accounts,
    certs,
    demo,
    disguise,
    evaluate,
    federations,
    jobs,
    models,
    sample,
    schema,
    services,
)
from libsgde.cli.common import main

__all__ = ["main"]
