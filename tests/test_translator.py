"""The translator architecture and libsgde.io.disguise (issue 17): a tiny translator trained with DP-SGD through
`sgde train --local` maps every hidden class to its declared public class, its artifact passes the registry's
privacy check and loads as a generator; hostile translator artifacts and bad class maps are refused, naming what is
wrong.

Data: 8 x 8 images of 4 classes, class k a bright 4 x 4 quadrant (k = 2 * row + column) whose brightness is the
image's style, on faint noise. Hidden classes 0 and 1 are disguised as public classes 2 and 3. Training: 1,000
images, 200 DP-SGD steps at epsilon 10 (large: the test is about the mapping, not about privacy), seconds on CPU."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from libsgde.cli import main
from libsgde.io.artifact import ArtifactError, build_manifest, load_artifact, write_artifact
from libsgde.io.disguise import TranslatedImages, Translator, load_translator
from libsgde.io.encoding import DataError, model_space
from libsgde.io.generator import load_generator
from libsgde.io.privacy import check_privacy_claim
from libsgde.io.schema import schema_to_dict
from libsgde.ml.architectures import CLASS_PRIOR, ConfigError, get_architecture
from libsgde.ml.architectures.base import flatten
from libsgde.ml.privacy import dpsgd, ghost
from libsgde.ml.space import Block, ModelSpace
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from tests.test_models import PRIVACY  # a DP-SGD report the strict reader accepts

SCHEMA = pb.DataSchema(
    image=pb.ImageSchema(height=8, width=8, channels=1, pixel_max=255, class_names=["a", "b", "c", "d"])
)
SPACE = model_space(SCHEMA)
CLASS_MAP = {"hidden_classes": [0, 1], "public_classes": [2, 3]}
PUBLIC_OF = {0: 2, 1: 3, 2: 2, 3: 3}  # classes that are not hidden stay themselves
TINY = {"hidden": [32], "latent_dim": 2, **CLASS_MAP}
EPSILON = 10.0


def quadrant_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images [n, 8, 8] and their classes: class k lights quadrant k with a random brightness."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n).astype(np.int32)
    x = rng.uniform(0.0, 0.1, (n, 8, 8))
    brightness = rng.uniform(0.5, 1.0, n)
    for i, k in enumerate(labels):
        row, col = divmod(int(k), 2)
        x[i, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] += brightness[i]
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8), labels


def invoke(*args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A translator trained by `sgde train --local --arch translator --config JSON`."""
    folder = tmp_path_factory.mktemp("translator")
    images, labels = quadrant_images(1000, seed=0)
    np.savez(folder / "train.npz", x=images, y=labels)
    (folder / "schema.json").write_text(json.dumps(schema_to_dict(SCHEMA)))
    out = folder / "translator.safetensors"
    invoke(
        *("train", "--local", "--data", str(folder / "train.npz"), "--schema", str(folder / "schema.json")),
        *("--arch", "translator", "--epsilon", str(EPSILON), "--epochs", "20", "--batch-size", "100"),
        *("--lr", "0.01", "--seed", "1", "--config", json.dumps(TINY), "--out", str(out)),
    )
    return out


def test_the_translator_maps_every_hidden_class_to_its_declared_public_class(trained):
    translator = load_translator(trained)
    assert translator.class_map == {0: 2, 1: 3}
    assert (translator.hidden_classes, translator.public_classes) == ([0, 1], [2, 3])
    images, labels = quadrant_images(200, seed=1)  # held out
    out = translator.translate(images)
    assert isinstance(out, TranslatedImages)
    assert out.images.shape == (200, 8, 8, 1) and out.images.dtype == np.uint8
    assert out.labels.dtype == out.predicted_hidden.dtype == np.int32
    expected = np.array([PUBLIC_OF[int(k)] for k in labels])
    hidden = labels < 2
    assert set(labels[hidden]) == {0, 1}
    assert np.mean(out.labels[hidden] == expected[hidden]) >= 0.9
    assert np.mean(out.labels == expected) >= 0.9  # public classes stay themselves
    assert np.mean(out.predicted_hidden == labels) >= 0.9

    # What the translated images show: a nearest-class-mean classifier fitted on genuine public-class images.
    genuine, genuine_labels = quadrant_images(400, seed=2)
    means = np.stack([genuine[genuine_labels == c].reshape(-1, 64).mean(0) for c in (2, 3)])
    drawn = out.images.reshape(200, 64).astype(np.float64)
    seen_as = np.array([2, 3])[np.argmin(((drawn[:, None, :] - means[None]) ** 2).sum(2), axis=1)]
    assert np.mean(seen_as[hidden] == expected[hidden]) >= 0.9
    assert not np.array_equal(out.images[hidden, ..., 0], images[hidden])  # redrawn, not passed through


def test_translation_is_deterministic_and_independent_of_the_batch(trained):
    translator = load_translator(trained)
    images, _ = quadrant_images(70, seed=3)
    whole = translator.translate(images, seed=5)
    part = translator.translate(images[:5, :, :, None])  # [n, H, W, C] too, and another seed: no randomness
    np.testing.assert_array_equal(whole.labels[:5], part.labels)
    np.testing.assert_array_equal(whole.predicted_hidden[:5], part.predicted_hidden)
    assert np.abs(whole.images[:5].astype(int) - part.images.astype(int)).max() <= 1  # matmul blocking: an ulp
    with pytest.raises(DataError, match=r"\(N, 8, 8, 1\)"):
        translator.translate(np.zeros((3, 28, 28), np.uint8))


def test_a_trained_translator_publishes_and_samples_like_any_generator(trained):
    header, _ = load_artifact(trained)
    report = check_privacy_claim(header.manifest)  # what the registry recomputes at every publish
    assert report.mechanism == "dp-sgd" and 0 < report.epsilon <= EPSILON * (1 + 1e-3)
    assert header.manifest.config["classifier_weight"] == 1.0  # every setting written out
    images, labels = load_generator(trained).sample(12, seed=0, labels=np.array([0, 1, 2, 3] * 3))
    assert images.shape == (12, 8, 8, 1) and list(labels) == [0, 1, 2, 3] * 3


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_ghost_clipping_of_the_translator_equals_per_example_clipping(network):
    arch = get_architecture("translator")
    config = arch.configure({**TINY, "hidden": [8], "network": network, "channels": [4]}, SPACE)
    module, params = arch.module(SPACE, config), arch.init(jax.random.key(1), SPACE, config)
    assert ghost.is_ghostable(params)  # so DP-SGD takes the fast path
    assert set(arch.sampling_params(params)) == {"encoder", "decoder", "classifier"}  # translation needs all three
    images, labels = quadrant_images(6, seed=4)
    x = jnp.asarray(images[..., None] / 255.0, jnp.float32)
    args = (x, jnp.asarray(labels), jax.random.split(jax.random.key(2), 6))
    mask = jnp.asarray([1, 1, 1, 1, 1, 0], jnp.float32)
    summed, norms, _ = jax.jit(lambda p, a, m: ghost.clipped_sum(module, p, a, m, 1.0))(params, args, mask)
    assert float(jnp.max(norms)) > 1.0  # clipping really happened
    reference, reference_norms, _ = jax.jit(
        lambda p, a, m: dpsgd.clipped_sum(
            lambda p, e: module.apply({"params": p}, *(x[None] for x in e))[0], p, a, m, 1.0
        )
    )(params, args, mask)
    np.testing.assert_allclose(norms[:5], reference_norms[:5], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


# -- configs and hostile artifacts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,key,message",
    [
        ({"hidden_classes": [0, 1]}, "public_classes", "required"),
        ({"public_classes": [2, 3]}, "hidden_classes", "required"),
        ({"hidden_classes": [0, 4], "public_classes": [2, 3]}, "hidden_classes", r"in \[0, 3\]"),
        ({"hidden_classes": [0, 1], "public_classes": [-1, 3]}, "public_classes", r"in \[0, 3\]"),
        ({"hidden_classes": [0, 0], "public_classes": [2, 3]}, "hidden_classes", "more than once"),
        ({"hidden_classes": [0, 1], "public_classes": [2, 2]}, "public_classes", "more than once"),
        ({"hidden_classes": [0, 1], "public_classes": [2]}, "public_classes", "2 hidden, 1 public"),
        ({"hidden_classes": [0, 1], "public_classes": [1, 2]}, "public_classes", "both hidden and public"),
        ({"hidden_classes": [], "public_classes": []}, "hidden_classes", "1 to 8"),
        ({**CLASS_MAP, "classifier_weight": -1}, "classifier_weight", "number"),
        ({**CLASS_MAP, "network": "unet"}, "network", "mlp, conv"),
        ({**CLASS_MAP, "class_map": {"0": 2}}, "class_map", "unknown setting"),
    ],
)
def test_bad_configs_name_the_setting(raw, key, message):
    with pytest.raises(ConfigError, match=message) as e:
        get_architecture("translator").configure(raw, SPACE)
    assert e.value.key == key


@pytest.mark.parametrize(
    "space",
    [
        ModelSpace("image", (8, 8, 1), (), 1),  # one class: nothing to map to
        ModelSpace("image", (8, 8, 1), (), 0),
        ModelSpace("tabular", (1,), (Block("v", "numeric", 0, 1),), 4),
    ],
)
def test_only_image_schemas_with_classes_take_a_translator(space):
    with pytest.raises(ConfigError) as e:
        get_architecture("translator").configure(CLASS_MAP, space)
    assert e.value.key == "architecture"


def test_the_cli_refuses_a_class_map_outside_the_schema_naming_the_key(tmp_path):
    images, labels = quadrant_images(50, seed=0)
    np.savez(tmp_path / "train.npz", x=images, y=labels)
    (tmp_path / "schema.json").write_text(json.dumps(schema_to_dict(SCHEMA)))
    output = invoke(
        *("train", "--local", "--data", str(tmp_path / "train.npz"), "--schema", str(tmp_path / "schema.json")),
        *("--arch", "translator", "--epsilon", "1", "--out", str(tmp_path / "t.safetensors")),
        *("--config", json.dumps({"hidden_classes": [0, 9], "public_classes": [2, 3]})),
        ok=False,
    )
    assert "hidden_classes" in output and not (tmp_path / "t.safetensors").exists()


def write_translator(path: Path, config=None, mutate=None, architecture="translator", manifest_config=None) -> Path:
    """A translator artifact of untrained weights; `mutate` edits its tensors, `manifest_config` replaces the config
    its manifest states (the tensors stay those of `config`)."""
    arch = get_architecture("translator")
    config = arch.configure(config or TINY, SPACE)
    params = arch.sampling_params(arch.init(jax.random.key(0), SPACE, config))
    tensors = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
    tensors[CLASS_PRIOR] = np.full(4, 0.25, np.float32)
    if mutate:
        mutate(tensors)
    stated = {**config, **manifest_config} if manifest_config is not None else config
    write_artifact(path, tensors, build_manifest(architecture, stated, SCHEMA, PRIVACY, {}))
    return path


def test_a_well_formed_translator_artifact_loads(tmp_path):
    translator = load_translator(write_translator(tmp_path / "t.safetensors"))
    assert isinstance(translator, Translator) and translator.class_map == {0: 2, 1: 3}
    assert translator.schema == SCHEMA and translator.manifest.architecture == "translator"
    out = translator.translate(quadrant_images(3, seed=0)[0])
    assert set(out.labels) <= {2, 3}  # whatever an untrained classifier sees, only public classes come out


@pytest.mark.parametrize(
    "change,field,message",
    [
        ({"hidden_classes": [0, 7]}, "config.hidden_classes", r"in \[0, 3\]"),  # a class the schema lacks
        ({"public_classes": [2, 4]}, "config.public_classes", r"in \[0, 3\]"),
        ({"hidden_classes": [1, 1]}, "config.hidden_classes", "more than once"),
        ({"public_classes": [1, 3]}, "config.public_classes", "both hidden and public"),
        ({"public_classes": [2, 3, 1]}, "config.public_classes", "2 hidden, 3 public"),
        ({"public_classes": "2,3"}, "config.public_classes", "list"),
    ],
)
def test_hostile_class_maps_are_refused(tmp_path, change, field, message):
    path = write_translator(tmp_path / "t.safetensors", manifest_config=change)
    with pytest.raises(ArtifactError, match=message) as e:
        load_translator(path)
    assert e.value.field == field


def test_a_class_map_left_out_of_the_manifest_is_refused(tmp_path):
    path = write_translator(tmp_path / "t.safetensors")
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    manifest = json.loads(header["__metadata__"]["sgde.manifest"])
    del manifest["config"]["hidden_classes"]
    header["__metadata__"]["sgde.manifest"] = json.dumps(manifest)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    with pytest.raises(ArtifactError, match="required") as e:
        load_translator(path)
    assert e.value.field == "config.hidden_classes"


def first(tensors: dict, prefix: str, part: str) -> str:
    return sorted(k for k in tensors if k.startswith(prefix) and part in k)[0]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda t: t.__setitem__(first(t, "classifier", "kernel"), np.zeros((64, 5), np.float32)), "implies F32"),
        (lambda t: t.__setitem__(first(t, "encoder", "bias"), np.zeros(4, np.float16)), "implies F32"),
        (lambda t: t.__setitem__("classifier/dense2/kernel", np.zeros((4, 4), np.float32)), "unexpected"),
        (lambda t: t.__setitem__("translator/lookup", np.zeros(4, np.float32)), "unexpected"),
        (lambda t: [t.pop(k) for k in [k for k in t if k.startswith("classifier/")]], "missing"),
    ],
)
def test_translator_artifacts_with_wrong_tensors_are_refused(tmp_path, mutate, message):
    with pytest.raises(ArtifactError, match=message):
        load_translator(write_translator(tmp_path / "t.safetensors", mutate=mutate))


def test_an_artifact_of_another_architecture_is_not_a_translator(tmp_path):
    arch = get_architecture("cvae")
    config = arch.configure({"hidden": [8], "latent_dim": 2}, SPACE)
    tensors = {
        k: np.asarray(v, np.float32)
        for k, v in flatten(arch.sampling_params(arch.init(jax.random.key(0), SPACE, config))).items()
    }
    tensors[CLASS_PRIOR] = np.full(4, 0.25, np.float32)
    path = tmp_path / "cvae.safetensors"
    write_artifact(path, tensors, build_manifest("cvae", config, SCHEMA, PRIVACY, {}))
    load_generator(path)  # a sound artifact, only of another architecture
    with pytest.raises(ArtifactError, match="'cvae' model, not a translator") as e:
        load_translator(path)
    assert e.value.field == "architecture"
    # A cvae's tensors (its decoder alone) under a manifest that claims a translator: the strict reader refuses.
    claimed = get_architecture("translator").configure({"hidden": [8], "latent_dim": 2, **CLASS_MAP}, SPACE)
    write_artifact(path, tensors, build_manifest("translator", claimed, SCHEMA, PRIVACY, {}))
    with pytest.raises(ArtifactError, match="missing"):
        load_translator(path)
