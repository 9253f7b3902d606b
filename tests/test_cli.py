"""The `sgde` command driven as a script would drive it: no terminal, passwords on stdin."""

from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner

from libsgde.cli import main
from tests.support.services import PASSWORD, make_artifact


@pytest.fixture
def sgde(registry, pki, tmp_path, monkeypatch):
    monkeypatch.setenv("SGDE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SGDE_PKI_DIR", str(pki.root))
    monkeypatch.setenv("SGDE_REGISTRY_ADDRESS", registry.address)
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None, ok: bool = True):
        result = runner.invoke(main, list(args), input=stdin, catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    return run


def test_account_and_model_commands(sgde, tmp_path):
    sgde(
        "register",
        "--username",
        "clia",
        "--email",
        "clia@example.org",
        "--password-stdin",
        stdin=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert "wrong username or password" in sgde(
        "login", "--username", "clia", "--password-stdin", stdin="nope nope nope\n", ok=False
    )
    sgde("login", "--username", "clia", "--password-stdin", stdin=f"{PASSWORD}\n")
    token_file = tmp_path / "home" / "token.json"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert json.loads(token_file.read_text())["username"] == "clia"
    assert "clia" in sgde("whoami")
    art = make_artifact(tmp_path / "m.safetensors")
    assert "models/clia/cli-model/versions/1" in sgde(
        "models", "push", str(art), "--name", "cli-model", "--tag", "demo"
    )
    assert "models/clia/cli-model" in sgde("models", "list", "--tag", "demo")
    assert "dp-merf" in sgde("models", "show", "cli-model")
    out_dir = tmp_path / "pulled"
    out_dir.mkdir()
    assert "verified" in sgde("models", "pull", "clia/cli-model@1", "--out", str(out_dir))
    assert list(out_dir.iterdir())[0].read_bytes() == art.read_bytes()
    assert "not found" in sgde("models", "show", "clia/nothing-here", ok=False)
    sgde("models", "delete", "cli-model", "--yes")
    sgde("logout")
    assert "not logged in" in sgde("whoami", ok=False)
