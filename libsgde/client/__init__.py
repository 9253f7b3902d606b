"""The Python SDK: what a user scripts against. The `sgde` command is a thin face over it.

    from libsgde.client import Client
    c = Client()                       # certificates and token under $SGDE_HOME
    c.login("alice", password)
    c.push("model.safetensors", "alice/digits")
    for m in c.list_models(): print(m.name)

    ds = c.upload_dataset("adult.csv")                      # training runs in the silo's trainer
    job = c.create_job(TrainSpec("cvae", target_epsilon=1.0), schema, ds.name, "adult-cvae")
    for event in c.watch_job(job.name): print(event.step, event.epsilon_spent)
    c.publish_job(job.name)                                 # signed here: the key never leaves this machine

    s = c.sample("alice/adult-dp", 10_000, seed=1)          # the sampler streams synthetic data, checked by sha256
    s.values["age"], s.labels, s.metadata.privacy.epsilon
    c.sample("alice/adult-dp", class_counts={"yes": 500, "no": 500}, format="csv", out="synthetic.csv")
    sample_local("alice-adult-dp-v1.safetensors", 10_000, seed=1)  # a pulled artifact, no server: the same values

    m = train_local("adult.csv", "schema.json", TrainSpec("cvae", 1.0))  # no service: trained here, signed if
    c.push(m.path, "alice/adult-cvae")                                   # a key is here; published later

One module a concern: `registry` (accounts, models, versions, verified transfers), `jobs` (the trainer), `sampling`
(the sampler), `local` (sampling with no server), `training` (training with no server), `session` (the `Client`
that joins them with the user's files), `names`.
Failures raise the classes of libsgde.errors (`NotFound`, `FieldError`, ...), re-exported here.
"""

from __future__ import annotations

from libsgde.client.local import sample_local
from libsgde.client.names import job_name, model_name, version_name
from libsgde.client.registry import RegistrySession
from libsgde.client.sampling import Samples
from libsgde.client.session import Client, token_expiry
from libsgde.client.training import LocalModel, train_local
from libsgde.client.transfers import publish_requests
from libsgde.errors import SgdeError, VerificationError

__all__ = [
    "Client",
    "LocalModel",
    "RegistrySession",
    "Samples",
    "SgdeError",
    "VerificationError",
    "job_name",
    "model_name",
    "publish_requests",
    "sample_local",
    "token_expiry",
    "train_local",
    "version_name",
]
