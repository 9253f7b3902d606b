"""scatter-merf: the scattering features and their norm bound (the sensitivity argument), the DP-SGD teacher's clipped
gradient, the composed privacy figure, and a tiny run through the product path (strict loader, registry check)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dp_accounting as dpa
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.datasets import load_digits

from libsgde.io.artifact import ArtifactError, load_artifact, write_artifact
from libsgde.io.encoding import encoder_for
from libsgde.io.generator import load_generator
from libsgde.io.privacy import check_privacy_claim
from libsgde.io.training import TrainingCancelled, TrainSpec, train
from libsgde.ml import scattering
from libsgde.ml.architectures import ConfigError, get_architecture
from libsgde.ml.architectures.scatter import block_weights, calibrate, feature_settings, teacher_clipped_sum
from libsgde.ml.privacy.accounting import DEFAULT_DISCRETIZATION
from libsgde.ml.space import ModelSpace
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

TINY = {
    "channels": [8, 4],
    "latent_dim": 4,
    "features": 64,
    "pixel_features": 32,
    "weight_pixel": 0.5,
    "generator_steps": 8,
    "generator_batch": 32,
    "teacher_epochs": 2,
    "teacher_batch": 64,
    "teacher_candidates": 3,
    "teacher_guidance": 0.01,
}


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    keep = np.arange(300)  # a tiny subset: the tests check plumbing and guarantees, not quality
    schema = pb.DataSchema(
        image=pb.ImageSchema(height=8, width=8, channels=1, pixel_max=16, class_names=[str(i) for i in range(10)])
    )
    return schema, encoder_for(schema).encode(d.images[keep], d.target[keep])


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    schema, data = digits
    path = tmp_path_factory.mktemp("scatter") / "model.safetensors"
    spec = TrainSpec("scatter-merf", 3.0, config=TINY, learning_rate=3e-3, seed=2)
    return train(data, schema, spec, path, secret=b"s" * 32)


# -- the features ---------------------------------------------------------------------------------------------------


def test_features_have_kymatios_shape_and_are_deterministic():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((3, 28, 28, 1)), jnp.float32)
    raw = scattering.raw_features(images, 2)
    assert raw.shape == (3, 1, 81, 7, 7)  # 1 + 2*8 + 8*8*2*1/2 channels at 28 / 4 positions
    assert scattering.feature_dim((28, 28, 1), 2) == 81 * 7 * 7
    s = scattering.features(images, 2)
    assert s.shape == (3, 81 * 7 * 7)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(scattering.features(images, 2)))
    again = jax.jit(lambda x: scattering.features(x, 2))(images)
    np.testing.assert_allclose(np.asarray(again), np.asarray(s), rtol=1e-5, atol=1e-7)
    assert scattering.raw_features(jnp.ones((1, 8, 8, 3)), 1).shape == (1, 3, 9, 4, 4)  # each colour apart


EXTREMES = st.sampled_from(["zeros", "ones", "checker", "random"])


@settings(max_examples=30, deadline=None)
@given(
    images=hnp.arrays(np.float32, (2, 12, 12, 1), elements=st.floats(0.0, 1.0, width=32)),
    extreme=EXTREMES,
    j=st.sampled_from([1, 2]),
    mode=st.sampled_from(scattering.NORMALISATIONS),
    tau_fraction=st.sampled_from([1e-9, 1e-3, 0.5]),
)
def test_every_examples_features_have_norm_at_most_one(images, extreme, j, mode, tau_fraction):
    if extreme == "zeros":
        images = np.zeros_like(images)
    elif extreme == "ones":
        images = np.ones_like(images)
    elif extreme == "checker":  # pixels only at the range's ends
        images = (np.indices(images.shape).sum(0) % 2).astype(np.float32)
    tau = scattering.tau_for((12, 12, 1), j, tau_fraction)
    norms = np.linalg.norm(np.asarray(scattering.features(jnp.asarray(images), j, mode, tau), np.float64), axis=1)
    assert np.all(norms <= 1.0), norms
    assert np.all(np.isfinite(norms))


def test_the_release_blocks_weights_keep_each_example_within_norm_one():
    weights = block_weights({"weight_moment": 3.0, "weight_rff": 1.0, "weight_pixel": 2.0, "weight_counts": 0.5})
    assert abs(sum(w * w for w in weights.values()) - 1.0) < 1e-12


# -- the teacher ------------------------------------------------------------------------------------------------------


def test_teachers_clipped_gradient_sum_equals_the_per_example_reference():
    rng = np.random.default_rng(1)
    n, dim, classes, clip = 12, 7, 4, 0.3
    s = jnp.asarray(rng.normal(size=(n, dim)) / 3, jnp.float32)
    labels = jnp.asarray(rng.integers(0, classes, n))
    onehot = jax.nn.one_hot(labels, classes)
    mask = jnp.asarray((rng.random(n) < 0.7).astype(np.float32))
    params = {"kernel": jnp.asarray(rng.normal(size=(dim, classes)), jnp.float32), "bias": jnp.ones(classes)}

    def loss(p, x, y):
        return -jax.nn.log_softmax(x @ p["kernel"] + p["bias"])[y]

    reference = {"kernel": np.zeros((dim, classes)), "bias": np.zeros(classes)}
    ref_norms = []
    for i in range(n):
        g = jax.grad(loss)(params, s[i], labels[i])
        norm = float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in g.values())))
        ref_norms.append(norm)
        factor = float(mask[i]) * min(1.0, clip / norm)
        for k in reference:
            reference[k] += factor * np.asarray(g[k], np.float64)
    summed, norms = teacher_clipped_sum(params, s, onehot, mask, clip)
    np.testing.assert_allclose(np.asarray(norms), ref_norms, rtol=1e-5)
    assert any(r > clip for r in ref_norms)  # the clip was exercised
    for k in reference:
        np.testing.assert_allclose(np.asarray(summed[k]), reference[k], rtol=1e-4, atol=1e-6)


# -- privacy --------------------------------------------------------------------------------------------------------


def test_composed_figure_is_dp_accountings_composition_of_the_two_releases(trained, digits):
    privacy, config = trained.privacy, trained.manifest.config
    (teacher,) = privacy.components
    assert (teacher.purpose, teacher.kind, teacher.clip_norm) == ("teacher", "poisson-gaussian", 1.0)
    n = len(digits[1])
    assert privacy.steps == 1 and privacy.sampling_rate == 1.0 and privacy.dataset_size == n
    # The schedule is a public function of the config and N.
    assert teacher.sampling_rate == pytest.approx(config["teacher_batch"] / n)
    assert teacher.steps == round(config["teacher_epochs"] * n / config["teacher_batch"])
    # Recomputed here from the events, built by hand.
    event = dpa.ComposedDpEvent(
        [
            dpa.GaussianDpEvent(privacy.noise_multiplier),
            dpa.SelfComposedDpEvent(
                dpa.PoissonSampledDpEvent(teacher.sampling_rate, dpa.GaussianDpEvent(teacher.noise_multiplier)),
                teacher.steps,
            ),
        ]
    )
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=DEFAULT_DISCRETIZATION)
    rdp = rdp_privacy_accountant.RdpAccountant()
    assert privacy.epsilon == pytest.approx(pld.compose(event).get_epsilon(privacy.delta), rel=1e-9)
    assert privacy.rdp_epsilon == pytest.approx(rdp.compose(event).get_epsilon(privacy.delta), rel=1e-9)
    assert 2.97 <= privacy.epsilon <= 3.0  # calibrated to the target, never above it
    # The release alone has the public share of epsilon; the teacher takes the rest of the composition.
    alone = pld_privacy_accountant.PLDAccountant(value_discretization_interval=DEFAULT_DISCRETIZATION)
    assert alone.compose(dpa.GaussianDpEvent(privacy.noise_multiplier)).get_epsilon(privacy.delta) == pytest.approx(
        3.0 * (1 - config["teacher_share"]), rel=1e-2
    )


def test_without_a_teacher_nothing_else_is_released():
    space = ModelSpace("image", (8, 8, 1), num_classes=10)
    arch = get_architecture("scatter-merf")
    config = arch.configure({"teacher_share": 0}, space)
    assert arch.mechanism.required_components(config) == frozenset()
    assert calibrate(config, 1000, 2.0, 1e-5)[1] == ()
    assert arch.mechanism.required_components(arch.configure({}, space)) == {"teacher"}
    assert "teacher/teacher/kernel" not in arch.tensor_shapes(space, config)
    unlabelled = ModelSpace("image", (8, 8, 1))
    with pytest.raises(ConfigError) as info:
        arch.configure({}, unlabelled)
    assert info.value.key == "teacher_share"
    arch.configure({"teacher_share": 0}, unlabelled)


def test_the_registry_recomputes_the_claim_and_refuses_a_report_without_the_teacher(trained):
    check_privacy_claim(trained.manifest)
    manifest = trained.manifest
    dropped = pb.PrivacyReport()
    dropped.CopyFrom(manifest.privacy)
    del dropped.components[:]
    lying = dataclasses.replace(manifest, privacy=dropped)
    with pytest.raises(ArtifactError) as info:
        check_privacy_claim(lying)
    assert info.value.field == "privacy.components"


# -- the artifact and sampling ----------------------------------------------------------------------------------------


def test_a_trained_model_loads_strictly_and_samples_the_requested_labels_reproducibly(trained):
    generator = load_generator(trained.path)
    assert generator.params["teacher"]["kernel"].shape == (scattering.feature_dim((8, 8, 1), 1), 10)
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3], np.int32)
    a = generator.sample_model_space(labels, seed=7)
    b = generator.sample_model_space(labels, seed=7)
    c = generator.sample_model_space(labels, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == (10, 8, 8, 1) and a.min() >= 0.0 and a.max() <= 1.0
    values, out_labels = generator.sample(10, seed=7, labels=labels)
    np.testing.assert_array_equal(out_labels, labels)
    # Row r depends on its own key and label alone: the tail of a request, asked for on its own, is the same.
    tail = generator.sample_model_space(labels[4:], seed=7, first_row=4)
    np.testing.assert_allclose(tail, a[4:], atol=1e-5)
    prior = generator.class_prior
    assert prior.shape == (10,) and abs(prior.sum() - 1.0) < 1e-5


def test_the_teacher_filters_candidates_towards_the_requested_label(trained):
    generator = load_generator(trained.path)
    arch, space, config = generator.architecture, generator.space, generator.config
    keys = jax.random.split(jax.random.key(0), 200)
    labels = jnp.asarray(np.arange(200) % 10, jnp.int32)
    kernel, bias = generator.params["teacher"]["kernel"], generator.params["teacher"]["bias"]

    def agreement(cfg):
        x = arch.generate(generator.params, keys, labels, space, cfg)
        s = scattering.features(x, *feature_settings(space, config))
        return float(np.mean(np.asarray(jnp.argmax(s @ kernel + bias, 1) == labels)))

    one = agreement({**config, "teacher_candidates": 1})
    many = agreement({**config, "teacher_candidates": 8})
    assert many >= one  # the first candidate is among the eight; agreement can only grow


def test_hostile_artifacts_are_refused(trained, tmp_path):
    header, tensors = load_artifact(trained.path)
    wrong = dict(tensors)
    wrong["teacher/kernel"] = np.zeros((5, 10), np.float32)
    extra = {**tensors, "teacher/extra": np.zeros(3, np.float32)}
    missing = {k: v for k, v in tensors.items() if not k.startswith("teacher/")}
    for name, bad in (("wrong", wrong), ("extra", extra), ("missing", missing)):
        path = tmp_path / f"{name}.safetensors"
        write_artifact(path, bad, header.manifest)
        with pytest.raises(ArtifactError):
            load_generator(path)


def test_tensor_names_are_the_generator_and_the_teacher(trained):
    _, tensors = load_artifact(Path(trained.path))
    assert {k.split("/")[0] for k in tensors} == {"generator", "teacher", "class_prior"}
    assert tensors["teacher/kernel"].shape == (scattering.feature_dim((8, 8, 1), 1), 10)


def test_a_stopped_run_resumes_without_releasing_again_to_the_same_artifact(digits, trained, tmp_path):
    schema, data = digits
    spec = TrainSpec("scatter-merf", 3.0, config=TINY, learning_rate=3e-3, seed=2)
    stops = iter([False] * 3 + [True])
    with pytest.raises(TrainingCancelled):
        train(
            data,
            schema,
            spec,
            tmp_path / "a.safetensors",
            secret=b"s" * 32,
            checkpoint_dir=tmp_path / "ckpt",
            should_stop=lambda: next(stops, False),
        )
    events = []
    # Another secret is ignored: the release and the teacher come from the checkpoint, not from a second release.
    resumed = train(
        data,
        schema,
        spec,
        tmp_path / "b.safetensors",
        secret=b"x" * 32,
        checkpoint_dir=tmp_path / "ckpt",
        on_progress=events.append,
    )
    assert any(e.message.startswith("resumed from step 4") for e in events)
    assert not any(e.message.startswith("released") for e in events)
    assert resumed.sha256 == trained.sha256
