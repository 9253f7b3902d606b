"""`sgde serve` and `sgde up`: the services, started through their entry points (libsgde.server.launch), never
imported by the CLI."""

from __future__ import annotations

import os

import click

from libsgde import config
from libsgde.cli.common import console, main


@main.command()
@click.argument("service", type=click.Choice(["registry", "trainer", "sampler"]))
@click.option("--listen", help="Address to bind (default from $SGDE_<SERVICE>_LISTEN or the default port).")
def serve(service: str, listen: str | None) -> None:
    """Run one service in the foreground (configured by environment variables; see README)."""
    from libsgde.server.launch import service as installed

    if listen:
        os.environ[f"SGDE_{service.upper()}_LISTEN"] = listen
    installed(service).main()


@main.command()
def up() -> None:
    """Start registry, trainer and sampler on loopback with the embedded default (PKI made on first start); Ctrl-C
    stops them."""
    from libsgde.security.tls import init_pki
    from libsgde.server import launch, serving

    serving.setup_logging(os.environ.get("SGDE_LOG_LEVEL", "WARNING"))
    init_pki(config.pki_dir())
    stop = serving.stop_on_signal()  # before any server starts: a Ctrl-C during start-up still stops cleanly
    # Trainer and sampler follow the registry just started, unless told where another one is.
    started = launch.start_embedded(follow_registry=not os.environ.get("SGDE_REGISTRY_ADDRESS"))
    trainer, sampler = started["trainer"].config, started["sampler"].config
    console.print(
        f"registry on {config.listen_address('registry')}, trainer on {trainer.listen}, sampler on "
        f"{sampler.listen} (mTLS; PKI in {config.pki_dir()}; trainer state in {trainer.state_dir}, "
        f"sampler cache in {sampler.state_dir}). Ctrl-C stops them."
    )
    # Sampler and trainer first (streams end, jobs checkpoint) while the registry they call still lives.
    serving.run_until_signalled([running.handle for running in reversed(started.values())], stop)
    console.print("stopped")
