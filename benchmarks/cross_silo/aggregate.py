"""FedAvg's server step (McMahan et al. 2017): the example-weighted mean of the clients' models. Pure numpy, so
Flower's own environment can import it as it is."""

from __future__ import annotations

import numpy as np


def fedavg(results: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
    """sum_k n_k w_k / sum_k n_k, layer by layer, for results [(layers of client k, n_k), ...]."""
    if not results:
        raise ValueError("no client results to aggregate")
    total = sum(n for _, n in results)
    if total <= 0:
        raise ValueError("the clients report no examples")
    return [
        (np.sum([np.asarray(layers[i], np.float64) * n for layers, n in results], axis=0) / total).astype(np.float32)
        for i in range(len(results[0][0]))
    ]
