"""Resource names and identifiers shared by the services (one definition, so that every service accepts and refuses
the same names)."""

import re

USERNAME_RE = re.compile(r"^[a-z][a-z0-9_-]{2,31}$")
MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MODEL_NAME_RE = re.compile(r"^models/([^/]+)/([^/]+)$")
VERSION_NAME_RE = re.compile(r"^models/([^/]+)/([^/]+)/versions/([^/]+)$")
SHA256_RE = re.compile(r"[0-9a-f]{64}")  # lowercase hex, the contract's form; use fullmatch
