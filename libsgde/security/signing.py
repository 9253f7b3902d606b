"""Users' Ed25519 signing keys and the signatures on model artifacts.

A user's private key stays on their machine (PEM PKCS8, mode 0600); the registry knows the raw 32-byte public key.
What is signed is the artifact's sha256 behind a domain-separation prefix, so a signature over an artifact can
never be replayed as a signature over anything else.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from libsgde.domain.names import SHA256_RE
from libsgde.io.atomic import write_private
from libsgde.security.tls import PkiError

ARTIFACT_DOMAIN = b"sgde/v1/artifact-sha256:"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class SigningKeyError(PkiError):
    """A signing key file that is missing, unreadable, corrupt or too open; the message says what to do."""


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_signing_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Saves the key as unencrypted PEM PKCS8, mode 0600. Never replaces a key: FileExistsError if `path` exists."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to replace a signing key")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(path, pem, exclusive=True)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Loads a key saved by `save_signing_key`; refuses one that group or others can read."""
    path = Path(path)
    try:
        st = path.stat()
        if os.name == "posix" and st.st_mode & 0o077:
            raise SigningKeyError(
                f"signing key {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):o}): run `chmod 600 {path}`"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(
            f"no signing key at {path}: it is made when you register; copy it from the machine you registered on"
        ) from None
    except PermissionError:
        raise SigningKeyError(f"signing key {path} is not readable by this user") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(f"signing key {path} is corrupt or encrypted ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 signing key")
    return key


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# Ed25519 points, to refuse public keys that are not canonical, not on the curve, or of small order (such a key
# makes signatures that verify for many messages).
_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode_point(raw: bytes) -> tuple[int, int] | None:
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _double(pt: tuple[int, int]) -> tuple[int, int]:
    x, y = pt  # complete twisted Edwards addition with a = -1, of a point with itself
    t = _D * x * x * y * y % _P
    return (2 * x * y * pow(1 + t, -1, _P) % _P, (y * y + x * x) * pow(1 - t, -1, _P) % _P)


def parse_public_key(raw: bytes) -> Ed25519PublicKey:
    """A raw 32-byte Ed25519 public key; ValueError unless it is a canonical point on the curve of large order."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is exactly {PUBLIC_KEY_BYTES} bytes")
    raw = bytes(raw)
    point = _decode_point(raw)
    if point is None:
        raise ValueError("not a point on the Ed25519 curve")
    eight = _double(_double(_double(point)))
    if eight == (0, 1):
        raise ValueError("a small-order Ed25519 point is not a usable public key")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise ValueError(f"not a valid Ed25519 public key ({e})") from None


def artifact_message(sha256_hex: str) -> bytes:
    """What is signed for an artifact: a domain prefix and its sha256 in lowercase hex."""
    if not isinstance(sha256_hex, str) or not SHA256_RE.fullmatch(sha256_hex.lower()):
        raise ValueError("an artifact digest is 64 hexadecimal characters (sha256)")
    return ARTIFACT_DOMAIN + sha256_hex.lower().encode("ascii")


def sign_artifact(key: Ed25519PrivateKey, sha256_hex: str) -> bytes:
    """The 64-byte Ed25519 signature over `artifact_message(sha256_hex)`."""
    return key.sign(artifact_message(sha256_hex))


def verify_artifact(public_raw: bytes, sha256_hex: str, signature: bytes) -> bool:
    """Whether `signature` is the owner of `public_raw` signing this artifact digest; False for anything malformed."""
    try:
        key = parse_public_key(public_raw)
        message = artifact_message(sha256_hex)
    except ValueError:
        return False
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        key.verify(bytes(signature), message)
    except InvalidSignature:
        return False
    return True


def fingerprint(public_raw: bytes) -> str:
    """A short fingerprint people can compare, like ssh's: `SHA256:<base64 of sha256(public key)>`."""
    digest = hashlib.sha256(bytes(public_raw)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")
