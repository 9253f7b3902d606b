"""The registry gate the trainer and the sampler share: who is calling (each user's bearer token checked with the
registry, WhoAmI over mutual TLS with the service's own certificate, the answer remembered briefly), and a registry
session acting with that user's forwarded token over the same channel (the trainer's publishes, the sampler's
downloads)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

import grpc
import jwt
from google.protobuf import empty_pb2

from libsgde import errors
from libsgde.client.registry import RegistrySession
from libsgde.server import auth
from libsgde.wire.limits import secure_channel
from libsgde.wire.proto.sgde.v1 import registry_pb2_grpc


def _seconds_left(token: str) -> float:
    """Seconds until the token's own expiry: a remembered answer must not outlive the token. The registry has just
    verified the token, so only its `exp` claim is read here."""
    try:
        return float(jwt.decode(token, options={"verify_signature": False})["exp"]) - time.time()
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return 0.0  # not a token we can read: do not remember the answer


class RegistryGate:
    """`renewed()`, if given, returns new credentials once the service's certificate files have changed (cert-manager
    renewed them; see tls.renewable_channel_credentials): each `check()` asks, and moves to a new channel with them."""

    def __init__(
        self,
        address: str,
        credentials: grpc.ChannelCredentials,
        cache_seconds: float = 30.0,
        timeout: float = 10.0,
        max_entries: int = 10_000,
        renewed: Callable[[], grpc.ChannelCredentials | None] | None = None,
    ):
        self.address = address
        self.channel = secure_channel(address, credentials)
        self.stub = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self._renewed = renewed
        # Channels left for renewed credentials: calls and forwarding clients still on them finish there.
        self._retired: list[grpc.Channel] = []
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self.max_entries = max_entries
        # sha256(token) -> (username, expires at): the tokens themselves are not kept.
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        for channel in [*self._retired, self.channel]:
            channel.close()

    def _renew(self) -> None:
        credentials = self._renewed() if self._renewed else None
        if credentials is None:
            return
        channel = secure_channel(self.address, credentials)
        with self._lock:
            self._retired.append(self.channel)
            self.channel, self.stub = channel, registry_pb2_grpc.RegistryServiceStub(channel)

    def caller(self, context: grpc.ServicerContext) -> tuple[str, str]:
        """(username, token) of the call's user; UNAUTHENTICATED without a valid token, UNAVAILABLE when the
        registry cannot be asked."""
        token = auth.bearer_token_from_metadata(context.invocation_metadata())
        if not token:
            raise errors.Unauthenticated("no bearer token: run `sgde login` (metadata `authorization: Bearer ...`)")
        return self.username(token), token

    def username(self, token: str) -> str:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[1] > now:
                return hit[0]
        try:
            user = self.stub.WhoAmI(
                empty_pb2.Empty(), metadata=[("authorization", f"Bearer {token}")], timeout=self.timeout
            )
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise errors.Unauthenticated(f"the registry refused the token: {e.details()}") from None
            raise errors.Unavailable(
                f"cannot check the token with the registry at {self.address}: "
                f"{code.name if code else 'ERROR'}: {e.details()}"
            ) from None
        with self._lock:
            if len(self._cache) >= self.max_entries:
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                if len(self._cache) >= self.max_entries:
                    self._cache.clear()
            self._cache[key] = (user.username, now + min(self.cache_seconds, _seconds_left(token)))
        return user.username

    def check(self) -> None:
        """Raises unless the registry answers (for the health watcher); first moves to renewed credentials."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self._renew()
        reply = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise errors.Unavailable("the registry is not serving")

    def session_for(self, token: str, username: str) -> RegistrySession:
        """A registry session acting with the user's forwarded token, over this channel (it reads no files)."""
        return RegistrySession(self.channel, token, username)
