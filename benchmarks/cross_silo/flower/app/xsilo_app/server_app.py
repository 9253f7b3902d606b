"""The ServerApp: Flower's legacy strategies driven by its DefaultWorkflow, the one form in which flwr 1.42 runs
SecAgg+ (SecAggPlusWorkflow needs a LegacyContext), so all three arms share it and differ only where they must:

- fedavg: flwr.server.strategy.FedAvg, every client every round (fraction_fit 1), no federated evaluation;
- fedprox: flwr.server.strategy.FedProx (FedAvg's aggregation; it sends proximal_mu to the clients);
- secaggplus: FedAvg with the fit stage replaced by SecAggPlusWorkflow (the clients run secaggplus_mod), so the
  server only ever holds the masked vectors and their sum.

The global model starts from model.init(spec, PRNGKey(seed)), as in the other arms. After every round the server
evaluates the global model on the global test set (server-side evaluation, the strategy's evaluate_fn). Each round's
wall-clock start (configure_fit) and end (the end of aggregate_fit) are recorded with time.time(), so the deployment
can attribute the bytes its proxy counted to rounds. At the end it writes results.json and final_params.npz (arrays
in model.py's names() order) into the run's results-dir; if the run fails it writes error.txt there instead.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg, FedProx
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

app = ServerApp()


class _Timed:
    """Records each round's start (configure_fit) and end (after aggregate_fit) on the strategy it is mixed into."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.round_start: dict[int, float] = {}
        self.round_end: dict[int, float] = {}
        self.clients_per_round: dict[int, int] = {}

    def configure_fit(self, server_round, parameters, client_manager):
        self.round_start[server_round] = time.time()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        if failures:  # a failed client would silently change the aggregate; the benchmark wants every silo
            raise RuntimeError(f"round {server_round}: {len(failures)} client(s) failed: {failures[:3]!r}")
        out = super().aggregate_fit(server_round, results, failures)
        self.round_end[server_round] = time.time()
        self.clients_per_round[server_round] = len(results)
        return out


class TimedFedAvg(_Timed, FedAvg):
    pass


class TimedFedProx(_Timed, FedProx):
    pass


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    out = Path(str(cfg["results-dir"]))
    try:
        _run(grid, context, out)
    except BaseException:
        (out / "error.txt").write_text(traceback.format_exc())
        raise


def _run(grid: Grid, context: Context, out: Path) -> None:
    import jax

    from xsilo_app import model
    from xsilo_app.runconfig import model_spec

    cfg = context.run_config
    strategy_name = str(cfg["strategy"])
    spec = model_spec(model, cfg)
    clients, rounds = int(cfg["num-clients"]), int(cfg["num-rounds"])
    with np.load(str(cfg["test-file"])) as test:
        x_test, y_test = test["x"], test["y"]
    init = model.to_arrays(spec, model.init(spec, jax.random.PRNGKey(int(cfg["seed"]))))
    accuracy: dict[int, float] = {}
    final: list[np.ndarray] = []

    def evaluate(server_round, arrays, _config):
        params = model.from_arrays(spec, [np.asarray(a, np.float32) for a in arrays])
        accuracy[server_round] = model.accuracy(spec, params, x_test, y_test)
        loss = float(np.mean(np.asarray(model.example_losses(spec, params, x_test, y_test))))
        final[:] = [np.asarray(a, np.float32) for a in arrays]
        return loss, {"accuracy": accuracy[server_round]}

    common = {
        "fraction_fit": 1.0,
        "fraction_evaluate": 0.0,
        "min_fit_clients": clients,
        "min_available_clients": clients,
        "evaluate_fn": evaluate,
        "on_fit_config_fn": lambda server_round: {"server_round": server_round},
        "initial_parameters": ndarrays_to_parameters(init),
        "accept_failures": False,
    }
    if strategy_name == "fedprox":
        strategy = TimedFedProx(**common, proximal_mu=float(cfg["prox-mu"]))
    elif strategy_name in ("fedavg", "secaggplus"):
        strategy = TimedFedAvg(**common)
    else:
        raise ValueError(f"unknown strategy {strategy_name!r}")
    fit_workflow = None
    if strategy_name == "secaggplus":
        fit_workflow = SecAggPlusWorkflow(
            num_shares=int(cfg["secagg-num-shares"]),
            reconstruction_threshold=int(cfg["secagg-reconstruction-threshold"]),
            max_weight=float(cfg["secagg-max-weight"]),
            clipping_range=float(cfg["secagg-clipping-range"]),
            quantization_range=int(cfg["secagg-quantization-range"]),
            modulus_range=int(cfg["secagg-modulus-range"]),
        )
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    started = time.time()
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
    finished = time.time()
    done = sorted(strategy.round_end)
    if done != list(range(1, rounds + 1)):
        raise RuntimeError(f"the workflow completed rounds {done} of {rounds} (see the SuperLink's log)")
    # keys "00_conv1.w", ...: np.load's .files gives them back in names() order
    np.savez(
        out / "final_params.npz",
        **{f"{i:02d}_{n.replace('/', '.')}": a for i, (n, a) in enumerate(zip(spec.names(), final))},
    )
    results = {
        "strategy": strategy_name,
        "rounds": rounds,
        "accuracy_initial": accuracy[0],
        "accuracy_per_round": [accuracy[r] for r in range(1, rounds + 1)],
        "round_start": [strategy.round_start[r] for r in range(1, rounds + 1)],
        "round_end": [strategy.round_end[r] for r in range(1, rounds + 1)],
        "clients_per_round": [strategy.clients_per_round[r] for r in range(1, rounds + 1)],
        "max_abs_weight": max(float(np.max(np.abs(a))) for a in final),
        "started": started,
        "finished": finished,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
