"""The parts of cert-manager's v1 API (https://cert-manager.io/docs/reference/api-docs/) that the manifests use, as
JSON schemas: no CRD schemas are available offline, and a misspelt field must fail the test, not be ignored by it.
Every object is closed (additionalProperties: false) and lists only documented fields."""

from __future__ import annotations

import jsonschema

_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"}  # a Go duration, e.g. 2160h
_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
# KeyUsage and ExtKeyUsage values cert-manager accepts (pkg/apis/certmanager/v1 types.go).
USAGES = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
]


def _closed(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object"},
        "annotations": {"type": "object"},
    },
    "additionalProperties": False,
}

_PRIVATE_KEY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
        "encoding": {"enum": ["PKCS1", "PKCS8"]},
        "size": {"type": "integer"},
        "rotationPolicy": {"enum": ["Never", "Always"]},
    },
    "allOf": [  # the size each algorithm allows (Ed25519 has none)
        {
            "if": {"properties": {"algorithm": {"const": "ECDSA"}}, "required": ["algorithm"]},
            "then": {"properties": {"size": {"enum": [256, 384, 521]}}},
        },
        {
            "if": {"properties": {"algorithm": {"const": "RSA"}}, "required": ["algorithm"]},
            "then": {"properties": {"size": {"type": "integer", "minimum": 2048, "maximum": 8192}}},
        },
        {
            "if": {"properties": {"algorithm": {"const": "Ed25519"}}, "required": ["algorithm"]},
            "then": {"not": {"required": ["size"]}},
        },
    ],
}

CERTIFICATE = _closed(
    {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "metadata": _METADATA,
        "spec": {
            **_closed(
                {
                    "secretName": {"type": "string", "minLength": 1},
                    "issuerRef": _closed(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                            "group": {"const": "cert-manager.io"},
                        },
                        ("name",),
                    ),
                    "commonName": {"type": "string", "minLength": 1, "maxLength": 64},
                    "dnsNames": _STRINGS,
                    "ipAddresses": _STRINGS,
                    "uris": _STRINGS,
                    "emailAddresses": _STRINGS,
                    "duration": _DURATION,
                    "renewBefore": _DURATION,
                    "renewBeforePercentage": {"type": "integer", "minimum": 1, "maximum": 99},
                    "isCA": {"type": "boolean"},
                    "usages": {"type": "array", "items": {"enum": USAGES}, "uniqueItems": True, "minItems": 1},
                    "privateKey": _PRIVATE_KEY,
                    "subject": {"type": "object"},
                    "secretTemplate": {"type": "object"},
                    "revisionHistoryLimit": {"type": "integer", "minimum": 1},
                    "encodeUsagesInRequest": {"type": "boolean"},
                },
                ("secretName", "issuerRef"),
            ),
            # a certificate must name something (the webhook refuses one that names nothing)
            "anyOf": [{"required": [f]} for f in ("commonName", "dnsNames", "ipAddresses", "uris", "emailAddresses")],
        },
    },
    ("apiVersion", "kind", "metadata", "spec"),
)

_ISSUER_SPEC = {
    **_closed(
        {
            "selfSigned": _closed({"crlDistributionPoints": _STRINGS}),
            "ca": _closed(
                {
                    "secretName": {"type": "string", "minLength": 1},
                    "crlDistributionPoints": _STRINGS,
                    "ocspServers": _STRINGS,
                    "issuingCertificateURLs": _STRINGS,
                },
                ("secretName",),
            ),
            # ACME, Vault and Venafi issuers: not used here, so not described (a test using one fails)
        }
    ),
    "minProperties": 1,
    "maxProperties": 1,  # exactly one kind of issuer
}


def issuer(kind: str) -> dict:
    return _closed(
        {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": _ISSUER_SPEC,
        },
        ("apiVersion", "kind", "metadata", "spec"),
    )


SCHEMAS = {"Certificate": CERTIFICATE, "Issuer": issuer("Issuer"), "ClusterIssuer": issuer("ClusterIssuer")}


def validate(doc: dict) -> None:
    """Raises jsonschema.ValidationError unless `doc` is a cert-manager resource as documented."""
    jsonschema.Draft202012Validator(SCHEMAS[doc["kind"]]).validate(doc)
