"""`sgde register`, `login`, `logout`, `whoami`."""

from __future__ import annotations

import click

from libsgde.cli.common import _client, _read_password, as_json, handles_errors, json_option, main, out, print_json


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
@json_option
@click.pass_context
@handles_errors
def whoami(ctx, json_output: bool) -> None:
    """Show who the saved token belongs to."""
    from libsgde.security.signing import fingerprint

    with _client(ctx) as client:
        user = client.whoami()
        if json_output:  # the fingerprint too: it is what people compare, the key itself is base64
            print_json({**as_json(user), "signing_key_fingerprint": fingerprint(user.signing_public_key)})
            return
        out.print(f"{user.username} <{user.email}> signing key {fingerprint(user.signing_public_key)}")
