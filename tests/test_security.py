"""libsgde.security: the development PKI and a real mutual-TLS handshake, passwords, tokens, artifact signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from libsgde.security import signing, tls
from libsgde.server import auth

# --------------------------------------------------------------------------------------------------- PKI


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def _eku(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _snapshot(root: Path) -> dict[str, bytes]:
    files = [*root.iterdir(), tls.PkiPaths(root).ca_key]
    return {p.name: p.read_bytes() for p in sorted(files) if p.suffix in (".crt", ".key")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> tls.PkiPaths:
    return tls.init_pki(tmp_path_factory.mktemp("pki") / "pki")


def test_pki_files_and_modes(pki):
    assert _mode(pki.root) == 0o700
    names = ("ca", *tls.SERVICES, tls.CLIENT)
    for name in names:
        key = pki.ca_key if name == "ca" else pki.key(name)
        cert = pki.ca_cert if name == "ca" else pki.cert(name)
        assert _mode(key) == 0o600, key
        assert _mode(cert) == 0o644, cert
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert not [p for p in pki.root.iterdir() if p.name.endswith(".tmp")]
    # The CA key is not in the folder whose keys go to machines and pods.
    assert not (pki.root / "ca.key").exists() and pki.ca_key.parent != pki.root
    assert _mode(pki.ca_key.parent) == 0o700


def test_a_ca_key_beside_the_client_key_is_moved_out(tmp_path):
    paths = tls.init_pki(tmp_path / "pki")
    key = paths.ca_key.read_bytes()
    os.replace(paths.ca_key, paths.legacy_ca_key)  # where the first releases kept it
    tls.init_pki(tmp_path / "pki", ["moved.example.org"])  # still able to issue: the key was found and moved
    assert not paths.legacy_ca_key.exists() and paths.ca_key.read_bytes() == key


def test_ca_and_leaf_certificates(pki):
    ca = _cert(pki.ca_cert)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    for service in tls.SERVICES:
        leaf = _cert(pki.cert(service))
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert _eku(leaf) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        dns, ips = _names(leaf)
        assert {"localhost", service, f"sgde-{service}"} <= dns
        assert {"127.0.0.1", "::1"} <= ips
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == service
    client = _cert(pki.cert(tls.CLIENT))
    client.verify_directly_issued_by(ca)
    assert _eku(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_init_pki_is_idempotent_and_reissues_for_new_names(tmp_path):
    root = tmp_path / "pki"
    tls.init_pki(root)
    before = _snapshot(root)
    tls.init_pki(root)
    assert _snapshot(root) == before

    tls.init_pki(root, ["sgde.example.org", "10.1.2.3"])
    after = _snapshot(root)
    assert after["ca.crt"] == before["ca.crt"] and after["ca.key"] == before["ca.key"]
    assert after["client.crt"] == before["client.crt"]
    for service in tls.SERVICES:
        assert after[f"{service}.crt"] != before[f"{service}.crt"]
        assert after[f"{service}.key"] != before[f"{service}.key"]
        dns, ips = _names(_cert(root / f"{service}.crt"))
        assert "sgde.example.org" in dns and "10.1.2.3" in ips and service in dns
    tls.init_pki(root, ["10.1.2.3"])  # names it has already: nothing changes
    assert _snapshot(root) == after
    tls.init_pki(root, ["other.example.org"])  # a new name is added; the earlier ones stay
    dns, ips = _names(_cert(root / "registry.crt"))
    assert {"sgde.example.org", "other.example.org"} <= dns and "10.1.2.3" in ips

    tls.init_pki(root, force=True)
    forced = _snapshot(root)
    assert forced["ca.crt"] != before["ca.crt"]
    dns, _ = _names(_cert(root / "registry.crt"))
    assert "sgde.example.org" not in dns  # --force starts over
    _cert(root / "registry.crt").verify_directly_issued_by(_cert(root / "ca.crt"))


def test_init_pki_repairs_and_refuses(tmp_path):
    root = tmp_path / "pki"
    paths = tls.init_pki(root)
    paths.key("trainer").unlink()  # a lost key: that certificate alone is reissued
    ca_before = paths.ca_cert.read_bytes()
    tls.init_pki(root)
    assert paths.key("trainer").exists() and paths.ca_cert.read_bytes() == ca_before
    assert _mode(paths.key("trainer")) == 0o600

    foreign_cert, foreign_key = tls.issue_certificate(*tls.make_ca("Other CA"), "sampler", ["localhost"])
    tls.write_public(paths.cert("sampler"), foreign_cert)  # a certificate from another CA is replaced
    tls.write_private(paths.key("sampler"), foreign_key)
    tls.init_pki(root)
    _cert(paths.cert("sampler")).verify_directly_issued_by(_cert(paths.ca_cert))

    paths.ca_key.unlink()  # without the CA key, usable certificates are still fine ...
    tls.init_pki(root)
    with pytest.raises(tls.PkiError, match="--force"):  # ... but nothing new can be issued
        tls.init_pki(root, ["new.example.org"])
    tls.write_private(paths.ca_key, tls.make_ca()[1])  # a CA key that does not match ca.crt is not used
    with pytest.raises(tls.PkiError, match="does not match"):
        tls.init_pki(root, ["new.example.org"])

    with pytest.raises(tls.PkiError, match="neither a DNS name nor an IP"):
        tls.init_pki(tmp_path / "x", ["bad name!"])


def test_missing_files_say_what_to_run(tmp_path):
    empty = tls.PkiPaths(tmp_path / "nothing")
    with pytest.raises(tls.PkiError, match="sgde certs init"):
        tls.server_credentials(empty, "registry")
    with pytest.raises(tls.PkiError, match="sgde certs init"):
        tls.channel_credentials(empty)


def test_write_private_is_0600_atomic_and_exclusive(tmp_path):
    target = tmp_path / "sub" / "secret"
    old = os.umask(0)
    try:
        tls.write_private(target, b"one")
    finally:
        os.umask(old)
    assert _mode(target) == 0o600 and target.read_bytes() == b"one"
    tls.write_private(target, b"two")
    assert target.read_bytes() == b"two"
    with pytest.raises(FileExistsError):
        tls.write_private(target, b"three", exclusive=True)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["secret"]


def test_issue_certificate_needs_a_usage():
    with pytest.raises(ValueError):
        tls.issue_certificate(*tls.make_ca(), "nobody", server=False, client=False)


# --------------------------------------------------------------------------------------------------- mTLS handshake

PEER_METHOD = "/sgde.test.Peer/CommonName"


@pytest.fixture(scope="module")
def server(pki):
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), srv)
    srv.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "sgde.test.Peer",
                {
                    "CommonName": grpc.unary_unary_rpc_method_handler(
                        lambda request, context: (tls.peer_common_name(context) or "").encode()
                    )
                },
            )
        ]
    )
    port = srv.add_secure_port("127.0.0.1:0", tls.server_credentials(pki, "registry"))
    srv.start()
    yield f"127.0.0.1:{port}"
    srv.stop(None)


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _refused(address: str, credentials: grpc.ChannelCredentials | None) -> None:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel, pytest.raises(grpc.RpcError) as info:
        _health(channel)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_mutual_tls_handshake_and_peer_name(server, pki):
    with grpc.secure_channel(server, tls.channel_credentials(pki)) as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert channel.unary_unary(PEER_METHOD)(b"", timeout=5) == b"client"
    with grpc.secure_channel(server, tls.channel_credentials(pki, "trainer")) as channel:  # service to service
        assert channel.unary_unary(PEER_METHOD)(b"", timeout=5) == b"trainer"


def test_certificate_from_a_foreign_ca_refused(server, pki):
    cert, key = tls.issue_certificate(*tls.make_ca("Mallory CA"), "client", ["localhost"], server=False)
    _refused(server, grpc.ssl_channel_credentials(pki.ca_cert.read_bytes(), key, cert))


def test_no_client_certificate_refused(server, pki):
    _refused(server, grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes()))


def test_expired_client_certificate_refused(server, pki):
    now = datetime.now(UTC)
    cert, key = tls.issue_certificate(
        pki.ca_cert.read_bytes(),
        pki.ca_key.read_bytes(),
        "client",
        server=False,
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    _refused(server, grpc.ssl_channel_credentials(pki.ca_cert.read_bytes(), key, cert))


def test_plaintext_refused(server):
    _refused(server, None)


def test_client_refuses_a_server_of_another_ca(server, tmp_path):
    _refused(server, tls.channel_credentials(tls.init_pki(tmp_path / "other")))


# --------------------------------------------------------------------------------------------------- passwords

GOOD_PASSWORD = "correct horse battery staple"


@pytest.mark.parametrize(
    "password, fragment",
    [
        ("short1!", "too short"),
        ("x" * 257 + "y", "too long"),
        ("my-Alice-account-pw", "username"),
        ("aaaaaaaaaaaa", "repeated"),
        ("Password123", "common"),
        ("QWERTYUIOP", "common"),
    ],
)
def test_password_policy_refuses(password, fragment):
    with pytest.raises(auth.PasswordPolicyError, match=fragment):
        auth.check_password_policy(password, "alice")


def test_password_policy_accepts():
    auth.check_password_policy(GOOD_PASSWORD, "alice")
    auth.check_password_policy("x" * 255 + "y", "alice")
    auth.check_password_policy("ünïcödé pässphrase", "alice")


@pytest.fixture(scope="module")
def encoded() -> str:
    return auth.hash_password(GOOD_PASSWORD)


def test_hash_format(encoded):
    scheme, log2_n, r, p, salt, digest = encoded.split("$")
    assert (scheme, log2_n, r, p) == ("scrypt", "15", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert GOOD_PASSWORD not in encoded


def test_verify_password(encoded):
    assert auth.verify_password(GOOD_PASSWORD, encoded)
    assert not auth.verify_password(GOOD_PASSWORD + "!", encoded)


def test_verify_password_with_other_parameters():
    salt = b"s" * 16
    digest = hashlib.scrypt(b"cheap parameters!", salt=salt, n=2**4, r=8, p=1, dklen=32)
    encoded = f"scrypt$4$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert auth.verify_password("cheap parameters!", encoded)  # stored parameters are honoured
    assert not auth.verify_password("other", encoded)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "scrypt",
        "scrypt$15$8$1$",
        "bcrypt$15$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
        "scrypt$x$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
        "scrypt$40$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,  # absurd cost: refused without computing
        "scrypt$4$8$1$not*base64$" + "A" * 44,
        "scrypt$4$8$1$c2FsdHNhbHRzYWx0c2FsdA==$QUFB",  # digest too short
        None,
    ],
)
def test_verify_password_malformed(bad):
    assert auth.verify_password(GOOD_PASSWORD, bad) is False


def test_burn_password_check_runs():
    auth.burn_password_check("whatever-it-is")


def test_lockout_schedule():
    assert [auth.lockout_seconds(n) for n in range(0, 12)] == [0, 0, 0, 0, 0, 30, 60, 120, 240, 480, 900, 900]
    assert auth.lockout_seconds(10**6) == 900
    assert auth.lockout_seconds(-1) == 0


# --------------------------------------------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def token_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides) -> dict:
    now = int(datetime.now(UTC).timestamp())
    claims = {
        "sub": "alice",
        "iss": "sgde-registry",
        "aud": "sgde",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "abc",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _refuse(verifier: auth.TokenVerifier, token, fragment: str) -> None:
    with pytest.raises(auth.InvalidToken) as info:
        verifier.verify(token)
    assert fragment in str(info.value), str(info.value)


def test_token_round_trip(token_key):
    issuer = auth.TokenIssuer(token_key)
    token, expires = issuer.issue("alice")
    claims = auth.TokenVerifier(issuer.public_key).verify(token)
    assert claims.username == "alice" and claims.expires_at == expires
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    assert (
        claims.token_id
        and claims.token_id != auth.TokenVerifier(token_key.public_key()).verify(issuer.issue("alice")[0]).token_id
    )
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["kid"]
    assert set(jwt.decode(token, options={"verify_signature": False})) == {
        "sub",
        "iss",
        "aud",
        "iat",
        "nbf",
        "exp",
        "jti",
    }


def test_expired_token(token_key):
    verifier = auth.TokenVerifier(token_key.public_key())
    token, _ = auth.TokenIssuer(token_key).issue("alice", now=datetime.now(UTC) - timedelta(hours=2))
    _refuse(verifier, token, "token expired: run `sgde login` again")
    # within the leeway, a token that just expired still passes
    just, _ = auth.TokenIssuer(token_key, lifetime=timedelta(seconds=10)).issue(
        "alice", now=datetime.now(UTC) - timedelta(seconds=12)
    )
    assert verifier.verify(just).username == "alice"


def test_forged_and_misdirected_tokens(token_key):
    verifier = auth.TokenVerifier(token_key.public_key())
    forged, _ = auth.TokenIssuer(Ed25519PrivateKey.generate()).issue("alice")
    _refuse(verifier, forged, "signature invalid")
    elsewhere, _ = auth.TokenIssuer(token_key, audience="elsewhere").issue("alice")
    _refuse(verifier, elsewhere, "wrong audience")
    other_issuer, _ = auth.TokenIssuer(token_key, issuer="someone-else").issue("alice")
    _refuse(verifier, other_issuer, "wrong issuer")
    future = jwt.encode(_claims(nbf=int(datetime.now(UTC).timestamp()) + 3600), token_key, algorithm="EdDSA")
    _refuse(verifier, future, "not valid yet")
    no_jti = jwt.encode(_claims(jti=None), token_key, algorithm="EdDSA")
    _refuse(verifier, no_jti, "'jti'")
    no_exp = jwt.encode(_claims(exp=None), token_key, algorithm="EdDSA")
    _refuse(verifier, no_exp, "'exp'")


def test_algorithm_confusion_refused(token_key):
    verifier = auth.TokenVerifier(token_key.public_key())
    payload = _b64url(json.dumps(_claims()).encode())
    unsigned = f"{_b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload}."
    _refuse(verifier, unsigned, "algorithm not allowed")
    public_pem = token_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_raw = token_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for secret in (public_pem, public_raw):
        signing_input = f"{_b64url(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{payload}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        _refuse(verifier, f"{signing_input}.{_b64url(mac)}", "algorithm not allowed")


@pytest.mark.parametrize("garbage", ["not-a-token", "", "a.b.c", "x" * 10000, None, "eyJhbGciOiJFZERTQSJ9.e30."])
def test_garbage_tokens(token_key, garbage):
    with pytest.raises(auth.InvalidToken):
        auth.TokenVerifier(token_key.public_key()).verify(garbage)


def test_token_key_file(tmp_path):
    path = tmp_path / "registry" / "token.pem"
    key = auth.load_or_create_token_key(path)
    assert _mode(path) == 0o600
    again = auth.load_or_create_token_key(path)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert again.public_key().public_bytes(*raw) == key.public_key().public_bytes(*raw)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a PEM private key"):
        auth.load_or_create_token_key(path)


def test_bearer_token_from_metadata():
    assert auth.bearer_token_from_metadata([("authorization", "Bearer abc.def")]) == "abc.def"
    assert auth.bearer_token_from_metadata([("x-other", "1"), ("Authorization", "bearer  tok ")]) == "tok"
    assert auth.bearer_token_from_metadata((("authorization", b"BEARER t"),)) == "t"
    assert auth.bearer_token_from_metadata([("authorization", "Basic dXNlcjpwdw==")]) is None
    assert auth.bearer_token_from_metadata([("authorization", "Bearer ")]) is None
    assert auth.bearer_token_from_metadata([]) is None
    assert auth.bearer_token_from_metadata(None) is None


# --------------------------------------------------------------------------------------------------- signing

SHA = hashlib.sha256(b"an artifact").hexdigest()


def test_sign_and_verify():
    key = signing.generate_signing_key()
    public = signing.public_key_bytes(key)
    assert len(public) == 32
    signature = signing.sign_artifact(key, SHA)
    assert len(signature) == 64
    assert signing.verify_artifact(public, SHA, signature)
    assert signing.verify_artifact(public, SHA.upper(), signature)  # the same digest
    tampered = ("0" if SHA[0] != "0" else "1") + SHA[1:]
    assert not signing.verify_artifact(public, tampered, signature)
    other = signing.public_key_bytes(signing.generate_signing_key())
    assert not signing.verify_artifact(other, SHA, signature)
    assert not signing.verify_artifact(public, SHA, signature[:-1])
    assert not signing.verify_artifact(public, SHA, signature + b"\0")
    assert not signing.verify_artifact(public, SHA, bytes(64))
    assert not signing.verify_artifact(public[:31], SHA, signature)
    assert not signing.verify_artifact(public, SHA[:-1], signature)
    assert not signing.verify_artifact(bytes(32), SHA, signature)
    # domain separation: the plain digest signed directly is not an artifact signature
    assert not signing.verify_artifact(public, SHA, key.sign(bytes.fromhex(SHA)))


def test_artifact_message():
    assert signing.artifact_message(SHA.upper()) == b"sgde/v1/artifact-sha256:" + SHA.encode()
    for bad in ("", SHA[:-1], SHA + "0", "g" * 64, " " + SHA[1:]):
        with pytest.raises(ValueError):
            signing.artifact_message(bad)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        bytes(31),
        bytes(33),
        bytes(32),  # small order (4)
        bytes.fromhex("01" + "00" * 31),  # the identity
        bytes.fromhex("ec" + "ff" * 30 + "7f"),  # order 2
        bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),  # order 8
        bytes.fromhex("ed" + "ff" * 30 + "7f"),  # not canonical (y = p)
    ],
)
def test_parse_public_key_refuses(raw):
    with pytest.raises(ValueError):
        signing.parse_public_key(raw)


def test_parse_public_key_accepts_real_keys():
    for _ in range(20):
        key = signing.generate_signing_key()
        parsed = signing.parse_public_key(signing.public_key_bytes(key))
        parsed.verify(key.sign(b"m"), b"m")


def test_signing_key_file(tmp_path):
    key = signing.generate_signing_key()
    path = tmp_path / "keys" / "alice.pem"
    signing.save_signing_key(key, path)
    assert _mode(path) == 0o600
    assert signing.public_key_bytes(signing.load_signing_key(path)) == signing.public_key_bytes(key)
    with pytest.raises(FileExistsError):
        signing.save_signing_key(signing.generate_signing_key(), path)
    assert signing.public_key_bytes(signing.load_signing_key(path)) == signing.public_key_bytes(key)

    os.chmod(path, 0o644)
    with pytest.raises(signing.SigningKeyError, match="chmod 600"):
        signing.load_signing_key(path)
    os.chmod(path, 0o600)
    with pytest.raises(signing.SigningKeyError, match="no signing key"):
        signing.load_signing_key(tmp_path / "missing.pem")
    corrupt = tmp_path / "corrupt.pem"
    tls.write_private(corrupt, b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(signing.SigningKeyError, match="corrupt"):
        signing.load_signing_key(corrupt)
    not_ed = tmp_path / "ca.pem"
    tls.write_private(not_ed, tls.make_ca()[1])
    with pytest.raises(signing.SigningKeyError, match="not an Ed25519"):
        signing.load_signing_key(not_ed)


def test_fingerprint():
    public = signing.public_key_bytes(signing.generate_signing_key())
    fp = signing.fingerprint(public)
    assert fp.startswith("SHA256:") and len(fp) == len("SHA256:") + 43 and "=" not in fp
    assert fp == signing.fingerprint(public)
    assert fp != signing.fingerprint(signing.public_key_bytes(signing.generate_signing_key()))
