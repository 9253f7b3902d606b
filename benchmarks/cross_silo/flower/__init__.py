"""The Flower arms of the cross-silo benchmark (FedAvg, FedProx, FedAvg with SecAgg+) as a real Flower deployment:
env.py makes Flower's own venv, app/ is the Flower App, deploy.py runs SuperLink and SuperNodes over TLS and measures
the cost, secagg.py holds SecAgg+'s settings, its error bound and SECAGG_NOTE, flower_side.py runs Flower's own
functions for the tests."""

from benchmarks.cross_silo.flower.deploy import run_flower
from benchmarks.cross_silo.flower.env import ensure_flower_env
from benchmarks.cross_silo.flower.secagg import SECAGG_NOTE, SecAggSettings, default_settings

__all__ = ["SECAGG_NOTE", "SecAggSettings", "default_settings", "ensure_flower_env", "run_flower"]
