"""The ClientApp: one silo. Each fit trains model.py's classifier with model.py's `train` on this silo's own data
(the .npz its SuperNode's node config names: x float32 in the model's input shape, y int32), starting from the global
model it receives, and returns the trained weights and its example count n_k (FedAvg's weight).

FedProx: the server's FedProx strategy puts `proximal_mu` in the fit config; the client then trains with
LocalTraining(prox_mu=mu), i.e. adds mu/2 ||w - w_global||^2 to its loss. SecAgg+: `secaggplus_mod` wraps the client
when the run says so; it masks the returned weights and answers the protocol's key-exchange and unmask stages, and
it calls `fit` only in its collect-masked-vectors stage.

model.py and aggregate.py are copied into this package when the app is staged (deploy.stage_app), so the FAB the
SuperNodes receive is self-contained.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable

from xsilo_app.runconfig import local_training, model_spec, round_seed


class SiloClient(NumPyClient):
    def __init__(self, context: Context) -> None:
        self.silo = int(context.node_config["silo-id"])
        self.silo_file = str(context.node_config["silo-file"])
        self.run_config = context.run_config

    def fit(self, parameters, config):
        # jax is imported here, not at module level: a ClientApp process that answers a SecAgg+ key stage never trains
        from xsilo_app import model

        spec = model_spec(model, self.run_config)
        local = local_training(model, self.run_config, config.get("proximal_mu", 0.0))
        with np.load(self.silo_file) as silo:
            x, y = silo["x"], silo["y"]
        params = model.from_arrays(spec, [np.asarray(a, np.float32) for a in parameters])
        seed = round_seed(int(self.run_config["seed"]), self.silo, int(config["server_round"]))
        trained = model.train(spec, params, x, y, local, seed)
        return model.to_arrays(spec, trained), len(x), {}


def client_fn(context: Context):
    return SiloClient(context).to_client()


def secaggplus_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's secaggplus_mod on the SecAgg+ arm, a pass-through on the others (one ClientApp for all three)."""
    if context.run_config["strategy"] == "secaggplus":
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(client_fn=client_fn, mods=[secaggplus_when_asked])
