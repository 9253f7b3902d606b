"""Marginal-based synthesis as pure functions of arrays, on Private-PGM (`mbi`): discretisation of a model space,
noisy marginals, exponential-mechanism selection, the selection rules of MST and AIM, and row-keyed sampling from
the graphical model's log-potentials.

The attributes of a tabular model space are its column blocks in row order, then the label (when there is one):
a numeric block is cut into `bins` equal bins of [0, 1] (its schema bounds, public), a categorical block is its
category index, the label its class. A marginal over a clique of attributes is the histogram of their joint values:
adding or removing one row changes one cell by one, so every marginal has L2 sensitivity 1 and a Gaussian of
standard deviation sigma on it is a Gaussian mechanism of noise multiplier sigma.

References: McKenna, Miklau, Sheldon, "Winning the NIST Contest: A scalable and general approach to differentially
private synthetic data" (MST, JPC 2021); McKenna, Mullins, Sheldon, Miklau, "AIM: An Adaptive and Iterative
Mechanism for Differentially Private Synthetic Data" (VLDB 2022).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

with warnings.catch_warnings():
    # mbi warns at import that JAX runs in float32 (a risk it names for N > 100K rows; libsgde keeps float32, the
    # project's convention) and that a persistent compilation cache is on (the process's choice, not ours).
    warnings.filterwarnings("ignore", message="JAX is running in float32 mode", category=UserWarning)
    warnings.filterwarnings("ignore", message="JAX persistent compilation cache", category=UserWarning)
    from mbi import (
        CliqueVector,
        Domain,
        Factor,
        LinearMeasurement,
        MarkovRandomField,
        estimation,
        junction_tree,
        marginal_oracles,
    )

from libsgde.ml.space import ModelSpace

Clique = tuple[int, ...]  # attribute indices, ascending


# -- attributes ---------------------------------------------------------------------------------------------------


def attribute_sizes(space: ModelSpace, bins: int) -> tuple[int, ...]:
    """The number of values of each attribute: `bins` per numeric block, the width of a categorical one, then the
    number of classes when the space has a label."""
    sizes = [bins if b.kind == "numeric" else b.width for b in space.blocks]
    return (*sizes, space.num_classes) if space.num_classes else tuple(sizes)


def label_attribute(space: ModelSpace) -> int | None:
    """The label's attribute index, or None for an unconditional space."""
    return len(space.blocks) if space.num_classes else None


def discretise(x: np.ndarray, labels: np.ndarray | None, space: ModelSpace, bins: int) -> np.ndarray:
    """int64 [N, d] attribute values of model-space rows x [N, D]: numeric values in [0, 1] to their bin (the top
    edge falls in the last bin), one-hot blocks to their index, then the label."""
    cols = []
    for b in space.blocks:
        block = np.asarray(x[:, b.start : b.start + b.width], np.float64)
        if b.kind == "numeric":
            cols.append(np.clip(np.floor(block[:, 0] * bins), 0, bins - 1).astype(np.int64))
        else:
            cols.append(np.argmax(block, axis=1).astype(np.int64))
    if space.num_classes:
        assert labels is not None
        cols.append(np.asarray(labels, np.int64))
    return np.stack(cols, axis=1)


def domain_of(sizes: Sequence[int]) -> Domain:
    return Domain(tuple(range(len(sizes))), tuple(sizes))


def cells(sizes: Sequence[int], clique: Sequence[int]) -> int:
    return math.prod(sizes[a] for a in clique)


def model_cells(sizes: Sequence[int], cliques: Sequence[Clique]) -> int:
    """Cells of the junction tree's maximal cliques: what inference and sampling hold in memory."""
    jtree, _ = junction_tree.make_junction_tree(domain_of(sizes), list(cliques))
    return sum(cells(sizes, c) for c in junction_tree.maximal_cliques(jtree))


# -- measurements ---------------------------------------------------------------------------------------------------


def marginal(data: np.ndarray, sizes: Sequence[int], clique: Clique) -> np.ndarray:
    """float64 [cells] counts of the clique's joint values (C order over the clique's attributes)."""
    shape = tuple(sizes[a] for a in clique)
    flat = np.ravel_multi_index(tuple(data[:, a] for a in clique), shape) if clique else np.zeros(len(data), int)
    return np.bincount(flat, minlength=math.prod(shape)).astype(np.float64)


def measure(key: jax.Array, data: np.ndarray, sizes: Sequence[int], clique: Clique, sigma: float) -> LinearMeasurement:
    """The marginal plus N(0, sigma^2) noise per cell: a Gaussian mechanism of noise multiplier sigma."""
    counts = marginal(data, sizes, clique)
    noise = np.asarray(jax.random.normal(key, counts.shape, jnp.float32), np.float64)
    return LinearMeasurement(counts + sigma * noise, clique, stddev=sigma)


def exponential_mechanism(key: jax.Array, qualities: np.ndarray, epsilon: float, sensitivity: float) -> int:
    """The index drawn with probability proportional to exp(epsilon q / (2 sensitivity)): epsilon-DP, and
    (epsilon^2 / 8)-zCDP. Drawn as the argmax of the scaled qualities plus Gumbel noise, the same distribution."""
    scores = epsilon / (2 * sensitivity) * np.asarray(qualities, np.float64)
    gumbel = np.asarray(jax.random.gumbel(key, scores.shape, jnp.float32), np.float64)
    return int(np.argmax(scores + gumbel))


def estimate(
    sizes: Sequence[int],
    measurements: list[LinearMeasurement],
    iters: int,
    warm_start: MarkovRandomField | None = None,
) -> MarkovRandomField:
    """Private-PGM's estimate (mirror descent) of the graphical model that best explains the noisy measurements;
    post-processing of them."""
    model: MarkovRandomField = estimation.MirrorDescent().estimate(
        domain_of(sizes), measurements, iters=iters, warm_start=warm_start
    )
    return model


MONTE_CARLO_ROWS = 1 << 16


def model_marginals(
    model: MarkovRandomField, cliques: Sequence[Clique], key: jax.Array, rows: int = MONTE_CARLO_ROWS
) -> dict[Clique, np.ndarray]:
    """The model's marginals (counts, flattened in each clique's attribute order) over these cliques: exact where
    the model holds a clique containing it, else estimated from `rows` rows sampled from the model (mbi's exact
    variable elimination, query by query, takes tens of seconds per AIM round on CPU; the sampling error, about
    total * sqrt(p / rows) per cell, is far below the measurement noise it is compared with). Post-processing: the
    model and `key` alone."""
    sizes = model.domain.shape
    out = {cl: np.asarray(model.project(cl).datavector(), np.float64) for cl in cliques if model.marginals.supports(cl)}
    rest = [cl for cl in cliques if cl not in out]
    if rest:
        potentials = log_potentials(model)
        drawn = np.asarray(_sampler(tuple(sizes), tuple(potentials))(list(potentials.values()), key, rows))
        scale = float(model.total) / rows
        out.update({cl: scale * marginal(drawn, sizes, cl) for cl in rest})
    return {cl: out[cl] for cl in cliques}


@functools.lru_cache(maxsize=8)
def _sampler(sizes: tuple[int, ...], cliques: tuple[Clique, ...]) -> Callable[..., jax.Array]:
    """A jitted unconditional sampler of the model with these cliques: (potentials, key, rows) -> values."""
    plan = sampling_plan(sizes, cliques, None)

    def draw(potentials: list[jax.Array], key: jax.Array, rows: int) -> jax.Array:
        logits = conditional_logits(sizes, cliques, potentials, plan)
        keys = jax.random.split(key, rows)
        return sample_attributes(sizes, plan, logits, keys, jnp.zeros(rows, jnp.int32), None)

    return jax.jit(draw, static_argnums=2)


# -- MST: a maximum spanning tree of noisy pairwise errors --------------------------------------------------------


def mst_select(
    next_key: Callable[[], jax.Array],
    estimate_key: jax.Array,
    data: np.ndarray,
    sizes: Sequence[int],
    model: MarkovRandomField,
    epsilon: float,
    pairs: Sequence[Clique],
) -> list[Clique]:
    """A spanning forest of the graph of `pairs`, chosen as MST does: every pair's quality is the L1 distance
    between its marginal in the data and in the model of the one-way measurements (sensitivity 1); Kruskal's
    algorithm then adds, as many times as the forest has edges (a function of `pairs` alone), an edge between two
    components drawn by the exponential mechanism at `epsilon` (its key from `next_key()`)."""
    estimated = model_marginals(model, pairs, estimate_key)
    quality = {p: float(np.abs(marginal(data, sizes, p) - estimated[p]).sum()) for p in pairs}
    components = nx.utils.UnionFind(range(len(sizes)))
    chosen: list[Clique] = []
    while True:
        candidates = [p for p in pairs if components[p[0]] != components[p[1]]]
        if not candidates:
            return chosen
        pick = candidates[exponential_mechanism(next_key(), np.array([quality[p] for p in candidates]), epsilon, 1.0)]
        components.union(*pick)
        chosen.append(pick)


# -- AIM: a workload, its candidates, one round's selection -------------------------------------------------------


def workload(d: int, ways: Sequence[int], label: int | None, label_weight: float) -> dict[Clique, float]:
    """Every marginal of the given numbers of attributes, weight `label_weight` on those holding the label."""
    out: dict[Clique, float] = {}
    for k in ways:
        for cl in itertools.combinations(range(d), min(k, d)):
            out[cl] = label_weight if label is not None and label in cl else 1.0
    return out


def candidate_weights(work: dict[Clique, float]) -> dict[Clique, float]:
    """AIM's candidates, the downward closure of the workload (non-empty subsets), each weighted by its overlap
    with the workload: w_r = sum over workload cliques s of c_s |r & s|."""
    closure = {sub for cl in work for k in range(1, len(cl) + 1) for sub in itertools.combinations(cl, k)}
    return {r: sum(c * len(set(r) & set(s)) for s, c in work.items()) for r in sorted(closure)}


def aim_select(
    key: jax.Array,
    estimate_key: jax.Array,
    data: np.ndarray,
    sizes: Sequence[int],
    model: MarkovRandomField,
    weights: dict[Clique, float],
    epsilon: float,
    sigma: float,
) -> Clique:
    """One AIM selection: quality w_r (||M_r(D) - M_r(model)||_1 - sqrt(2 / pi) sigma n_r) (the expected L1 error
    of measuring r with noise sigma subtracted: a marginal worth measuring is one the model gets wrong by more than
    the measurement's own noise), drawn by the exponential mechanism at `epsilon` with sensitivity max_r w_r."""
    candidates = list(weights)
    estimated = model_marginals(model, candidates, estimate_key)
    quality = np.array(
        [
            weights[r]
            * (np.abs(marginal(data, sizes, r) - estimated[r]).sum() - math.sqrt(2 / math.pi) * sigma * cells(sizes, r))
            for r in candidates
        ]
    )
    return candidates[exponential_mechanism(key, quality, epsilon, max(weights.values()))]


# -- the model as arrays, and sampling from it ---------------------------------------------------------------------


def log_potentials(model: MarkovRandomField) -> dict[Clique, np.ndarray]:
    """The model's log-potentials, one float32 table per clique (attributes ascending, axes in that order)."""
    out = {}
    for cl in model.potentials.cliques:
        canonical = tuple(sorted(cl))
        out[canonical] = np.asarray(model.potentials[cl].transpose(canonical).values, np.float32)
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class Step:
    """Draw `attribute` given the already drawn `given`, from the marginal of junction-tree clique `clique`."""

    attribute: int
    given: Clique
    clique: Clique


def sampling_plan(sizes: Sequence[int], cliques: Sequence[Clique], first: int | None) -> tuple[Step, ...]:
    """Ancestral sampling over the junction tree of `cliques`: from a root clique holding `first` (the label,
    given), breadth first, each attribute drawn given those of its clique drawn before it. By the running
    intersection property those are all it depends on, so the rows follow the model's distribution given `first`.
    Deterministic in its arguments (the tree is mbi's, itself deterministic)."""
    jtree, _ = junction_tree.make_junction_tree(domain_of(sizes), list(cliques))
    nodes = sorted(jtree.nodes)
    roots = sorted(nodes, key=lambda c: (first not in c, c)) if first is not None else nodes
    drawn = set() if first is None else {first}
    seen: set[Clique] = set()
    steps = []
    for root in roots:
        if root in seen:
            continue
        for clique in [root, *(v for _, v in nx.bfs_edges(jtree, root))]:
            seen.add(clique)
            for a in clique:
                if a not in drawn:
                    steps.append(Step(a, tuple(b for b in clique if b in drawn), clique))
                    drawn.add(a)
    return tuple(steps)


TINY = 1e-30  # a probability floor: log(0) would give a row of -inf logits


def conditional_logits(
    sizes: Sequence[int], cliques: Sequence[Clique], potentials: Sequence[jax.Array], plan: Sequence[Step]
) -> list[jax.Array]:
    """Per step, [prod of the given attributes' sizes, size of the attribute] log joint probabilities (logits of
    the conditional): the junction tree's marginals (mbi's belief propagation) projected on given + attribute."""
    domain = domain_of(sizes)
    tables = {cl: Factor(domain.project(cl), jnp.asarray(p, jnp.float32)) for cl, p in zip(cliques, potentials)}
    jtree, _ = junction_tree.make_junction_tree(domain, list(cliques))
    maximal = junction_tree.maximal_cliques(jtree)
    beliefs = CliqueVector(domain, list(cliques), tables).expand(maximal)
    marginals = marginal_oracles.message_passing_hugin(beliefs, 1.0, jtree)
    assert isinstance(marginals, CliqueVector)
    out = []
    for s in plan:
        joint = marginals[s.clique].project((*s.given, s.attribute)).transpose((*s.given, s.attribute)).values
        out.append(jnp.log(jnp.maximum(joint.reshape(-1, sizes[s.attribute]), TINY)))
    return out


def sample_attributes(
    sizes: Sequence[int],
    plan: Sequence[Step],
    logits: Sequence[jax.Array],
    keys: jax.Array,
    labels: jax.Array,
    label: int | None,
) -> jax.Array:
    """int32 [n, d] attribute values; row i from keys[i] and labels[i] alone (step t draws with fold_in(key, t))."""
    d = len(sizes)

    def row(key: jax.Array, y: jax.Array) -> jax.Array:
        values = jnp.zeros(d, jnp.int32)
        if label is not None:
            values = values.at[label].set(y)
        for t, s in enumerate(plan):
            index = jnp.int32(0)
            for b in s.given:
                index = index * sizes[b] + values[b]
            values = values.at[s.attribute].set(jax.random.categorical(jax.random.fold_in(key, t), logits[t][index]))
        return values

    out: jax.Array = jax.vmap(row)(keys, labels)
    return out


def undiscretise(values: jax.Array, space: ModelSpace, bins: int, keys: jax.Array) -> jax.Array:
    """Model-space rows [n, D] of attribute values [n, d]: a numeric value uniform inside its bin, a categorical
    one one-hot; row i's uniforms from keys[i] alone."""
    parts = []
    for j, b in enumerate(space.blocks):
        if b.kind == "numeric":
            u = jax.vmap(lambda k, j=j: jax.random.uniform(jax.random.fold_in(k, j)))(keys)
            parts.append(((values[:, j] + u) / bins)[:, None])
        else:
            parts.append(jax.nn.one_hot(values[:, j], b.width))
    return jnp.concatenate(parts, axis=1).astype(jnp.float32)
