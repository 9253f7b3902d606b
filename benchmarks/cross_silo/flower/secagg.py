"""SecAgg+ as the benchmark runs it: its settings, the bound on how far its aggregate may stray from plain FedAvg's,
and what its masks are made of in the installed flwr (SECAGG_NOTE).

What a client sends (flwr 1.42's secaggplus_mod, read from its source): with max_weight M, quantization range T and
clipping range C, client k's weight factor is q_k = round(n_k T / M) and it uploads, masked, q_k and
Q_k = SR((clip(w_k q_k / T, -C, C) + C) T / (2C)) per coordinate, SR being stochastic rounding to floor or ceil. The
server unmasks sum_k Q_k and sum_k q_k (no wrap-around while K T < modulus), dequantises and divides, giving

    sum_k w_k q_k / sum_k q_k + (2C / sum_k q_k) sum_k e_k,   |e_k| < 1 (each client's rounding error).

Against plain FedAvg sum_k w_k n_k / sum_k n_k the weights differ too, since q_k rounds n_k T / M by at most 1/2;
sum_k |q_k / sum q - n_k / sum n| <= K / sum_k q_k. So per coordinate, when no weight is clipped (|w_k| q_k / T <= C),

    |SecAgg+ aggregate - FedAvg aggregate| <= K (2C + max_k |w_k|) / sum_k q_k        (`aggregate_bound`).

With T = 2^22, C = 8, |w| < 1 and M = the largest silo, sum_k q_k = T K mean(n) / M, so the bound is about
4e-6 * (largest silo / mean silo) whatever K: far below what moves an accuracy figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SecAggSettings:
    """SecAggPlusWorkflow's parameters. num_shares: how many clients each client's secrets are shared with (itself
    included); 1 (Flower reads it as the fraction 1.0) means all of them."""

    num_shares: int
    reconstruction_threshold: int
    max_weight: float
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32

    def to_dict(self) -> dict:
        return asdict(self)


def default_settings(clients: int, largest_silo: int) -> SecAggSettings:
    """The benchmark's choice for K clients:

    - num_shares = K, the complete graph: every pair of clients masks against each other, as in the original SecAgg
      (Bonawitz et al. 2017). SecAgg+'s sparser graph (Bell et al. 2020, O(log K) neighbours) pays off for
      thousands of clients; at 10 silos the K^2 key agreements cost little, and fewer neighbours would only mean
      fewer clients an attacker must corrupt. (Flower rejects an integer num_shares below 3, so 2 clients get 1.)
    - reconstruction_threshold = K // 2 + 1, a strict majority (6 of 10): a server that tells different clients
      different stories about who dropped out cannot collect a majority of self-mask shares and a majority of key
      shares for the same client from honest clients; up to K - threshold (4) dropouts are survived.
    - max_weight = the largest silo's example count, so every weight factor n_k / M <= 1 and nothing is clipped
      for that reason; clipping_range = 8.0 (Flower's default): the classifiers' weights stay well inside +-8 (the
      deployment reports the largest |w| of the final model); quantization_range = 2^22 (Flower's default, a step of
      2C / T = 3.8e-6) and modulus_range = 2^32 (K T = 10 * 2^22 < 2^32: the sum never wraps)."""
    if clients < 2:
        raise ValueError("secure aggregation needs at least 2 clients")
    return SecAggSettings(
        num_shares=clients if clients > 2 else 1,
        reconstruction_threshold=clients // 2 + 1,
        max_weight=float(largest_silo),
    )


def weight_factors(num_examples: list[int], settings: SecAggSettings) -> np.ndarray:
    """q_k = round(n_k T / M), the integer weights SecAgg+ actually averages with (Python's round, as Flower's)."""
    return np.array([round(n / settings.max_weight * settings.quantization_range) for n in num_examples], np.float64)


def aggregate_bound(num_examples: list[int], max_abs_weight: float, settings: SecAggSettings) -> float:
    """Per-coordinate bound on |SecAgg+ aggregate - FedAvg aggregate| (module docstring), no weight clipped."""
    q = weight_factors(num_examples, settings)
    return len(num_examples) * (2 * settings.clipping_range + max_abs_weight) / float(np.sum(q))


SECAGG_NOTE = """\
SecAgg+'s mask generator in flwr 1.42.0 (flwr/common/secure_aggregation/secaggplus_utils.py, `pseudo_rand_gen`):
a mask is expanded from its seed by XOR-folding the seed bytes into one 32-bit integer (seed32 ^= each 4-byte
little-endian word) and drawing numpy's legacy Mersenne Twister, np.random.RandomState(seed32).randint(0,
modulus_range - 1, shape). The issue's description is right, and slightly generous:
- a client's self mask comes from os.urandom(32), folded to 32 bits: at most 2^32 different masks;
- a pairwise mask comes from the ECDH shared secret after HKDF-SHA256, but the seed that gets folded is that key's
  urlsafe-base64 *text* (44 ASCII bytes), so the top bit of every byte is 0 and the folded seed has at most 28 free
  bits: at most 2^28 different pairwise masks;
- MT19937 is not a cryptographic generator (624 consecutive outputs give away its state), and randint's upper
  bound modulus_range - 1 is exclusive, so an entry never takes the value modulus_range - 1.
What that means: each mask has a 32-bit (pairwise: 28-bit) key instead of a 256-bit one, so the masking is not
cryptographically secure. Whoever knows all but one mask of a masked vector finds the last one by enumerating its
seeds: a wrong seed leaves entries spread over [0, 2^32), while a client's true quantised entries lie in [0, 2^22],
so four entries test a guess (a false match 2^-40). Measured here through numpy from Python (RandomState.seed and
four draws), a guess costs 8 us: about 10 core-hours for 2^32 seeds, 40 core-minutes for 2^28, and the search
splits across cores at will. Two positions are enough to mount it:
- a server that deviates: it declares a client that has already uploaded its masked vector "dropped" (the clients
  do not check), collects that client's key shares from its neighbours, strips every pairwise mask, and searches
  the 2^32 self-mask seeds. SecAgg's guarantee, that the server learns a client's self-mask seed or its pairwise
  key but never both, then no longer protects the individual update;
- a server that follows the protocol (it learns every surviving client's self-mask seed when it unmasks) and
  colludes with all but one of a client's neighbours: one 2^28 pairwise seed is left to search, and it learns that
  client's update rather than only the sum of the two honest ones.
Flower's SecAgg+ thus hides individual updates from a server that follows the protocol and colludes with nobody.
The benchmark measures its cost; it does not count it as a cryptographic guarantee."""
