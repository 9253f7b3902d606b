"""The marginal-based generators (mst, aim, aim-label): estimation recovers a tiny known table's marginals at a huge
epsilon, sampling is row-keyed with exact class counts, the artifact passes the strict loader and the registry's
recomputation of its epsilon, the composition is dp-accounting's, and hostile manifests are refused."""

from __future__ import annotations

import json

import dp_accounting as dpa
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from libsgde.io.artifact import ArtifactError, read_header
from libsgde.io.encoding import encoder_for
from libsgde.io.generator import check_tensors, load_generator
from libsgde.io.privacy import check_privacy_claim
from libsgde.io.training import TrainSpec, train
from libsgde.ml.architectures import get_architecture
from libsgde.ml.privacy import marginals as mg
from libsgde.wire.convert import privacy_from_proto
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

SECRET = b"test secret, never use a fixed one in production"
FAST = {"iters": 100, "final_iters": 300, "bins": 4}
CONFIGS = {"mst": FAST, "aim": {**FAST, "rounds": 3}, "aim-label": {**FAST, "rounds": 3}}


def schema() -> pb.DataSchema:
    return pb.DataSchema(
        tabular=pb.TabularSchema(
            columns=[
                pb.Column(name="x", type=pb.COLUMN_TYPE_CONTINUOUS, lower=0.0, upper=4.0),
                pb.Column(name="colour", type=pb.COLUMN_TYPE_CATEGORICAL, categories=["red", "green", "blue"]),
                pb.Column(name="y", type=pb.COLUMN_TYPE_CATEGORICAL, categories=["no", "yes"]),
            ],
            label_column="y",
        )
    )


def table(n: int = 600, seed: int = 0) -> dict[str, list]:
    """A known dependence: colour follows the label, x's bin follows the colour; 75/25 labels."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    colour = np.where(rng.random(n) < 0.8, y + 1, 0)
    x = np.clip(colour + rng.random(n), 0, 4)
    return {
        "x": x.tolist(),
        "colour": [["red", "green", "blue"][c] for c in colour],
        "y": [["no", "yes"][v] for v in y],
    }


@pytest.fixture(scope="module")
def data():
    return encoder_for(schema()).encode(table())


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Each architecture trained once at epsilon 2 (a module's worth of tests reads the artifacts)."""
    folder = tmp_path_factory.mktemp("marginals")
    out = {}
    for arch, config in CONFIGS.items():
        spec = TrainSpec(arch, 2.0, config=dict(config), seed=3)
        out[arch] = train(data, schema(), spec, folder / f"{arch}.safetensors", secret=SECRET)
    return out


def test_huge_epsilon_recovers_the_marginals_of_a_tiny_table(data):
    space = data.space
    sizes = mg.attribute_sizes(space, 4)
    values = mg.discretise(data.x, data.labels, space, 4)
    key = jax.random.key(0)
    measured = [mg.measure(jax.random.fold_in(key, a), values, sizes, (a,), 1e-3) for a in range(3)]
    measured += [mg.measure(jax.random.fold_in(key, 9), values, sizes, p, 1e-3) for p in ((0, 1), (1, 2))]
    model = mg.estimate(sizes, measured, 3000)
    for clique in ((0,), (1,), (2,), (0, 1), (1, 2)):
        truth = mg.marginal(values, sizes, clique)
        estimated = mg.model_marginals(model, [clique], jax.random.key(1))[clique]
        assert np.abs(estimated - truth).max() <= 0.01 * len(values), (clique, estimated, truth)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_huge_epsilon_training_recovers_the_pairs_it_measured(arch, data, tmp_path):
    """Through train(): at epsilon 1000 (the largest a spec takes) the sampled rows' label-colour table and x's
    bins are the data's, to sampling error."""
    spec = TrainSpec(arch, 1000.0, config={**CONFIGS[arch], "final_iters": 2000}, seed=1)
    result = train(data, schema(), spec, tmp_path / "g.safetensors", secret=SECRET)
    gen = load_generator(result.path)
    labels = np.asarray(data.labels)
    x = gen.sample_model_space(labels, seed=5)
    space = data.space
    real = mg.discretise(data.x, labels, space, 4)
    fake = mg.discretise(x, labels, space, 4)
    sizes = mg.attribute_sizes(space, 4)
    for clique in ((1, 2), (0,)):
        gap = np.abs(mg.marginal(fake, sizes, clique) - mg.marginal(real, sizes, clique))
        assert gap.max() <= 0.1 * len(labels), (clique, gap)
    # The prior is the model's label marginal: at this epsilon the data's 75/25.
    np.testing.assert_allclose(gen.class_prior, np.bincount(labels) / len(labels), atol=0.01)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_sampling_is_row_keyed_with_exact_class_counts(arch, trained):
    gen = load_generator(trained[arch].path)
    labels = np.array([0] * 30 + [1] * 10, np.int32)
    a = gen.sample_model_space(labels, seed=7)
    np.testing.assert_array_equal(a, gen.sample_model_space(labels, seed=7))
    assert not np.array_equal(a, gen.sample_model_space(labels, seed=8))
    # Row r depends on its key and label alone: the rows 10.. of a request are those of a request starting there.
    np.testing.assert_array_equal(a[10:], gen.sample_model_space(labels[10:], seed=7, first_row=10))
    values, y = gen.sample(40, seed=7, labels=labels)
    assert np.bincount(y).tolist() == [30, 10]
    assert set(values["colour"]) <= {"red", "green", "blue"}
    assert all(0.0 <= v <= 4.0 for v in values["x"])


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_the_artifact_passes_the_strict_loader_and_the_registrys_check(arch, trained):
    result = trained[arch]
    header = read_header(result.path, check_tensors=check_tensors)
    check_privacy_claim(header.manifest)
    config = header.manifest.config
    assert config["cliques"] and all(c == sorted(c) for c in config["cliques"])
    report = privacy_from_proto(result.privacy)
    assert report.accountant == "rdp" and [c.purpose for c in report.components] == ["selection"]
    assert report.epsilon <= 2.0 and report.epsilon > 1.9  # calibrated to the target, not far below it


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_the_epsilon_is_dp_accountings_composition_recomputed_here(arch, trained):
    """Gaussian measurements (sensitivity 1, m of them) and exponential selections as (e^2 / 8)-zCDP, composed by
    dp-accounting's RDP accountant independently of the library's code."""
    p = privacy_from_proto(trained[arch].privacy)
    (selection,) = p.components
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dpa.GaussianDpEvent(p.noise_multiplier), p.steps)
    accountant.compose(dpa.ZCDpEvent(selection.pure_epsilon**2 / 8), selection.steps)
    assert p.epsilon == pytest.approx(accountant.get_epsilon(p.delta), rel=1e-9)
    d = 3  # attributes: x, colour, the label
    m, t = (2 * d - 1, d - 1) if arch == "mst" else (d + 3, 3)
    assert (p.steps, selection.steps, p.sampling_rate) == (m, t, 1.0)


def _manifest_with(result, **config_changes):
    header = read_header(result.path)
    raw = json.loads(header.manifest.to_json())
    raw["config"].update(config_changes)
    return raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cliques": [[0, 7]]}, "ascending attribute indices"),  # an attribute out of range
        ({"cliques": [[1, 0]]}, "ascending"),
        ({"cliques": [[0, 1], [0, 1], [2]]}, "twice"),
        ({"cliques": [[0, 1]]}, "cover every attribute"),
        ({"cliques": []}, "empty"),
        ({"bins": 256, "max_cells": 1000, "cliques": [[0, 1, 2]]}, "over max_cells"),  # a table over its cap
        ({"bins": 10**6}, "config.bins"),  # a huge domain
        ({"max_cells": 10**9}, "config.max_cells"),
        ({"cliques": "all"}, "list"),
    ],
)
def test_hostile_manifests_are_refused(trained, changes, message):
    from libsgde.io.artifact import TensorInfo, _manifest_from_dict

    result = trained["mst"]
    header = read_header(result.path)
    manifest = _manifest_from_dict(_manifest_with(result, **changes))
    with pytest.raises(ArtifactError) as info:
        check_tensors(manifest, header.tensors)
    assert message in str(info.value)
    extra = {**header.tensors, "smuggled": TensorInfo("smuggled", "F32", (1,), 0, 4)}
    with pytest.raises(ArtifactError, match="unexpected"):
        check_tensors(header.manifest, extra)


def test_architectures_model_tables_only_and_refuse_a_preset_structure(data, tmp_path):
    image = pb.DataSchema(image=pb.ImageSchema(height=2, width=2, channels=1, pixel_max=1, class_names=["a", "b"]))
    from libsgde.io.encoding import model_space
    from libsgde.ml.architectures import ConfigError

    with pytest.raises(ConfigError):
        get_architecture("aim").configure({}, model_space(image))
    from libsgde.io.training import SpecError

    with pytest.raises(SpecError, match="cliques"):
        train(data, schema(), TrainSpec("mst", 1.0, config={**FAST, "cliques": [[0, 1, 2]]}), tmp_path / "x")


def test_the_same_secret_and_seed_give_the_same_artifact(data, trained, tmp_path):
    again = train(data, schema(), TrainSpec("mst", 2.0, config=dict(FAST), seed=3), tmp_path / "m", secret=SECRET)
    assert again.sha256 == trained["mst"].sha256
    other = train(data, schema(), TrainSpec("mst", 2.0, config=dict(FAST), seed=3), tmp_path / "o", secret=b"other")
    assert other.sha256 != trained["mst"].sha256


def test_an_unconditional_table_trains_and_samples(tmp_path):
    """No label column: the model samples every attribute, and the prior is the single class."""
    unlabelled = pb.DataSchema(tabular=pb.TabularSchema(columns=list(schema().tabular.columns)[:2]))
    rows = table()
    encoded = encoder_for(unlabelled).encode({"x": rows["x"], "colour": rows["colour"]})
    spec = TrainSpec("mst", 2.0, config=dict(FAST), seed=1)
    result = train(encoded, unlabelled, spec, tmp_path / "u.safetensors", secret=SECRET)
    gen = load_generator(result.path)
    values, labels = gen.sample(50, seed=2)
    assert labels is None and len(values["x"]) == 50 and gen.class_prior.tolist() == [1.0]


def test_a_schema_of_too_many_attributes_is_refused():
    """The junction tree configure builds for a manifest's cliques grows with the attributes: they are capped."""
    from libsgde.io.encoding import model_space
    from libsgde.ml.architectures import ConfigError

    columns = [pb.Column(name=f"c{i}", type=pb.COLUMN_TYPE_CONTINUOUS, lower=0.0, upper=1.0) for i in range(70)]
    wide = pb.DataSchema(tabular=pb.TabularSchema(columns=columns))
    with pytest.raises(ConfigError, match="2 to 64 attributes"):
        get_architecture("mst").configure({}, model_space(wide))


def test_label_weighted_workload_weights_the_label(data):
    work = mg.workload(3, [2, 3], 2, 4.0)
    assert work[(0, 2)] == 4.0 and work[(0, 1)] == 1.0 and work[(0, 1, 2)] == 4.0
    weights = mg.candidate_weights(work)
    assert weights[(2,)] > weights[(0,)]  # the label overlaps the heavy cliques
    assert jnp.all(jnp.asarray(list(weights.values())) > 0)


def test_sampled_model_marginals_match_exact_inference(data):
    """The Monte Carlo marginals AIM and MST score candidates with are the model's, to sampling error."""
    from mbi import marginal_oracles

    sizes = mg.attribute_sizes(data.space, 4)
    values = mg.discretise(data.x, data.labels, data.space, 4)
    key = jax.random.key(0)
    measured = [mg.measure(jax.random.fold_in(key, a), values, sizes, (a,), 1.0) for a in range(3)]
    measured += [
        mg.measure(jax.random.fold_in(key, 9 + i), values, sizes, p, 1.0) for i, p in enumerate([(0, 1), (1, 2)])
    ]
    model = mg.estimate(sizes, measured, 500)
    sampled = mg.model_marginals(model, [(0, 2), (0, 1, 2)], jax.random.key(3))
    for clique, counts in sampled.items():
        exact = np.asarray(
            marginal_oracles.variable_elimination(model.potentials, clique, float(model.total)).datavector()
        )
        assert np.abs(counts - exact).max() <= 0.02 * float(model.total), clique
