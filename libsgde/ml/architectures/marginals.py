"""Marginal-based tabular generators on Private-PGM (`mbi`): MST, AIM, and AIM with a label-weighted workload.

Each measures noisy marginals of the discretised table (libsgde.ml.privacy.marginals: numeric columns in `bins`
equal bins of their public schema bounds, categorical columns and the label as their index), estimates a graphical
model that explains them (mirror descent), and samples rows from it, conditioned on the requested label.

- `mst` (McKenna et al. 2021): every one-way marginal, then a spanning tree of pairs chosen by the exponential
  mechanism (Kruskal on noisy pairwise errors), and those pairs measured. Fast: 2 d - 1 measurements.
- `aim` (McKenna et al. 2022): every one-way marginal, then `rounds` rounds, each choosing by the exponential
  mechanism the candidate marginal (of the workload's downward closure, within the size caps) that the current
  model gets most wrong, weighted by its overlap with the workload (all 3-way marginals), measuring it and
  re-estimating the model.
- `aim-label`: AIM whose workload is every 2- and 3-way marginal, with weight `label_weight` on those that hold the
  label. A synthetic table is mostly used to train a classifier of the label, which needs the label's joint
  distribution with the features; plain AIM spreads its rounds over all marginals alike. A separate name (not only
  an option of `aim`) so that a federation's policy, the benchmarks and a manifest say which one ran.

Privacy: a FIXED schedule, set before the data is read, so that the registry can recompute it from the manifest:
the number of measurements m (d one-way marginals, plus `rounds` for AIM or the spanning tree's d - c pairs for MST,
c the number of components of the graph of pairs within `max_cells`: a function of the schema), each a Gaussian
mechanism of noise multiplier sigma (sensitivity 1: the report's main event, m steps), and the number of selections
T, each an exponential mechanism of epsilon e_sel (the report's "selection" component, accounted as (e_sel^2 / 8)-
zCDP by the RDP accountant). `selection_share` is the share of the zCDP budget that goes to selection, which fixes
e_sel = sqrt(4 m share / ((1 - share) T)) / sigma; sigma is then calibrated so that the composition meets the target
epsilon. AIM's budget annealing (halving sigma when the model stops improving, ending when the budget runs out) is
dropped: it makes the number of rounds and their noise depend on the data, which a manifest cannot recompute.

The artifact holds the model as float32 arrays: one log-potential table per clique (`log_potentials/i`, axes in the
clique's ascending attribute order) and the estimated total; the cliques are the manifest config's `cliques`,
written by training and checked by `configure` (indices in range, sizes within the caps, the junction tree too)
before any tensor is read. The class prior is the model's label marginal: post-processing of the measurements.
Sampling (mbi's belief propagation on the potentials, then ancestral sampling in junction-tree order) needs no
private data.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any, ClassVar

import dp_accounting as dpa
import jax
import networkx as nx
import numpy as np

from libsgde.domain.privacy import EXPONENTIAL, PrivacyComponent
from libsgde.domain.specs import TrainSpec
from libsgde.errors import FieldError
from libsgde.ml.architectures.base import Architecture, ConfigError, Option
from libsgde.ml.mechanisms import Mechanism
from libsgde.ml.privacy import accounting
from libsgde.ml.privacy import marginals as mg
from libsgde.ml.pytree import Params
from libsgde.ml.space import ModelSpace
from libsgde.ml.train import Run, TrainingCancelled, TrainOutcome

if TYPE_CHECKING:
    from dp_accounting import DpEvent

SELECTION = "selection"  # the purpose of the exponential-mechanism component
MAX_CLIQUES = 512
# Attributes (model-space blocks and the label) a model may have: the junction tree that configure builds for a
# manifest's cliques costs about attributes^2 x cliques steps, and the registry builds it for every manifest it checks.
MAX_ATTRIBUTES = 64
MAX_CLIQUE_ATTRIBUTES = 8
MAX_CELLS = 4_000_000  # the largest a `max_cells` or `max_model_cells` setting may be (float32: 16 MB)


class CliquesOption(Option):
    """The model's cliques: a list of at most MAX_CLIQUES strictly ascending lists of attribute indices in
    [0, attributes); empty before training (training writes them)."""

    def __init__(self, attributes: int):
        super().__init__([], 0, attributes - 1)

    def check(self, key: str, value: Any) -> Any:
        if not isinstance(value, list) or len(value) > MAX_CLIQUES:
            raise ConfigError(key, f"must be a list of at most {MAX_CLIQUES} cliques (got {_short(value)})")
        out = []
        for clique in value:
            if (
                not isinstance(clique, list)
                or not 1 <= len(clique) <= MAX_CLIQUE_ATTRIBUTES
                or not all(_is_index(a, int(self.high)) for a in clique)
                or any(a >= b for a, b in itertools.pairwise(clique))
            ):
                raise ConfigError(
                    key,
                    f"each clique must be 1 to {MAX_CLIQUE_ATTRIBUTES} ascending attribute indices in "
                    f"[0, {int(self.high)}] (got {_short(clique)})",
                )
            out.append([int(a) for a in clique])
        if len({tuple(c) for c in out}) != len(out):
            raise ConfigError(key, "lists a clique twice")
        return out


def _is_index(a: Any, high: int) -> bool:
    return not isinstance(a, bool) and isinstance(a, int) and 0 <= a <= high


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


class MarginalMechanism(Mechanism):
    """Gaussian measurements of marginals (the main event: `steps` of them, noise multiplier sigma) composed with
    exponential-mechanism selections (the "selection" component). Subclasses fix the schedule and the selection."""

    loss_reveals_data = False  # what it reports is the model's fit to the noisy measurements only

    def event(self, noise_multiplier: float, sampling_rate: float = 1.0, steps: int = 1) -> DpEvent:
        if sampling_rate != 1.0:
            raise FieldError("privacy", "marginal measurements are of the whole data (sampling rate 1)")
        one = accounting.gaussian_event(noise_multiplier)
        if steps < 1:
            raise accounting.PrivacyError("steps", "must be at least 1")
        return one if steps == 1 else dpa.SelfComposedDpEvent(one, steps)

    def required_components(self, config: dict[str, Any]) -> frozenset[str]:
        return frozenset({SELECTION})

    def check(self, spec: TrainSpec, dataset_size: int) -> None:
        if spec.config and spec.config.get("cliques"):
            raise FieldError("spec.config.cliques", "is chosen by training (written into the artifact); leave it out")

    def schedule(self, space: ModelSpace, config: dict[str, Any]) -> tuple[int, int]:
        """(measurements, selections) of a run: functions of the schema and the config alone."""
        raise NotImplementedError

    def calibrate(
        self, space: ModelSpace, config: dict[str, Any], target_epsilon: float, delta: float
    ) -> tuple[float, float, int, int]:
        """(sigma, selection epsilon, measurements, selections) meeting the target for the whole composition."""
        m, t = self.schedule(space, config)
        share = config["selection_share"]
        ratio = math.sqrt(4 * m * share / ((1 - share) * t))

        def event(sigma: float) -> DpEvent:
            return accounting.composed_event(self.event(sigma, 1.0, m), (_selection(ratio / sigma, t),))

        sigma = accounting.calibrate_event(event, target_epsilon, delta)
        return sigma, ratio / sigma, m, t

    def train(self, run: Run) -> TrainOutcome:
        spec, space, config = run.spec, run.space, run.spec.config
        assert config is not None  # filled in by check_spec
        sigma, eps_sel, m, t = self.calibrate(space, config, spec.target_epsilon, spec.delta)
        components = (_selection(eps_sel, t),)
        privacy = self.report(sigma, 1.0, m, 0.0, len(run), spec.delta, components)
        bins = config["bins"]
        sizes = mg.attribute_sizes(space, bins)
        data = mg.discretise(run.x, run.labels, space, bins)
        fit = _Fit(run, data, sizes, sigma, eps_sel, m + t, privacy.epsilon)
        run.report(
            0,
            m + t,
            0,
            0.0,
            0.0,
            0,
            f"{m} Gaussian measurements of noise multiplier {sigma:.4g} and {t} selections of epsilon "
            f"{eps_sel:.4g}: epsilon {privacy.epsilon:.4g} at delta {spec.delta:.3g} ({privacy.accountant})",
            force=True,
        )
        for a in range(len(sizes)):
            fit.measure((a,))
        fit.estimate(config["iters"])
        self.select_and_measure(fit, space, config, t)
        model = fit.estimate(config["final_iters"])
        assert fit.measured == m and fit.selected == t, (fit.measured, fit.selected)  # the schedule, kept
        potentials = mg.log_potentials(model)
        label = mg.label_attribute(space)
        if label is not None:
            counts = np.maximum(np.asarray(model.project((label,)).datavector(), np.float64), 0.0)
            prior = counts / counts.sum() if counts.sum() > 0 else np.full(len(counts), 1.0 / len(counts))
        else:
            prior = np.ones(1)
        params = {
            "log_potentials": {str(i): p for i, p in enumerate(potentials.values())},
            "total": np.asarray([float(model.total)], np.float32),
        }
        trained = {**config, "cliques": [list(c) for c in potentials]}
        training = {
            "measurements": m,
            "selections": t,
            "selection_epsilon": eps_sel,
            "seed": spec.seed,
            "estimator": "mirror descent (mbi)",
        }
        return TrainOutcome(params, prior, privacy, training, config=trained)

    def select_and_measure(self, fit: _Fit, space: ModelSpace, config: dict[str, Any], selections: int) -> None:
        raise NotImplementedError


def _selection(pure_epsilon: float, steps: int) -> PrivacyComponent:
    return PrivacyComponent(SELECTION, EXPONENTIAL, pure_epsilon=pure_epsilon, steps=steps)


class _Fit:
    """A run's measurements and model as they grow; every measurement and selection draws its noise from its own
    fold of the run's secret mechanism key."""

    def __init__(
        self, run: Run, data: np.ndarray, sizes: tuple[int, ...], sigma: float, eps_sel: float, total: int, eps: float
    ):
        self.run, self.data, self.sizes, self.sigma, self.eps_sel = run, data, sizes, sigma, eps_sel
        self.total, self.epsilon = total, eps
        self.measure_key, self.select_key = jax.random.split(run.mechanism_key)
        self.measurements: list[Any] = []
        self.model: Any = None
        self.measured = self.selected = 0

    def measure(self, clique: mg.Clique) -> None:
        self.measurements.append(
            mg.measure(jax.random.fold_in(self.measure_key, self.measured), self.data, self.sizes, clique, self.sigma)
        )
        self.measured += 1

    def next_selection_key(self) -> jax.Array:
        if self.run.should_stop():  # nothing is released before the end, so a stopped run has spent nothing
            raise TrainingCancelled(f"stopped after {self.selected} selections")
        key = jax.random.fold_in(self.select_key, self.selected)
        self.selected += 1
        return key

    def estimate_key(self) -> jax.Array:
        """The key of the model's sampled marginals before a selection: public (the seed's), as what it draws is
        post-processing of the measurements."""
        return jax.random.fold_in(self.run.init_key, self.selected)

    def estimate(self, iters: int) -> Any:
        self.model = mg.estimate(self.sizes, self.measurements, iters, warm_start=self.model)
        done = self.measured + self.selected
        self.run.report(done, self.total, 0, 0.0, self.epsilon, 0, force=True)
        return self.model


class MSTMechanism(MarginalMechanism):
    name = "mst"

    def schedule(self, space: ModelSpace, config: dict[str, Any]) -> tuple[int, int]:
        sizes = mg.attribute_sizes(space, config["bins"])
        tree_edges = len(sizes) - nx.number_connected_components(_allowed_pairs(sizes, config["max_cells"]))
        return len(sizes) + tree_edges, tree_edges

    def select_and_measure(self, fit: _Fit, space: ModelSpace, config: dict[str, Any], selections: int) -> None:
        allowed = sorted(tuple(sorted(e)) for e in _allowed_pairs(fit.sizes, config["max_cells"]).edges)
        pairs = mg.mst_select(
            fit.next_selection_key, fit.estimate_key(), fit.data, fit.sizes, fit.model, fit.eps_sel, allowed
        )
        for pair in pairs:
            fit.measure(pair)


def _allowed_pairs(sizes: tuple[int, ...], max_cells: int) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(range(len(sizes)))
    graph.add_edges_from(p for p in itertools.combinations(range(len(sizes)), 2) if mg.cells(sizes, p) <= max_cells)
    return graph


class AIMMechanism(MarginalMechanism):
    name = "aim"

    def schedule(self, space: ModelSpace, config: dict[str, Any]) -> tuple[int, int]:
        d = len(mg.attribute_sizes(space, config["bins"]))
        return d + config["rounds"], config["rounds"]

    def select_and_measure(self, fit: _Fit, space: ModelSpace, config: dict[str, Any], selections: int) -> None:
        sizes = fit.sizes
        work = mg.workload(len(sizes), config["ways"], mg.label_attribute(space), config["label_weight"])
        weights = {r: w for r, w in mg.candidate_weights(work).items() if mg.cells(sizes, r) <= config["max_cells"]}
        cliques: list[mg.Clique] = [(a,) for a in range(len(sizes))]
        for _ in range(selections):
            # Candidates that keep the model within its cap: a function of the cliques chosen so far (DP outputs).
            fits = {
                r: w
                for r, w in weights.items()
                if r in cliques or mg.model_cells(sizes, [*cliques, r]) <= config["max_model_cells"]
            }
            chosen = mg.aim_select(
                fit.next_selection_key(), fit.estimate_key(), fit.data, sizes, fit.model, fits, fit.eps_sel, fit.sigma
            )
            fit.measure(chosen)
            if chosen not in cliques:
                cliques.append(chosen)
            fit.estimate(config["iters"])


MST_MECHANISM = MSTMechanism()
AIM_MECHANISM = AIMMechanism()


class MarginalArchitecture(Architecture):
    """A generator whose parameters are a graphical model's log-potentials (module docstring)."""

    kinds = ("tabular",)
    sampling_scopes = ("log_potentials", "total")
    defaults: ClassVar[dict[str, Any]] = {}

    def options(self, space: ModelSpace) -> dict[str, Option]:
        attributes = len(space.blocks) + (1 if space.num_classes else 0)
        d = self.defaults
        options = {
            "bins": Option(16, 2, 256),
            "iters": Option(d.get("iters", 200), 1, 100_000),
            "final_iters": Option(d.get("final_iters", 1000), 1, 100_000),
            "selection_share": Option(d["selection_share"], 0.01, 0.99),
            "max_cells": Option(d.get("max_cells", 20_000), 1, MAX_CELLS),
            "max_model_cells": Option(d.get("max_model_cells", 500_000), 1, MAX_CELLS),
            "cliques": CliquesOption(max(attributes, 1)),
        }
        if "rounds" in d:
            options["rounds"] = Option(d["rounds"], 1, 1000)
            options["ways"] = Option(d["ways"], 1, 3)
            options["label_weight"] = Option(d["label_weight"], 1.0, 1000.0)
        return options

    def configure(self, raw: dict[str, Any] | None, space: ModelSpace) -> dict[str, Any]:
        """Also checks the settings against each other: every attribute fits `max_cells` and their one-way model
        `max_model_cells`, and the cliques (when given) with their junction tree within the caps, before anything
        sized by them is allocated."""
        config = super().configure(raw, space)
        sizes = mg.attribute_sizes(space, config["bins"])
        if not 2 <= len(sizes) <= MAX_ATTRIBUTES:
            raise ConfigError(
                "architecture",
                f"{self.name} models 2 to {MAX_ATTRIBUTES} attributes (the label, and one per column; two for a "
                "numeric column with point masses or missing values: its value and its mode), not "
                f"{len(sizes)}",
            )
        if max(sizes) > config["max_cells"]:
            raise ConfigError("max_cells", f"an attribute has {max(sizes)} values, over max_cells")
        if sum(sizes) > config["max_model_cells"]:
            raise ConfigError("max_model_cells", f"the one-way marginals alone hold {sum(sizes)} cells")
        assert isinstance(self.mechanism, MarginalMechanism)
        if self.mechanism.schedule(space, config)[1] < 1:
            raise ConfigError("max_cells", "no pair of attributes fits in max_cells: nothing to select")
        cliques = [tuple(c) for c in config["cliques"]]
        big = [c for c in cliques if mg.cells(sizes, c) > config["max_cells"]]
        if big:
            raise ConfigError("cliques", f"clique {list(big[0])} has {mg.cells(sizes, big[0])} cells, over max_cells")
        if cliques:
            if {a for c in cliques for a in c} != set(range(len(sizes))):
                raise ConfigError("cliques", "must cover every attribute")
            total = mg.model_cells(sizes, cliques)
            if total > config["max_model_cells"]:
                raise ConfigError("cliques", f"their junction tree holds {total} cells, over max_model_cells")
        return config

    def init(self, key: jax.Array, space: ModelSpace, config: dict[str, Any]) -> Params:
        raise TypeError(f"{self.name} is estimated from measurements, not initialised and trained by gradients")

    def sampling_params(self, params: Params) -> dict[str, Params]:
        return {scope: params[scope] for scope in self.sampling_scopes}

    def tensor_shapes(self, space: ModelSpace, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        if not config["cliques"]:
            raise ConfigError("cliques", "empty: a trained model lists the cliques of its potentials")
        sizes = mg.attribute_sizes(space, config["bins"])
        shapes = {f"log_potentials/{i}": tuple(sizes[a] for a in c) for i, c in enumerate(config["cliques"])}
        return {**shapes, "total": (1,)}

    def generate(
        self, params: Params, keys: jax.Array, labels: jax.Array, space: ModelSpace, config: dict[str, Any]
    ) -> jax.Array:
        bins = config["bins"]
        sizes = mg.attribute_sizes(space, bins)
        cliques = [tuple(c) for c in config["cliques"]]
        label = mg.label_attribute(space)
        plan = mg.sampling_plan(sizes, cliques, label)
        potentials = [params["log_potentials"][str(i)] for i in range(len(cliques))]
        logits = mg.conditional_logits(sizes, cliques, potentials, plan)
        draw_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        bin_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        values = mg.sample_attributes(sizes, plan, logits, draw_keys, labels, label)
        return mg.undiscretise(values, space, bins, bin_keys)


class MST(MarginalArchitecture):
    name = "mst"
    mechanism = MST_MECHANISM
    defaults: ClassVar[dict[str, Any]] = {"selection_share": 1 / 3}  # MST's split: a third for selection


class AIM(MarginalArchitecture):
    name = "aim"
    mechanism = AIM_MECHANISM
    # AIM's split (a tenth of each round for selection) and workload (every 3-way marginal, weight 1).
    defaults: ClassVar[dict[str, Any]] = {"selection_share": 0.1, "rounds": 24, "ways": [3], "label_weight": 1.0}


class AIMLabel(AIM):
    name = "aim-label"
    defaults: ClassVar[dict[str, Any]] = {**AIM.defaults, "ways": [2, 3], "label_weight": 4.0}
