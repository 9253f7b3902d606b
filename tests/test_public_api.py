"""The SDK's public names load from the package root, lazily."""

import subprocess
import sys

import pytest

import libsgde


def test_public_names_resolve():
    for name in libsgde.__all__:
        assert getattr(libsgde, name) is not None
    with pytest.raises(AttributeError):
        libsgde.NoSuchThing  # noqa: B018


def test_importing_one_module_does_not_load_jax_or_grpc():
    code = "import sys, libsgde.io.schema; print('jax' in sys.modules, 'grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
