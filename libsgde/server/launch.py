"""Starting services without importing them: each service package declares an entry point in the group
`sgde.services` (pyproject.toml) naming its `Service`, so that libsgde (the CLI, the demo) never imports a service
module, and a service can be installed, or left out, on its own.

`start_embedded` is the one-machine default that `sgde up` and `sgde demo` share: the registry first, then the
trainer and the sampler, pointed at the registry just started.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from libsgde.errors import FailedPrecondition
from libsgde.server import serving

GROUP = "sgde.services"
ORDER = ("registry", "trainer", "sampler")  # start order; they stop in reverse (callers first, the registry last)


@dataclass(frozen=True)
class Service:
    """What a service package offers the launcher: its name, its config class (a dataclass with `from_env()`), how
    to start it in this process, and its `main` (configured from the environment, serves until SIGTERM)."""

    name: str
    config: Any
    start: Callable[[Any], serving.ServerHandle]
    main: Callable[[], None]


def service(name: str) -> Service:
    """The installed service called `name`."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name not in found:
        raise FailedPrecondition(
            f"no service {name!r} is installed (entry points in group {GROUP!r}: "
            f"{', '.join(sorted(found)) or 'none'}); reinstall the package: pip install -e ."
        )
    loaded = found[name].load()
    if not isinstance(loaded, Service):
        raise FailedPrecondition(f"entry point {name!r} of group {GROUP!r} is not an SGDE Service")
    return loaded


@dataclass(frozen=True)
class Running:
    """A service started in this process: the config it runs with, and its server."""

    config: Any
    handle: serving.ServerHandle


def start_embedded(
    settings: Mapping[str, Mapping[str, Any]] | None = None, *, follow_registry: bool = True, environment: bool = True
) -> dict[str, Running]:
    """Starts registry, trainer and sampler in this process, each configured from the environment (or, without
    `environment`, from its config's defaults alone) with `settings[name]` setting fields of its config. With
    `follow_registry`, trainer and sampler call the registry just started (wherever it listens). On a failure the
    services already started are stopped. Returns what runs, by name, in start order."""
    settings = settings or {}
    started: dict[str, Running] = {}
    try:
        for name in ORDER:
            svc = service(name)
            overrides = dict(settings.get(name, {}))
            if follow_registry and name != "registry" and "registry" not in overrides:
                overrides["registry"] = f"127.0.0.1:{started['registry'].handle.port}"
            config = dataclasses.replace(svc.config.from_env(), **overrides) if environment else svc.config(**overrides)
            started[name] = Running(config, svc.start(config))
    except BaseException:
        stop_all(started, grace=1)
        raise
    return started


def stop_all(running: Mapping[str, Running], grace: float = 10.0) -> None:
    """Stops services in reverse start order: the sampler's streams end and the trainer's jobs checkpoint while the
    registry they call still answers."""
    for service_running in reversed(list(running.values())):
        service_running.handle.stop(grace)
