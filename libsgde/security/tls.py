"""A development PKI for mutual TLS, and the gRPC credentials made from it.

`init_pki` makes, under one directory (mode 0700), an EC P-256 certificate authority and one certificate per
service (server + client auth: services also call each other) and one for `client` (client auth only). Private
keys are created 0600 and every file is written atomically (temp file + rename), so a crash never leaves half a
key behind. In a cluster, cert-manager issues the same kind of certificates; `credentials_from_files` reads them
from wherever they are mounted.
"""

from __future__ import annotations

import contextlib
import fcntl  # POSIX: the services and the CLI run on Linux and macOS
import ipaddress
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from libsgde.errors import FailedPrecondition
from libsgde.io.atomic import write_atomic, write_private

SERVICES = ("registry", "trainer", "sampler")
CLIENT = "client"

CLOCK_SKEW = timedelta(minutes=5)  # certificates start a little in the past so a slow clock still accepts them
RENEW_BEFORE = timedelta(days=30)  # init_pki reissues a certificate this close to its end
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


class PkiError(FailedPrecondition):
    """Missing or unusable PKI material; the message says what to run."""


@dataclass(frozen=True)
class PkiPaths:
    """Where `init_pki` keeps the CA and the certificates. The CA's key lives in a folder of its own beside the PKI
    folder (`pki` -> `pki-ca/ca.key`), so that handing the PKI folder (certificates and the keys that go with them) to
    a machine or a pod never hands over the power to issue certificates."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root.parent / f"{self.root.name or 'pki'}-ca" / "ca.key"

    @property
    def legacy_ca_key(self) -> Path:
        """Where releases before 0.2 kept the CA key: beside the client's key."""
        return self.root / "ca.key"

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"


# --------------------------------------------------------------------------------------------------- files


def write_public(path: Path, data: bytes) -> None:
    """Writes a non-secret file (a certificate) atomically, mode 0644."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, mode=0o644)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PkiError(
            f"{what} {path} is missing: run `sgde certs init` "
            "(or point SGDE_PKI_DIR at the directory that holds the certificates)"
        ) from None
    except PermissionError:
        raise PkiError(f"{what} {path} is not readable by this user") from None


# --------------------------------------------------------------------------------------------------- certificates


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def make_ca(common_name: str = "SGDE development CA", days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed EC P-256 CA that may sign leaf certificates only (pathlen 0). Returns (cert_pem, key_pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SGDE"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    common_name: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    *,
    server: bool = True,
    client: bool = True,
    days: int = 825,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[bytes, bytes]:
    """An EC P-256 leaf certificate signed by the CA. Returns (cert_pem, key_pem).

    `server` / `client` choose the extended key usages; `not_before` / `not_after` override the validity window
    (tests use them to make expired certificates)."""
    if not (server or client):
        raise ValueError("a certificate needs server or client authentication (or both)")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError("the CA key is not an elliptic-curve key (make the PKI with `sgde certs init --force`)")
    key = ec.generate_private_key(ec.SECP256R1())
    start = _utc(not_before) if not_before else datetime.now(UTC) - CLOCK_SKEW
    end = _utc(not_after) if not_after else start + CLOCK_SKEW + timedelta(days=days)
    if end <= start:
        raise ValueError("not_after must be later than not_before")
    usages = [
        oid
        for oid, wanted in ((ExtendedKeyUsageOID.SERVER_AUTH, server), (ExtendedKeyUsageOID.CLIENT_AUTH, client))
        if wanted
    ]
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SGDE"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if sans:  # an empty SAN extension is invalid (RFC 5280); a pure client certificate may have none
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def split_names(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits names into (dns_names, ip_addresses), normalised; PkiError for something that is neither."""
    dns: list[str] = []
    ips: list[str] = []
    for raw in names:
        name = raw.strip()
        try:
            ips.append(str(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        if len(name) > 253 or not _DNS_RE.fullmatch(name):
            raise PkiError(f"{raw!r} is neither a DNS name nor an IP address")
        dns.append(name.lower())
    return dns, ips


def service_names(service: str, extra_names: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """The (dns_names, ip_addresses) a service certificate carries."""
    dns, ips = split_names(extra_names)
    return (_unique(["localhost", service, f"sgde-{service}", *dns]), _unique(["127.0.0.1", "::1", *ips]))


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _cert_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return (
        [n.lower() for n in san.get_values_for_type(x509.DNSName)],
        [str(a) for a in san.get_values_for_type(x509.IPAddress)],
    )


def _usable(paths: PkiPaths, name: str, ca: x509.Certificate, dns: Sequence[str], ips: Sequence[str]) -> bool:
    """Whether an existing certificate can stay: present with its key, signed by this CA, not near its end, and
    carrying every wanted name."""
    try:
        cert_pem, key_pem = paths.cert(name).read_bytes(), paths.key(name).read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    if not _matches(cert_pem, key_pem):
        return False
    if cert.not_valid_after_utc - datetime.now(UTC) < RENEW_BEFORE:
        return False
    have_dns, have_ips = _cert_names(cert)
    return set(dns) <= set(have_dns) and set(ips) <= set(have_ips)


def _matches(cert_pem: bytes, key_pem: bytes) -> bool:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialises init_pki between processes (two services starting at once must not make two CAs)."""
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def init_pki(root: Path, extra_names: Sequence[str] = (), *, force: bool = False) -> PkiPaths:
    """Makes (or completes) a development PKI under `root` and returns its paths.

    Idempotent: an existing CA and certificates are kept unless `force`; a certificate is reissued when it is
    missing, unreadable, not from this CA, within 30 days of its end, or lacks one of `extra_names` (DNS names or IP
    addresses added to every service certificate; the names it already had are kept)."""
    if isinstance(extra_names, str):
        extra_names = [extra_names]
    paths = PkiPaths(Path(root).expanduser())
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):  # e.g. a directory that belongs to someone else: the keys are 0600 anyway
        os.chmod(paths.root, 0o700)
    split_names(extra_names)  # fail on a bad name before touching anything
    with _locked(paths.root):
        if paths.legacy_ca_key.exists() and not paths.ca_key.exists():
            paths.ca_key.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(paths.legacy_ca_key, paths.ca_key)
        ca_pem: bytes | None = None
        ca_key_pem: bytes | None = None
        reissue_all = force
        if not force and paths.ca_cert.exists():
            ca_pem = paths.ca_cert.read_bytes()
            ca_key_pem = paths.ca_key.read_bytes() if paths.ca_key.exists() else None
            if ca_key_pem is not None and not _matches(ca_pem, ca_key_pem):
                ca_key_pem = None  # e.g. a crash between writing a new ca.key and its ca.crt
        else:
            ca_pem, ca_key_pem = make_ca()
            write_private(paths.ca_key, ca_key_pem)
            write_public(paths.ca_cert, ca_pem)
            reissue_all = True
        try:
            ca = x509.load_pem_x509_certificate(ca_pem)
        except ValueError:
            raise PkiError(f"{paths.ca_cert} is not a PEM certificate: run `sgde certs init --force`") from None

        wanted: list[tuple[str, list[str], list[str], bool]] = [
            (s, *service_names(s, extra_names), True) for s in SERVICES
        ]
        wanted.append((CLIENT, [CLIENT], [], False))
        for name, dns, ips, server in wanted:
            if not reissue_all and _usable(paths, name, ca, dns, ips):
                continue
            if ca_key_pem is None:
                raise PkiError(
                    f"{paths.cert(name)} must be (re)issued but the CA key {paths.ca_key} is missing "
                    f"or does not match {paths.ca_cert.name}: "
                    "run `sgde certs init --force` to make a new CA"
                )
            if not force and paths.cert(name).exists():  # keep the names it already had
                with contextlib.suppress(Exception):
                    old_dns, old_ips = _cert_names(x509.load_pem_x509_certificate(paths.cert(name).read_bytes()))
                    dns, ips = _unique([*dns, *old_dns]), _unique([*ips, *old_ips])
            cert_pem, key_pem = issue_certificate(ca_pem, ca_key_pem, name, dns, ips, server=server, client=True)
            write_private(paths.key(name), key_pem)
            write_public(paths.cert(name), cert_pem)
    return paths


# --------------------------------------------------------------------------------------------------- gRPC


def credentials_from_files(ca: Path, cert: Path, key: Path) -> tuple[bytes, bytes, bytes]:
    """Reads (ca_pem, cert_pem, key_pem) from any paths (e.g. a cert-manager Secret: ca.crt, tls.crt, tls.key)."""
    return _read(ca, "CA certificate"), _read(cert, "certificate"), _read(key, "private key")


def _renewed(
    ca: Path, cert: Path, key: Path, loaded: tuple[bytes, bytes, bytes]
) -> Callable[[], tuple[bytes, bytes, bytes] | None]:
    """A function that returns the files' (ca, cert, key) when they differ from the last ones it saw (starting
    from `loaded`), else None. A set it cannot read, or whose key does not match its certificate (caught while
    being rewritten), counts as no change: the previous one stays in use."""
    last = [loaded]

    def renewed() -> tuple[bytes, bytes, bytes] | None:
        try:
            pems = credentials_from_files(ca, cert, key)
        except PkiError:
            return None
        if pems == last[0] or not _matches(pems[1], pems[2]):
            return None
        last[0] = pems
        return pems

    return renewed


def server_credentials_from_files(ca: Path, cert: Path, key: Path) -> grpc.ServerCredentials:
    """Server side of mutual TLS: presents `cert`, and requires a client certificate signed by `ca`.

    The files are looked at again before each new connection's handshake, so a renewed certificate (cert-manager
    rewrites the mounted Secret well before the old one ends) is served from then on, without a restart."""
    loaded = credentials_from_files(ca, cert, key)
    renewed = _renewed(ca, cert, key, loaded)

    def configuration(pems: tuple[bytes, bytes, bytes]) -> grpc.ServerCertificateConfiguration:
        ca_pem, cert_pem, key_pem = pems
        return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], root_certificates=ca_pem)

    def fetch() -> grpc.ServerCertificateConfiguration | None:  # None: keep the current one
        pems = renewed()
        return configuration(pems) if pems else None

    return grpc.dynamic_ssl_server_credentials(configuration(loaded), fetch, require_client_authentication=True)


def _channel_credentials(pems: tuple[bytes, bytes, bytes]) -> grpc.ChannelCredentials:
    ca_pem, cert_pem, key_pem = pems
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)


def channel_credentials_from_files(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    """Client side of mutual TLS: trusts only `ca` and presents `cert`."""
    return _channel_credentials(credentials_from_files(ca, cert, key))


def server_credentials(paths: PkiPaths, service: str) -> grpc.ServerCredentials:
    return server_credentials_from_files(paths.ca_cert, paths.cert(service), paths.key(service))


def channel_credentials(paths: PkiPaths, identity: str = CLIENT) -> grpc.ChannelCredentials:
    return channel_credentials_from_files(paths.ca_cert, paths.cert(identity), paths.key(identity))


def renewable_channel_credentials(
    paths: PkiPaths, identity: str
) -> tuple[grpc.ChannelCredentials, Callable[[], grpc.ChannelCredentials | None]]:
    """Client credentials from the files now, and a function that returns new ones once the files have changed
    (a renewed certificate), else None. gRPC cannot change a channel's credentials: a long-lived client (a service
    calling the registry) calls it now and then and opens a new channel with what it returns."""
    files = (paths.ca_cert, paths.cert(identity), paths.key(identity))
    loaded = credentials_from_files(*files)
    renewed = _renewed(*files, loaded)

    def fetch() -> grpc.ChannelCredentials | None:
        pems = renewed()
        return _channel_credentials(pems) if pems else None

    return _channel_credentials(loaded), fetch


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The common name of the verified client certificate of this call, or None."""
    try:
        values = context.auth_context().get("x509_common_name") or []
    except Exception:  # noqa: BLE001 - no auth context (e.g. an insecure test server)
        return None
    for value in values:
        return value.decode() if isinstance(value, bytes) else str(value)
    return None
