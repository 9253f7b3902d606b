"""`sgde certs`: development certificates for mutual TLS."""

from __future__ import annotations

import click

from libsgde import config
from libsgde.cli.common import main, out


@main.group()
def certs() -> None:
    """Development certificates for mutual TLS."""


@certs.command("init")
@click.option("--name", "names", multiple=True, help="Extra DNS name or IP for the service certificates.")
@click.option("--force", is_flag=True, help="Make a new CA and certificates even if they exist.")
def certs_init(names: tuple[str, ...], force: bool) -> None:
    """Make a development CA and certificates for registry, trainer, sampler and clients under $SGDE_HOME/pki."""
    from libsgde.security.tls import init_pki

    paths = init_pki(config.pki_dir(), names, force=force)
    out.print(f"PKI ready in {paths.root} (CA: {paths.ca_cert})")
