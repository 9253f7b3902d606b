"""The Kubernetes manifests and the Dockerfile, checked offline: every overlay renders and validates against the
Kubernetes API schemas (cert-manager's resources against theirs), and policies hold over what is rendered."""

from __future__ import annotations

import base64
import copy
import fnmatch
import ipaddress
import os
import re
from pathlib import PurePosixPath

import jsonschema
import kubernetes_validate
import pytest

from libsgde.server.storage import S3Location
from tests.support import cert_manager
from tests.support.k8s import (
    K8S,
    OVERLAYS,
    REPO,
    SERVICES,
    dockerfile_env,
    dockerfile_stages,
    env_values,
    exec_form,
    named,
    of_kind,
    pods,
    render,
    render_dir,
    sgde_pods,
)

# The oldest Kubernetes the manifests promise (kubectl's own minor version here) and the newest schemas shipped.
K8S_VERSIONS = ["1.32", kubernetes_validate.latest_version()]
CERT_MANAGER_KINDS = set(cert_manager.SCHEMAS)


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


def test_overlays_exist():
    assert {"dev", "production"} <= set(OVERLAYS)


# -- schemas ------------------------------------------------------------------------------------------------------


def test_every_document_validates_strictly(overlay):
    docs = render(overlay)
    for doc in docs:
        if doc["kind"] in CERT_MANAGER_KINDS:
            cert_manager.validate(doc)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(
                    f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {e.message} at "
                    f"{'.'.join(map(str, e.path))}"
                )
    assert {d["kind"] for d in docs} >= {
        "Namespace",
        "Deployment",
        "StatefulSet",
        "Service",
        "Secret",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Certificate",
        "Issuer",
    }


def test_the_validators_catch_a_misspelt_field(overlay):
    docs = render(overlay)
    deployment = copy.deepcopy(of_kind(docs, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    certificate = copy.deepcopy(of_kind(docs, "Certificate")[0])
    for typo in (
        {"dnsName": ["x"]},
        {"usages": ["server-auth"]},
        {"privateKey": {"algorithm": "EC"}},
        {"issuerRef": {"name": "x", "kind": "Issuers"}},
    ):
        broken = copy.deepcopy(certificate)
        broken["spec"].update(typo)
        with pytest.raises(jsonschema.ValidationError):
            cert_manager.validate(broken)
    no_secret = copy.deepcopy(certificate)
    del no_secret["spec"]["secretName"]
    with pytest.raises(jsonschema.ValidationError):
        cert_manager.validate(no_secret)


# -- certificates -------------------------------------------------------------------------------------------------


def _hosts(dns: list[str], ips: list[str]) -> set[str]:
    return {*dns, *(str(ipaddress.ip_address(a)) for a in ips)}


def test_certificates_make_the_pki_the_services_read(overlay):
    """A CA issuer backed by a CA certificate; per service, a certificate whose Secret the pod mounts as ca.crt,
    <service>.crt and <service>.key under SGDE_PKI_DIR, named as the clients dial it, for server and client auth."""
    _pki_holds(render(overlay))


def _pki_holds(docs) -> None:
    issuers = {d["metadata"]["name"]: d for d in of_kind(docs, "Issuer")}
    certificates = {d["spec"]["secretName"]: d for d in of_kind(docs, "Certificate")}
    for cert in certificates.values():
        assert cert["spec"]["issuerRef"]["name"] in issuers and cert["spec"]["issuerRef"].get("kind") == "Issuer"
    ca_issuers = [i for i in issuers.values() if "ca" in i["spec"]]
    assert len(ca_issuers) == 1
    ca_cert = certificates[ca_issuers[0]["spec"]["ca"]["secretName"]]
    assert ca_cert["spec"]["isCA"] is True
    assert "selfSigned" in issuers[ca_cert["spec"]["issuerRef"]["name"]]["spec"]
    ca_name = ca_issuers[0]["metadata"]["name"]

    services = {d["metadata"]["name"]: d for d in of_kind(docs, "Service")}
    dialled = {}  # service -> hosts other pods dial it at (SGDE_<SERVICE>_ADDRESS)
    for _, (_, container) in sgde_pods(docs).items():
        for name, entry in env_values(container).items():
            if m := re.fullmatch(r"SGDE_(REGISTRY|TRAINER|SAMPLER)_ADDRESS", name):
                dialled.setdefault(m.group(1).lower(), set()).add(entry["value"].rsplit(":", 1)[0])
    assert dialled.get("registry"), "the trainer and the sampler must be told where the registry is"

    for service, (pod, container) in sgde_pods(docs).items():
        pki_dir = env_values(container)["SGDE_PKI_DIR"]["value"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == pki_dir)
        assert mount.get("readOnly") is True
        volume = next(v for v in pod.spec["volumes"] if v["name"] == mount["name"])
        items = {i["key"]: i["path"] for i in volume["secret"]["items"]}
        assert items == {"ca.crt": "ca.crt", "tls.crt": f"{service}.crt", "tls.key": f"{service}.key"}
        cert = certificates[volume["secret"]["secretName"]]["spec"]
        assert cert["issuerRef"]["name"] == ca_name
        assert cert["commonName"] == service  # the name `sgde certs init` gives, which the logs show as the peer
        assert {"server auth", "client auth", "digital signature"} <= set(cert["usages"])
        assert cert["privateKey"]["rotationPolicy"] == "Always"
        hosts = _hosts(cert.get("dnsNames", []), cert.get("ipAddresses", []))
        assert f"sgde-{service}" in services and f"sgde-{service}" in hosts
        assert dialled.get(service, set()) <= hosts
        assert {"localhost", "127.0.0.1"} <= hosts  # reached through `kubectl port-forward`
    client = certificates["sgde-client-tls"]["spec"]
    assert client["commonName"] == "client" and "client auth" in client["usages"]
    assert "server auth" not in client["usages"]


def _certificate_of_secret(docs, secret: str) -> dict:
    return next(d for d in of_kind(docs, "Certificate") if d["spec"]["secretName"] == secret)["spec"]


def _covers(hosts: set[str], host: str) -> bool:
    """Whether a certificate naming `hosts` is valid for `host` (a wildcard stands for one leftmost label)."""
    return host in hosts or ("." in host and f"*.{host.split('.', 1)[1]}" in hosts)


def _ca_issuer(docs) -> str:
    (issuer,) = [i["metadata"]["name"] for i in of_kind(docs, "Issuer") if "ca" in i["spec"]]
    return issuer


def test_minio_serves_tls_with_a_certificate_of_the_sgde_ca(overlay):
    """MinIO's certs folder holds a cert-manager certificate of the SGDE CA, valid for the Service the registry
    dials and for every server distributed MinIO dials (over https), and the CA it trusts for its peers."""
    docs = render(overlay)
    minio = next(p for p in pods(docs) if p.name == "sgde-minio")
    (c,) = minio.spec["containers"]
    args = c["args"]
    certs_dir = args[args.index("--certs-dir") + 1]
    mount = next((m for m in c["volumeMounts"] if m["mountPath"] == certs_dir), None)
    assert mount, f"no certificate is mounted at MinIO's --certs-dir {certs_dir}"
    assert mount.get("readOnly") is True
    volume = next(v for v in minio.spec["volumes"] if v["name"] == mount["name"])
    items = {i["key"]: i["path"] for i in volume["secret"]["items"]}
    assert items == {"tls.crt": "public.crt", "tls.key": "private.key", "ca.crt": "CAs/ca.crt"}
    cert = _certificate_of_secret(docs, volume["secret"]["secretName"])
    assert cert["issuerRef"]["name"] == _ca_issuer(docs)
    assert "server auth" in cert["usages"] and cert["privateKey"]["rotationPolicy"] == "Always"
    hosts = _hosts(cert.get("dnsNames", []), cert.get("ipAddresses", []))
    service = named(docs, "Service", "sgde-minio")
    assert _covers(hosts, service["metadata"]["name"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS", probe
    servers = [a for a in args if "://" in a]
    assert all(a.startswith("https://") for a in servers), servers
    for server in servers:  # sgde-minio-{0...3}.sgde-minio-hl: each expanded name
        first, _, rest = server.removeprefix("https://").partition("{")
        count, _, tail = rest.partition("}")
        low, high = map(int, count.split("..."))
        for n in range(low, high + 1):
            host = f"{first}{n}{tail}".split(":", 1)[0]
            assert _covers(hosts, host), host


def test_the_registry_reaches_minio_over_tls_verified_against_the_sgde_ca(overlay):
    docs = render(overlay)
    pod, c = sgde_pods(docs)["registry"]
    env = env_values(c)
    where = S3Location.parse(env["SGDE_REGISTRY_BLOB_URL"]["value"])
    assert where.secure, "the registry must speak TLS to MinIO"
    host, port = where.endpoint.rsplit(":", 1)
    service = named(docs, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    minio = next(p for p in pods(docs) if _matches({"matchLabels": service["spec"]["selector"]}, p.labels))
    minio_secret = next(v for v in minio.spec["volumes"] if v["name"] == "certs")["secret"]["secretName"]
    minio_cert = _certificate_of_secret(docs, minio_secret)
    assert _covers(_hosts(minio_cert["dnsNames"], minio_cert.get("ipAddresses", [])), host)
    ca_file = PurePosixPath(env["SGDE_S3_CA_FILE"]["value"])
    mount = next(m for m in c["volumeMounts"] if ca_file.is_relative_to(m["mountPath"]))
    volume = next(v for v in pod.spec["volumes"] if v["name"] == mount["name"])
    paths = {i["path"]: i["key"] for i in volume["secret"]["items"]}
    assert paths[str(ca_file.relative_to(mount["mountPath"]))] == "ca.crt"
    # the CA that Secret carries is the one that signed MinIO's certificate
    assert _certificate_of_secret(docs, volume["secret"]["secretName"])["issuerRef"] == minio_cert["issuerRef"]


def test_certificate_names_hold_no_namespace(overlay, tmp_path):
    """Certificates name what the pods dial without a namespace, so they stay right when an overlay of one's own
    moves everything to another namespace (rendered here), and every dialled name is still in them."""
    mine = tmp_path / "mine"
    mine.mkdir()
    base = os.path.relpath(K8S / "overlays" / overlay, mine)
    (mine / "kustomization.yaml").write_text(f"namespace: elsewhere\nresources: [{base}]\n")
    moved = render_dir(mine)
    assert {d["metadata"].get("namespace", "elsewhere") for d in moved} == {"elsewhere"}
    for docs, namespace in ((render(overlay), "sgde"), (moved, "elsewhere")):
        for cert in of_kind(docs, "Certificate"):
            for name in cert["spec"].get("dnsNames", []):
                labels = name.split(".")[1:]
                assert namespace not in labels and "svc" not in labels, (cert["metadata"]["name"], name)
    _pki_holds(moved)


def _go_duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert parts and text, f"not a duration of hours, minutes, seconds: {text!r}"
    return sum(int(v or 0) * units[u] for v, u in zip(parts.groups(), "hms", strict=True))


def test_minio_removes_incomplete_multipart_uploads_after_a_day(overlay):
    """A registry killed mid-publish leaves a multipart upload; MinIO removes it a day after it began (its own
    setting: MinIO does not implement the AbortIncompleteMultipartUpload lifecycle rule)."""
    minio = next(p for p in pods(render(overlay)) if p.name == "sgde-minio")
    env = env_values(minio.spec["containers"][0])
    expiry = _go_duration_seconds(env["MINIO_API_STALE_UPLOADS_EXPIRY"]["value"])
    interval = _go_duration_seconds(env["MINIO_API_STALE_UPLOADS_CLEANUP_INTERVAL"]["value"])
    assert 0 < expiry <= 24 * 3600 and 0 < interval <= expiry


# -- pods ---------------------------------------------------------------------------------------------------------


def _security(pod, container, key):
    """A securityContext setting: the container's, else the pod's."""
    return container.get("securityContext", {}).get(key, pod.spec.get("securityContext", {}).get(key))


def test_every_container_is_hardened_and_bounded(overlay):
    for pod in pods(render(overlay)):
        assert pod.spec.get("automountServiceAccountToken") is False, pod.name
        assert pod.spec.get("enableServiceLinks") is False, pod.name
        for c in pod.containers:
            where = f"{pod.name}/{c['name']}"
            assert _security(pod, c, "runAsNonRoot") is True, where
            uid = _security(pod, c, "runAsUser")
            assert isinstance(uid, int) and uid > 0, f"{where}: runAsUser must be a non-root number"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            assert _security(pod, c, "seccompProfile") == {"type": "RuntimeDefault"}, where
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"].get(part, {})), f"{where}: {part}"
            assert "livenessProbe" in c and "readinessProbe" in c, where
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts or c["name"] == "minio" and "/data" in mounts, f"{where}: no writable /tmp"


def test_images_are_pinned(overlay):
    for pod in pods(render(overlay)):
        for c in pod.containers:
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert "@sha256:" in image or (name and "/" not in tag and tag not in ("", "latest")), image
            assert c.get("imagePullPolicy") in (None, "IfNotPresent"), image


def test_probes_ask_the_plaintext_health_port(overlay):
    """Readiness asks the overall status (dependencies), liveness asks `liveness` (the process), both on the port
    the service opens for them: SGDE_<SERVICE>_HEALTH_PORT."""
    for service, (_pod, c) in sgde_pods(render(overlay)).items():
        env = env_values(c)
        health = int(env[f"SGDE_{service.upper()}_HEALTH_PORT"]["value"])
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        listen = int(env[f"SGDE_{service.upper()}_LISTEN"]["value"].rsplit(":", 1)[1])
        assert ports["health"] == health and ports["grpc"] == listen != health
        for probe in ("startupProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": health, "service": "liveness"}, (service, probe)
        assert c["readinessProbe"]["grpc"]["port"] == health
        assert c["readinessProbe"]["grpc"].get("service", "") == ""


def test_prometheus_scrapes_the_metrics_port(overlay):
    for service, (pod, c) in sgde_pods(render(overlay)).items():
        metrics = int(env_values(c)[f"SGDE_{service.upper()}_METRICS_PORT"]["value"])
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == metrics
        assert pod.annotations["prometheus.io/scrape"] == "true"
        assert pod.annotations["prometheus.io/port"] == str(metrics)
        # the metrics bind loopback unless told: here Prometheus scrapes the pod's IP (NetworkPolicy: metrics only)
        assert env_values(c)[f"SGDE_{service.upper()}_METRICS_HOST"]["value"] == "0.0.0.0"


def test_service_ports_are_named_and_lead_to_named_container_ports(overlay):
    docs = render(overlay)
    for svc in of_kind(docs, "Service"):
        selected = [p for p in pods(docs) if all(p.labels.get(k) == v for k, v in svc["spec"]["selector"].items())]
        assert selected, svc["metadata"]["name"]
        container_ports = {p["name"] for pod in selected for c in pod.containers for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port.get("name"), f"{svc['metadata']['name']}: port {port['port']} has no name"
            assert port["targetPort"] in container_ports, (svc["metadata"]["name"], port)
    for service in SERVICES:
        names = {p["name"] for p in named(docs, "Service", f"sgde-{service}")["spec"]["ports"]}
        assert names == {"grpc", "metrics"}  # the health port is the kubelet's only, never behind a Service


def test_secrets_hold_no_real_credentials(overlay):
    for secret in of_kind(render(overlay), "Secret"):
        values = dict(secret.get("stringData", {}))
        values.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
        assert values, secret["metadata"]["name"]
        for key, value in values.items():
            assert "change-me" in value, f"{secret['metadata']['name']}.{key} looks like a real credential"
            assert "PRIVATE KEY" not in value


def test_writable_paths_are_mounted_volumes(overlay):
    """The root filesystem is read-only: every path the image or the manifests point a service at lies on a volume
    (writable unless it is the PKI, the silo's data or the token key)."""
    env_image = dockerfile_env(dockerfile_stages()[-1])
    path_vars = {"HOME", "SGDE_HOME", "JAX_COMPILATION_CACHE_DIR", "MPLCONFIGDIR", "XDG_CACHE_HOME"}
    read_only_ok = {"SGDE_PKI_DIR", "SGDE_TRAINER_DATA_ROOT", "SGDE_REGISTRY_TOKEN_KEY", "SGDE_S3_CA_FILE"}
    for service, (_pod, c) in sgde_pods(render(overlay)).items():
        mounts = {PurePosixPath(m["mountPath"]): m.get("readOnly", False) for m in c["volumeMounts"]}
        env = {k: v for k, v in env_image.items() if k in path_vars}
        env.update({k: e["value"] for k, e in env_values(c).items() if "value" in e})
        checked = 0
        for key, value in env.items():
            path = value.removeprefix("sqlite:///") if value.startswith("sqlite:///") else value
            if not path.startswith("/") or key == "PATH":
                continue
            under = [m for m in mounts if PurePosixPath(path).is_relative_to(m)]
            assert under, f"{service}: {key}={value} is on the read-only root filesystem"
            deepest = max(under, key=lambda m: len(m.parts))
            assert key in read_only_ok or not mounts[deepest], f"{service}: {key}={value} is on a read-only mount"
            checked += 1
        assert checked >= 5, service
        assert PurePosixPath("/tmp") in mounts


def test_settings_are_documented(overlay):
    readme = (REPO / "README.md").read_text()
    table = set(re.findall(r"`(SGDE_[A-Z0-9_]+)`", readme))
    for service, (_, c) in sgde_pods(render(overlay)).items():
        for name in env_values(c):
            if name.startswith("SGDE_"):
                assert name in table, f"{name} (set for the {service}) is not in README's Configuration table"


# -- network policies ---------------------------------------------------------------------------------------------

DNS = "kube-dns"  # the cluster DNS: pods labelled k8s-app=kube-dns in kube-system
ANYONE = "anyone"


def _matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "only In expressions are evaluated here"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peers(docs, peer: dict) -> set[str] | str:
    """What a policy peer stands for: names of this namespace's pods, DNS, `namespace <name>` for every pod of
    another namespace, or ANYONE."""
    if "ipBlock" in peer:
        return ANYONE
    if "namespaceSelector" in peer:
        names = peer["namespaceSelector"].get("matchLabels", {})
        if set(peer["namespaceSelector"]) != {"matchLabels"} or set(names) != {"kubernetes.io/metadata.name"}:
            return ANYONE
        namespace = names["kubernetes.io/metadata.name"]
        if namespace == "kube-system" and peer.get("podSelector") == {"matchLabels": {"k8s-app": "kube-dns"}}:
            return {DNS}
        assert "podSelector" not in peer, peer
        return {f"namespace {namespace}"}
    return {p.name for p in pods(docs) if _matches(peer["podSelector"], p.labels)}


def _policies(docs, pod, direction: str) -> list[dict]:
    found = [
        p
        for p in of_kind(docs, "NetworkPolicy")
        if _matches(p["spec"]["podSelector"], pod.labels) and direction in p["spec"]["policyTypes"]
    ]
    assert found, f"{pod.name} is not isolated for {direction.lower()}"
    return found


def _allowed(docs, target, port_name: str) -> set[str] | str:
    """Pods of this namespace allowed to reach `target` on its named port, or ANYONE."""
    allowed: set[str] = set()
    for policy in _policies(docs, target, "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            if not any(p["port"] == port_name for p in rule.get("ports", [])) and rule.get("ports"):
                continue
            if not rule.get("from"):
                return ANYONE
            for peer in rule["from"]:
                if "namespaceSelector" in peer or "ipBlock" in peer:
                    return ANYONE  # from outside this namespace
                allowed |= {p.name for p in pods(docs) if _matches(peer["podSelector"], p.labels)}
    return allowed


def _port(port: dict) -> str:
    """A named port as its name, a numbered one as PROTOCOL/NUMBER."""
    return port["port"] if isinstance(port["port"], str) else f"{port.get('protocol', 'TCP')}/{port['port']}"


def _reaches(docs, source) -> set[tuple[str, str]]:
    """(destination, port) pairs `source` may open connections to: a named port of a pod here, or PROTOCOL/NUMBER."""
    reached = set()
    for policy in _policies(docs, source, "Egress"):
        for rule in policy["spec"].get("egress", []):
            where = f"{policy['metadata']['name']}: an egress rule of {source.name}"
            assert rule.get("to") and rule.get("ports"), f"{where} without `to` or `ports` opens everything"
            ports = {_port(p) for p in rule["ports"]}
            for peer in rule["to"]:
                names = _peers(docs, peer)
                assert names != ANYONE, f"{where} reaches {peer}: anyone"
                reached |= {(name, port) for name in names for port in ports}
    return reached


def test_the_namespace_denies_everything_by_default(overlay):
    default = [p for p in of_kind(render(overlay), "NetworkPolicy") if p["spec"]["podSelector"] == {}]
    assert len(default) == 1
    spec = default[0]["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert not spec.get("ingress") and not spec.get("egress")


def test_only_the_trainer_and_sampler_reach_the_registry_and_only_the_registry_reaches_minio(overlay):
    docs = render(overlay)
    by_name = {p.name: p for p in pods(docs)}
    assert _allowed(docs, by_name["sgde-registry"], "grpc") == {"sgde-trainer", "sgde-sampler"}
    assert _allowed(docs, by_name["sgde-minio"], "s3") == {"sgde-registry", "sgde-minio"}
    assert _allowed(docs, by_name["sgde-sampler"], "grpc") == ANYONE  # consumers: mutual TLS and tokens guard it
    for name in ("sgde-registry", "sgde-trainer", "sgde-sampler"):
        assert _allowed(docs, by_name[name], "metrics") == ANYONE  # Prometheus, in its own namespace


def test_every_pod_reaches_only_what_it_must(overlay):
    """Egress: the registry MinIO (and its database in production), the trainer and the sampler the registry,
    MinIO nothing (its peers in distributed MinIO); every pod that dials a Service name the cluster DNS, on UDP and
    TCP 53. Every connection allowed out is allowed in at the other end."""
    docs = render(overlay)
    by_name = {p.name: p for p in pods(docs)}
    dns = {(DNS, "UDP/53"), (DNS, "TCP/53")}
    expected = {
        "sgde-registry": {("sgde-minio", "s3"), *dns},
        "sgde-trainer": {("sgde-registry", "grpc"), *dns},
        "sgde-sampler": {("sgde-registry", "grpc"), *dns},
        "sgde-minio": set(),
    }
    if overlay == "production":
        expected["sgde-registry"].add(("namespace sgde-db", "TCP/5432"))  # PostgreSQL, where its URL says
        expected["sgde-minio"] = {("sgde-minio", "s3"), *dns}  # distributed MinIO dials its peers by name
    assert set(by_name) == set(expected)
    for name, pod in by_name.items():
        reached = _reaches(docs, pod)
        assert reached == expected[name], name
        for destination, port in reached:
            if destination in by_name:
                allowed = _allowed(docs, by_name[destination], port)
                assert allowed == ANYONE or name in allowed, f"{name} may dial {destination}:{port}, which refuses it"


# -- overlays -----------------------------------------------------------------------------------------------------


def test_replicated_registries_share_their_state(overlay):
    """More than one registry needs a shared database (not SQLite) and a shared token key (not one made per pod)."""
    docs = render(overlay)
    pod, c = sgde_pods(docs)["registry"]
    env = env_values(c)
    if pod.owner["spec"].get("replicas", 1) == 1:
        assert pod.owner["spec"]["strategy"]["type"] == "Recreate"  # a ReadWriteOnce volume: one pod at a time
        return
    assert "secretKeyRef" in env["SGDE_REGISTRY_DATABASE_URL"].get("valueFrom", {})
    key_path = PurePosixPath(env["SGDE_REGISTRY_TOKEN_KEY"]["value"])
    mount = next(m for m in c["volumeMounts"] if key_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in pod.spec["volumes"] if v["name"] == mount["name"])
    secret = volume["secret"]["secretName"]
    cert = next(d for d in of_kind(docs, "Certificate") if d["spec"]["secretName"] == secret)["spec"]
    assert cert["privateKey"] == {"algorithm": "Ed25519", "encoding": "PKCS8", "rotationPolicy": "Never"}
    assert "selfSigned" in named(docs, "Issuer", cert["issuerRef"]["name"])["spec"]  # not a peer of the mTLS CA
    assert not of_kind([d for d in docs if d["metadata"]["name"] == "sgde-registry-state"], "PersistentVolumeClaim")


def test_overlay_shapes(overlay):
    docs = render(overlay)
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    minio = named(docs, "StatefulSet", "sgde-minio")
    trainer = sgde_pods(docs)["trainer"][1]
    sampler_pod = sgde_pods(docs)["sampler"][0]
    if overlay == "dev":
        assert all(w["spec"].get("replicas", 1) == 1 for w in workloads)
        assert named(docs, "HorizontalPodAutoscaler", "sgde-sampler")["spec"]["maxReplicas"] == 1
        assert "nvidia.com/gpu" not in trainer["resources"]["limits"]
    if overlay == "production":
        assert minio["spec"]["replicas"] == 4
        (server,) = [a for a in minio["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("http")]
        assert server == "https://sgde-minio-{0...3}.sgde-minio-hl:9000/data"
        assert named(docs, "Service", "sgde-minio-hl")["spec"]["clusterIP"] == "None"
        assert minio["spec"]["serviceName"] == "sgde-minio-hl"
        assert minio["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert trainer["image"].startswith("ghcr.io/sgde-project/sgde-cuda:")
        release = sgde_pods(docs)["registry"][1]["image"].rsplit(":", 1)[1]
        assert trainer["image"].rsplit(":", 1)[1] == release  # the component names its tag: bump it with the base
        assert sampler_pod.spec["affinity"]["podAntiAffinity"]
        assert named(docs, "HorizontalPodAutoscaler", "sgde-sampler")["spec"]["minReplicas"] >= 3
        assert named(docs, "PodDisruptionBudget", "sgde-minio")["spec"]["maxUnavailable"] == 1


# -- Dockerfile ---------------------------------------------------------------------------------------------------


def test_dockerfile_one_slim_non_root_image():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build in one stage, run from another"
    final = stages[-1]
    for stage in stages:
        base = stage[0].args.split()[0]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", base) and not base.endswith(":latest"), f"unpinned base {base}"
        assert "slim" in base
    runs = " ".join(i.args for i in final if i.op == "RUN")
    for tool in ("apt-get install", "gcc", "build-essential", "pip install", "make "):
        assert tool not in runs, f"the final image must not install {tool!r}"
    copies = [i.args for i in final if i.op == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), "the final stage copies only built things"
    users = [i.args for i in final if i.op == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1]), "USER must be a numeric non-root uid"
    uid = int(users[-1].split(":")[0])
    for pod in (pod for overlay in OVERLAYS for pod in pods(render(overlay))):
        for c in pod.containers:
            if c["image"].startswith("ghcr.io/sgde-project/"):
                assert pod.spec["securityContext"]["runAsUser"] == uid  # the kubelet runs what the image expects
    (entry,) = [exec_form(i.args) for i in final if i.op == "ENTRYPOINT"]
    (cmd,) = [exec_form(i.args) for i in final if i.op == "CMD"]
    assert entry == ["sgde", "serve"] and cmd[0] in SERVICES
    assert "sgde" in (REPO / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n", 2)[1]


def test_dockerignore_sends_only_what_the_image_installs():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:  # Docker's rule: the last matching pattern wins; "!" re-includes
        result = False
        for pattern in patterns:
            negate, body = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
            if (
                fnmatch.fnmatch(path, body)
                or fnmatch.fnmatch(path, body.replace("**/", ""))
                or path.startswith(body + "/")
            ):
                result = not negate
        return result

    sources = []
    for stage in dockerfile_stages():
        for ins in stage:
            if ins.op == "COPY" and not ins.args.startswith("--from="):
                sources += ins.args.split()[:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not ignored(source.rstrip("/")), f"COPY {source} but .dockerignore leaves it out"
    for secret_or_bulk in (".git", ".venv", "tests", "benchmarks", "sgde-demo", "libsgde/x/ca.key", "pki/client.pem"):
        assert ignored(secret_or_bulk), secret_or_bulk
