"""Flower's own functions, run inside Flower's venv (benchmarks/.venv-flower) on arrays from an npz, for the tests.

    <flower venv python> flower_side.py aggregate IN.npz OUT.npz
    <flower venv python> flower_side.py secagg IN.npz OUT.npz --num-shares S --threshold T --clipping-range C
        --quantization-range Q --modulus-range M --max-weight W
    <flower venv python> flower_side.py mask-facts OUT.json

IN.npz holds the clients' updates: `n` (int, one example count per client) and `c<k>_<i>` (client k's layer i).
- aggregate: Flower's FedAvg aggregation three ways, as OUT.npz `<way>_<i>`: `aggregate` (flwr.server.strategy.
  aggregate.aggregate), `strategy` (flwr.server.strategy.FedAvg().aggregate_fit on FitRes, the in-place path the
  deployment's server runs) and `message_api` (flwr.serverapp.strategy's aggregate_arrayrecords, the new API).
- secagg: the whole SecAgg+ protocol in this process: every client is a ClientApp with Flower's secaggplus_mod that
  returns its update from `fit`; the server is Flower's SecAggPlusWorkflow with a legacy FedAvg. A small in-process
  Grid carries the messages, serialised through Flower's protobuf serde both ways as a transport would, so the
  masking, the key agreement, the Shamir shares, the unmasking, the quantisation and the dequantisation are all
  Flower's code. OUT.npz: the aggregate `agg_<i>`.
- mask-facts: what `pseudo_rand_gen` does to the seeds it gets (see secagg.SECAGG_NOTE), as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from uuid import uuid4

import numpy as np


def _load(path: str) -> tuple[list[list[np.ndarray]], list[int]]:
    with np.load(path) as f:
        n = [int(v) for v in f["n"]]
        layers = sorted({int(k.split("_")[1]) for k in f.files if k.startswith("c")})
        updates = [[f[f"c{k}_{i}"] for i in layers] for k in range(len(n))]
    return updates, n


def aggregate(inp: str, out: str) -> None:
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg
    from flwr.server.strategy.aggregate import aggregate as flower_aggregate
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    updates, n = _load(inp)
    ways = {"aggregate": flower_aggregate(list(zip(updates, n)))}
    fit_results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(u), nk, {})) for u, nk in zip(updates, n)]
    params, _ = FedAvg().aggregate_fit(1, fit_results, [])
    ways["strategy"] = parameters_to_ndarrays(params)
    records = [
        RecordDict(
            {
                "arrays": ArrayRecord({f"{i}": Array(a) for i, a in enumerate(u)}),
                "metrics": MetricRecord({"num-examples": nk}),
            }
        )
        for u, nk in zip(updates, n)
    ]
    merged = aggregate_arrayrecords(records, "num-examples")
    ways["message_api"] = [merged[f"{i}"].numpy() for i in range(len(updates[0]))]
    np.savez(out, **{f"{way}_{i}": a for way, arrays in ways.items() for i, a in enumerate(arrays)})


def _router_grid(apps: dict, run_id: int):
    """A Grid that hands each message to its node's ClientApp here and now (see the module docstring)."""
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.serverapp import Grid
    from flwr.supercore.run import Run

    def wire(msg):  # what crosses a transport: the protobuf form, not the Python object
        return message_from_proto(message_to_proto(msg))

    class RouterGrid(Grid):
        def __init__(self) -> None:
            self._run = Run.create_empty(run_id)
            self._replies: dict[str, object] = {}

        def set_run(self, run) -> None:
            self._run = run

        @property
        def run(self):
            return self._run

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            from flwr.app import Message

            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self):
            return list(apps)

        def get_nodes(self):
            raise NotImplementedError

        def push_messages(self, messages):
            ids = []
            for msg in messages:
                msg.metadata.__dict__["_message_id"] = uuid4().hex  # the SuperLink's job
                app, context = apps[msg.metadata.dst_node_id]
                reply = wire(app(wire(msg), context))
                reply.metadata.__dict__["_message_id"] = uuid4().hex
                self._replies[msg.metadata.message_id] = reply
                ids.append(msg.metadata.message_id)
            return ids

        def pull_messages(self, message_ids):
            return [self._replies.pop(i) for i in message_ids if i in self._replies]

        def send_and_receive(self, messages, *, timeout=None):
            return self.pull_messages(self.push_messages(messages))

    return RouterGrid()


def secagg(inp: str, out: str, args: argparse.Namespace) -> None:
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.server import LegacyContext, ServerConfig, SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
    from flwr.supercore.task_identity import TaskIdentity

    updates, n = _load(inp)
    run_id = 7
    # what a ServerApp process is told at start-up: the identity its messages carry
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 1

    class Fixed(NumPyClient):
        def __init__(self, k: int) -> None:
            self.k = k

        def fit(self, parameters, config):
            return updates[self.k], n[self.k], {}

    def client_fn_of(k: int):
        def client_fn(context: Context):  # Flower insists on exactly this signature
            return Fixed(k).to_client()

        return client_fn

    apps = {}
    for k in range(len(n)):
        node_id = 1000 + k
        app = ClientApp(client_fn=client_fn_of(k), mods=[secaggplus_mod])
        apps[node_id] = (app, Context(run_id, node_id, {}, RecordDict(), {}))
    grid = _router_grid(apps, run_id)
    manager = SimpleClientManager()
    for node_id in apps:
        manager.register(GridClientProxy(node_id, grid, run_id))
    strategy = FedAvg(fraction_evaluate=0.0, min_fit_clients=len(n), min_available_clients=len(n))
    context = LegacyContext(Context(run_id, 0, {}, RecordDict(), {}), ServerConfig(num_rounds=1), strategy, manager)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: 1})
    start = [np.zeros_like(a) for a in updates[0]]
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(start), keep_input=True
    )
    workflow = SecAggPlusWorkflow(
        num_shares=args.num_shares,
        reconstruction_threshold=args.threshold,
        max_weight=args.max_weight,
        clipping_range=args.clipping_range,
        quantization_range=args.quantization_range,
        modulus_range=args.modulus_range,
    )
    workflow(grid, context)
    result = parameters_to_ndarrays(
        compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    )
    np.savez(out, **{f"agg_{i}": a for i, a in enumerate(result)})


def mask_facts(out: str, pairs: int = 64) -> None:
    """For fresh key pairs: the pairwise seed Flower's client derives (generate_shared_key), its length, the OR of
    its XOR-folded 32-bit values, and whether pseudo_rand_gen equals RandomState(folded seed).randint(0, M - 1)."""
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import generate_key_pairs

    def fold(seed: bytes) -> int:
        folded = 0
        for i in range(0, len(seed), 4):
            folded ^= int.from_bytes(seed[i : i + 4], "little")
        return folded

    modulus, shapes = 2**32, [(3, 4), (5,)]
    lengths, folded_or, matches = set(), 0, True
    rng = np.random.default_rng(0)
    for _ in range(pairs):
        (sk, _pk), (_sk2, pk2) = generate_key_pairs(), generate_key_pairs()
        seed = generate_shared_key(sk, pk2)
        lengths.add(len(seed))
        folded_or |= fold(seed)
        gen = np.random.RandomState(fold(seed))
        ours = [gen.randint(0, modulus - 1, s, dtype=np.int64) for s in shapes]
        matches &= all(np.array_equal(a, b) for a, b in zip(pseudo_rand_gen(seed, modulus, shapes), ours))
        self_seed = rng.bytes(32)  # a self-mask seed is os.urandom(32); any 32 bytes fold the same way
        gen = np.random.RandomState(fold(self_seed))
        ours = [gen.randint(0, modulus - 1, s, dtype=np.int64) for s in shapes]
        matches &= all(np.array_equal(a, b) for a, b in zip(pseudo_rand_gen(self_seed, modulus, shapes), ours))
    Path(out).write_text(
        json.dumps({"pairwise_seed_lengths": sorted(lengths), "folded_or": folded_or, "matches_randomstate": matches})
    )


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("aggregate", "secagg"):
        p = sub.add_parser(name)
        p.add_argument("inp")
        p.add_argument("out")
    p = sub.choices["secagg"]
    p.add_argument("--num-shares", type=int, required=True)
    p.add_argument("--threshold", type=int, required=True)
    p.add_argument("--clipping-range", type=float, required=True)
    p.add_argument("--quantization-range", type=int, required=True)
    p.add_argument("--modulus-range", type=int, required=True)
    p.add_argument("--max-weight", type=float, required=True)
    sub.add_parser("mask-facts").add_argument("out")
    args = ap.parse_args(argv)
    if args.command == "aggregate":
        aggregate(args.inp, args.out)
    elif args.command == "secagg":
        secagg(args.inp, args.out, args)
    else:
        mask_facts(args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
