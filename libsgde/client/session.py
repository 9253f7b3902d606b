"""`Client`: the SDK's one object. A registry session (libsgde.client.registry) with the user's own files under
$SGDE_HOME (certificates, the saved token, signing keys), plus the trainer's and the sampler's calls."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from libsgde import config
from libsgde.client.federations import Federations
from libsgde.client.jobs import Jobs
from libsgde.client.names import model_name
from libsgde.client.sampling import Sampling
from libsgde.client.transfers import Progress
from libsgde.domain.resources import ModelVersion, Session, User
from libsgde.io.artifact import file_digest
from libsgde.io.atomic import write_private
from libsgde.security import signing, tls
from libsgde.wire.convert import session_from_proto, user_from_proto
from libsgde.wire.limits import secure_channel
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.proto.sgde.v1 import sampler_pb2_grpc, trainer_pb2_grpc


class Client(Jobs, Sampling, Federations):
    """A connection to the registry (and, when used, the trainer and the sampler) over mutual TLS, acting for the
    user whose token is under $SGDE_HOME."""

    def __init__(
        self,
        registry: str | None = None,
        *,
        trainer: str | None = None,
        sampler: str | None = None,
        home: Path | None = None,
        pki: Path | None = None,
        identity: str = tls.CLIENT,
        token: str | None = None,
        timeout: float = 30.0,
    ):
        self.home = Path(home) if home else config.sgde_home()
        self.pki = tls.PkiPaths(Path(pki) if pki else (self.home / "pki" if home else config.pki_dir()))
        self.address = registry or config.service_address("registry")
        self.trainer_address = trainer or config.service_address("trainer")
        self.sampler_address = sampler or config.service_address("sampler")
        self.identity = identity
        self._channel = self._open(self.address)
        self._trainer_channel: grpc.Channel | None = None
        self._trainer: trainer_pb2_grpc.TrainerServiceStub | None = None
        self._sampler_channel: grpc.Channel | None = None
        self._sampler: sampler_pb2_grpc.SamplerServiceStub | None = None
        username = None
        if token is None:
            saved = self._load_token()
            if saved:
                token, username = saved["access_token"], saved["username"]
        super().__init__(self._channel, token, username, timeout)

    def _open(self, address: str) -> grpc.Channel:
        return secure_channel(address, tls.channel_credentials(self.pki, self.identity))

    @property
    def trainer(self) -> trainer_pb2_grpc.TrainerServiceStub:
        """The trainer's stub; its channel opens on first use."""
        if self._trainer is None:
            self._trainer_channel = self._open(self.trainer_address)
            self._trainer = trainer_pb2_grpc.TrainerServiceStub(self._trainer_channel)
        return self._trainer

    @property
    def sampler(self) -> sampler_pb2_grpc.SamplerServiceStub:
        """The sampler's stub; its channel opens on first use."""
        if self._sampler is None:
            self._sampler_channel = self._open(self.sampler_address)
            self._sampler = sampler_pb2_grpc.SamplerServiceStub(self._sampler_channel)
        return self._sampler

    def close(self) -> None:
        for channel in (self._channel, self._trainer_channel, self._sampler_channel):
            if channel is not None:
                channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the user's files ----------------------------------------------------------------------------------------

    @property
    def token_path(self) -> Path:
        return self.home / "token.json"

    def signing_key_path(self, username: str) -> Path:
        return self.home / "keys" / f"{username}.pem"

    def _load_token(self) -> dict | None:
        try:
            saved = json.loads(self.token_path.read_text())
        except (OSError, ValueError):
            return None
        if saved.get("registry") != self.address:
            return None
        return saved

    def register(self, username: str, email: str, password: str) -> User:
        """Registers a user. Their Ed25519 signing key is made here, kept under $SGDE_HOME/keys (mode 0600), and
        only its public half is sent."""
        key_path = self.signing_key_path(username)
        if key_path.exists():
            key = signing.load_signing_key(key_path)  # a retry after a failed registration keeps the same key
        else:
            key = signing.generate_signing_key()
            key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            signing.save_signing_key(key, key_path)
        return user_from_proto(
            self._call(
                self.registry.Register,
                rpb.RegisterRequest(
                    username=username, email=email, password=password, signing_public_key=signing.public_key_bytes(key)
                ),
                auth=False,
            )
        )

    def login(self, username: str, password: str, save: bool = True) -> Session:
        reply = session_from_proto(
            self._call(self.registry.Login, rpb.LoginRequest(username=username, password=password), auth=False)
        )
        self._token, self._username = reply.access_token, username
        if save:
            write_private(
                self.token_path,
                json.dumps(
                    {
                        "registry": self.address,
                        "username": username,
                        "access_token": reply.access_token,
                        "expires": reply.expire_time.isoformat() if reply.expire_time else None,
                    }
                ).encode(),
            )
        return reply

    def logout(self) -> None:
        self._token = self._username = None
        self.token_path.unlink(missing_ok=True)

    def push(
        self,
        path: str | Path,
        ref: str,
        *,
        create: bool = True,
        progress: Progress | None = None,
        timeout: float | None = None,
        **create_args: Any,
    ) -> ModelVersion:
        """Publishes an artifact file as the next version of a model (made first when `create` and missing).
        The file's sha256 is signed with the caller's signing key."""
        path = Path(path)
        me = self._me()
        key = signing.load_signing_key(self.signing_key_path(me))
        sha = file_digest(path).hexdigest()
        return self.publish_signed(
            path,
            model_name(ref, me),
            sha,
            signing.sign_artifact(key, sha),
            create=create,
            progress=progress,
            timeout=timeout,
            **create_args,
        )


def token_expiry(home: Path | None = None) -> datetime | None:
    """When the saved token expires, if there is one."""
    try:
        saved = json.loads(((home or config.sgde_home()) / "token.json").read_text())
        return datetime.fromisoformat(saved["expires"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
