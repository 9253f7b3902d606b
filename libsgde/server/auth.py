"""Users' passwords, login throttling and bearer tokens.

Passwords follow NIST SP 800-63B: a length floor and ceiling, no composition rules, a check against the
username and the most common passwords, and a memory-hard hash (scrypt) whose parameters are stored with it so they
can rise later. Tokens are short-lived JWTs signed with Ed25519 (EdDSA) by the registry; verifiers accept EdDSA
only, which shuts out `alg: none` and the HS256-with-the-public-key confusion.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from libsgde import errors
from libsgde.io.atomic import write_private

# --------------------------------------------------------------------------------------------------- passwords

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256

# The most common passwords long enough to pass the length rule (shorter ones fail it anyway), and words of this
# service. Compared case-insensitively.
COMMON_PASSWORDS = frozenset(
    {
        "password123",
        "password1234",
        "password12345",
        "password123!",
        "password1!",
        "passw0rd123",
        "p@ssw0rd123",
        "1234567890",
        "12345678910",
        "0987654321",
        "123456789a",
        "1234567890a",
        "abc1234567",
        "abcdefghij",
        "qwertyuiop",
        "qwerty1234",
        "qwerty12345",
        "qwerty123456",
        "1q2w3e4r5t",
        "1qaz2wsx3edc",
        "qazwsxedc123",
        "asdfghjkl1",
        "zxcvbnm123",
        "iloveyou12",
        "iloveyou123",
        "letmein123",
        "welcome123",
        "changeme123",
        "administrator",
        "admin12345",
        "princess123",
        "football123",
        "baseball123",
        "sunshine123",
        "superman123",
        "monkey12345",
        "dragon12345",
        "trustno1234",
        "sgdepassword",
        "sgde123456",
    }
)

# scrypt: n = 2**15, r = 8 needs 128 * r * n = 32 MiB.
SCRYPT_LOG2_N = 15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_DKLEN = 32
SALT_BYTES = 16
_MAX_LOG2_N, _MAX_R, _MAX_P = 22, 32, 16  # bounds on stored parameters, so a bad row cannot exhaust memory


class PasswordPolicyError(ValueError):
    """A password the policy refuses; the message says what to change."""


def _normalise(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


def normalised_length(password: str) -> int:
    """The length the policy's limits apply to (after NFKC)."""
    return len(_normalise(password))


def check_password_policy(password: str, username: str) -> None:
    """Raises PasswordPolicyError unless `password` is acceptable for `username` (NIST SP 800-63B style)."""
    password = _normalise(password)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(
            f"too short: use at least {MIN_PASSWORD_LENGTH} characters (a few unrelated words make a good passphrase)"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"too long: use at most {MAX_PASSWORD_LENGTH} characters")
    lowered = password.casefold()
    if username and username.casefold() in lowered:
        raise PasswordPolicyError("must not contain the username: choose something unrelated to it")
    if len(set(password)) == 1:
        raise PasswordPolicyError("must not be one character repeated: choose something less guessable")
    if lowered in COMMON_PASSWORDS:
        raise PasswordPolicyError("is one of the most common passwords: choose something less guessable")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        _normalise(password).encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=128 * r * n * p + (16 << 20)
    )


def hash_password(password: str) -> str:
    """`scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>` with a fresh 16-byte salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN)
    return f"scrypt${SCRYPT_LOG2_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches `encoded` (constant-time compare); False for a malformed encoding."""
    try:
        scheme, log2_n, r, p, salt_b64, hash_b64 = encoded.split("$")
        log2_n_i, r_i, p_i = int(log2_n), int(r), int(p)
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
    except (AttributeError, ValueError, TypeError):
        return False
    if (
        scheme != "scrypt"
        or not 1 <= log2_n_i <= _MAX_LOG2_N
        or not 1 <= r_i <= _MAX_R
        or not 1 <= p_i <= _MAX_P
        or len(salt) < 8
        or not 16 <= len(expected) <= 64
    ):
        return False
    try:
        actual = _scrypt(password, salt, log2_n_i, r_i, p_i, len(expected))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


def burn_password_check(password: str) -> None:
    """Spends the time of one real check; call it when the user does not exist, so timing does not tell."""
    _scrypt(password, b"\0" * SALT_BYTES, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN)


class PasswordChecks:
    """Bounds how many password checks (scrypt, 32 MiB each) run at once in this process. A caller that finds every
    slot taken is refused at once (UNAVAILABLE, retry in a second) instead of queueing: a storm of logins, which needs
    no account, cannot take the memory of the process. `hash`, `verify` and `burn` are to be called inside `slot()`;
    `running`, `peak` and `computed` count the checks they run, for metrics and tests."""

    RETRY_AFTER_SECONDS = 1.0

    def __init__(self, max_concurrent: int):
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, not {max_concurrent}")
        self.max_concurrent = max_concurrent
        self._lock = threading.Lock()
        self._slots_taken = 0
        self.running = 0  # scrypt computations in progress
        self.peak = 0  # the most that ran at once
        self.computed = 0
        self.refused = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self._slots_taken >= self.max_concurrent:
                self.refused += 1
                raise errors.Unavailable(
                    f"the registry is checking as many passwords as it may at once: try again in "
                    f"{int(self.RETRY_AFTER_SECONDS)} s",
                    retry_after=self.RETRY_AFTER_SECONDS,
                )
            self._slots_taken += 1
        try:
            yield
        finally:
            with self._lock:
                self._slots_taken -= 1

    @contextmanager
    def _counted(self) -> Iterator[None]:
        with self._lock:
            self.running += 1
            self.computed += 1
            self.peak = max(self.peak, self.running)
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1

    def hash(self, password: str) -> str:
        with self._counted():
            return hash_password(password)

    def verify(self, password: str, encoded: str) -> bool:
        with self._counted():
            return verify_password(password, encoded)

    def burn(self, password: str) -> None:
        with self._counted():
            burn_password_check(password)


LOCKOUT_FREE_FAILURES = 4
LOCKOUT_BASE_SECONDS = 30.0
LOCKOUT_MAX_SECONDS = 15 * 60.0


def lockout_seconds(consecutive_failures: int, free_failures: int = LOCKOUT_FREE_FAILURES) -> float:
    """How long to refuse logins after this many consecutive failures: none for the first `free_failures` (4), then
    30 s doubling with each further failure, at most 15 minutes."""
    extra = consecutive_failures - free_failures - 1
    if extra < 0:
        return 0.0
    return min(LOCKOUT_BASE_SECONDS * 2.0 ** min(extra, 32), LOCKOUT_MAX_SECONDS)


@dataclass(frozen=True)
class LockoutPolicy:
    """When failed logins of one subject (an account name, a source address) lock it: after `free_failures`, for
    `lockout_seconds`; failures are forgotten after `forget_after_seconds` without an attempt, or (for an account)
    at its next successful login."""

    free_failures: int
    forget_after_seconds: float

    def lock_seconds(self, failures: int) -> float:
        return lockout_seconds(failures, self.free_failures)


def source_address(peer: str) -> str:
    """Whom failed logins from a gRPC peer (`ipv4:10.0.0.7:51000`, `ipv6:[2001:db8::1]:51000`) are counted against:
    the IPv4 address, or the IPv6 /64 (one host can take any address of its /64); another kind of peer as it is."""
    kind, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0].strip("[]") if kind in ("ipv4", "ipv6") else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return peer[:90]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:  # an IPv4 client of a dual-stack server
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


# An account allows 5 checks, then locks; a source address (one attacker spraying many names, or locking many
# accounts out) allows more, since many people may share it, but slows down the same way.
ACCOUNT_LOCKOUT = LockoutPolicy(free_failures=LOCKOUT_FREE_FAILURES, forget_after_seconds=24 * 3600.0)
SOURCE_FREE_FAILURES = 30
SOURCE_FORGET_SECONDS = 3600.0


# --------------------------------------------------------------------------------------------------- tokens

ALGORITHM = "EdDSA"


class InvalidToken(Exception):
    """A bearer token that was refused; str() is a message a person can act on."""


@dataclass(frozen=True)
class TokenClaims:
    username: str
    expires_at: datetime
    token_id: str
    # The account's id (claim `uid`), so that a name registered again after its account was deleted does not
    # inherit the old account's tokens. None in a token that lacks it.
    user_id: int | None = None


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short id of a token key (the JWT `kid` header), so a rotated key can be told apart."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


class TokenIssuer:
    """Issues signed, expiring bearer tokens (JWT, EdDSA) for users who have logged in."""

    def __init__(
        self,
        private_key: Ed25519PrivateKey,
        issuer: str = "sgde-registry",
        audience: str = "sgde",
        lifetime: timedelta = timedelta(hours=1),
    ):
        if lifetime <= timedelta(0):
            raise ValueError("token lifetime must be positive")
        self._key = private_key
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime
        self._kid = key_id(private_key.public_key())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def issue(self, username: str, now: datetime | None = None, *, user_id: int | None = None) -> tuple[str, datetime]:
        """Returns (token, expires_at). `now` (default: the clock) lets tests make tokens that are already expired;
        `user_id` binds the token to that account (claim `uid`)."""
        if not username:
            raise ValueError("username is empty")
        now = now or datetime.now(UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        iat = int(now.timestamp())
        exp = iat + int(self.lifetime.total_seconds())
        payload = {
            "sub": username,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": secrets.token_urlsafe(16),
        }
        if user_id is not None:
            payload["uid"] = user_id
        token = jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})
        return token, datetime.fromtimestamp(exp, UTC)


_RELOGIN = "run `sgde login` again"


class TokenVerifier:
    """Checks bearer tokens: EdDSA signature by the registry's key, issuer, audience, time window, required claims."""

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        issuer: str = "sgde-registry",
        audience: str = "sgde",
        leeway_seconds: float = 5,
    ):
        self._key = public_key
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway_seconds

    def verify(self, token: str) -> TokenClaims:
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise InvalidToken(f"malformed token: {_RELOGIN}")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"], "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken(f"token expired: {_RELOGIN}") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken(f"token signature invalid (not issued by this registry's key): {_RELOGIN}") from None
        except jwt.InvalidAlgorithmError:
            raise InvalidToken(f"token algorithm not allowed (only {ALGORITHM}): {_RELOGIN}") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken(f"wrong audience: the token is not meant for {self.audience!r}; {_RELOGIN}") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken(f"wrong issuer: the token was not issued by {self.issuer!r}; {_RELOGIN}") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token not valid yet: check this machine's clock against the registry's") from None
        except jwt.MissingRequiredClaimError as e:
            raise InvalidToken(f"token lacks the {e.claim!r} claim: {_RELOGIN}") from None
        except jwt.DecodeError:
            raise InvalidToken(f"malformed token: {_RELOGIN}") from None
        except jwt.InvalidTokenError as e:
            raise InvalidToken(f"invalid token ({e}): {_RELOGIN}") from None
        sub, jti, exp = claims.get("sub"), claims.get("jti"), claims.get("exp")
        if not isinstance(sub, str) or not sub or not isinstance(jti, str) or not jti:
            raise InvalidToken(f"invalid token (bad sub or jti): {_RELOGIN}")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise InvalidToken(f"invalid token (bad exp): {_RELOGIN}")
        uid = claims.get("uid")
        if uid is not None and (isinstance(uid, bool) or not isinstance(uid, int)):
            raise InvalidToken(f"invalid token (bad uid): {_RELOGIN}")
        return TokenClaims(username=sub, expires_at=datetime.fromtimestamp(exp, UTC), token_id=jti, user_id=uid)


def load_or_create_token_key(path: Path) -> Ed25519PrivateKey:
    """The registry's token signing key: loaded from `path` (PEM PKCS8), or made and saved there (mode 0600)."""
    path = Path(path)
    for _ in range(2):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            try:
                write_private(path, pem, exclusive=True)
            except FileExistsError:  # another process made it first: use theirs
                continue
            return key
        try:
            loaded = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{path} is not a PEM private key ({e}); remove it to make a new one "
                "(every issued token becomes invalid)"
            ) from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a {type(loaded).__name__}, not an Ed25519 key; remove it to make a new one")
        return loaded
    raise RuntimeError(f"could not read or create {path}")  # pragma: no cover


def bearer_token_from_metadata(metadata) -> str | None:
    """The token of the first `authorization: Bearer <token>` entry of gRPC invocation metadata, or None."""
    for entry in metadata or ():
        key, value = (entry.key, entry.value) if hasattr(entry, "key") else entry
        if str(key).lower() != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = str(value).strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return token
        return None
    return None
