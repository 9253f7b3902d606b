"""`sgde register`, `login`, `logout`, `whoami`."""

from __future__ import annotations

import click

from libsgde.cli.common import _client, _read_password, handles_errors, main, out


@main.command()
@click.option("--username", prompt=True)
@click.option("--email", prompt=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
@handles_errors
def register(ctx, username: str, email: str, password_stdin: bool) -> None:
    """Create an account; your signing key is made here and never leaves this machine."""
    from libsgde.security.signing import fingerprint

    password = _read_password(password_stdin, confirm=True)
    with _client(ctx) as client:
        user = client.register(username, email, password)
        out.print(
            f"registered {user.username}; signing key {fingerprint(user.signing_public_key)} "
            f"in {client.signing_key_path(username)}"
        )


@main.command()
@click.option("--username", prompt=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
@handles_errors
def login(ctx, username: str, password_stdin: bool) -> None:
    """Log in; the token is kept in $SGDE_HOME/token.json (mode 0600)."""
    password = _read_password(password_stdin)
    with _client(ctx) as client:
        reply = client.login(username, password)
        until = f" until {reply.expire_time:%Y-%m-%dT%H:%M:%S}Z" if reply.expire_time else ""
        out.print(f"logged in as {username}{until}")


@main.command()
@click.pass_context
@handles_errors
def logout(ctx) -> None:
    """Forget the saved token."""
    with _client(ctx) as client:
        client.logout()


@main.command()
@click.pass_context
@handles_errors
def whoami(ctx) -> None:
    """Show who the saved token belongs to."""
    from libsgde.security.signing import fingerprint

    with _client(ctx) as client:
        user = client.whoami()
        out.print(f"{user.username} <{user.email}> signing key {fingerprint(user.signing_public_key)}")
