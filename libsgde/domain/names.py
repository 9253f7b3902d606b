"""Resource names and identifiers shared by the services: one definition, so that every service accepts and refuses
the same names.

Every pattern is anchored with \\A and \\Z: Python's `$` also matches before a trailing newline, so `^alice$` accepted
"alice\\n" (which then registered, and `models/alice\\n/m` listed as if it were alice's). Match them with fullmatch.
"""

import re

_PART = r"[^/\s\x00-\x1f]+"  # one path segment of a resource name; its own rule checks it further

USERNAME_RE = re.compile(r"\A[a-z][a-z0-9_-]{2,31}\Z")
MODEL_ID_RE = re.compile(r"\A[a-z0-9][a-z0-9._-]{0,63}\Z")
MODEL_NAME_RE = re.compile(rf"\Amodels/({_PART})/({_PART})\Z")
VERSION_NAME_RE = re.compile(rf"\Amodels/({_PART})/({_PART})/versions/({_PART})\Z")
MODEL_OR_VERSION_RE = re.compile(rf"\Amodels/({_PART})/({_PART})(?:/versions/({_PART}))?\Z")
USER_NAME_RE = re.compile(rf"\Ausers/({_PART})\Z")  # the resource name users/{username}
SHA256_RE = re.compile(r"\A[0-9a-f]{64}\Z")  # lowercase hex, the contract's form
EMAIL_RE = re.compile(r"\A[^@\s\x00-\x1f]{1,64}@[^@\s\x00-\x1f]{1,188}\.[^@\s\x00-\x1f]{1,63}\Z")
FEDERATION_ID_RE = re.compile(r"\A[a-z0-9][a-z0-9._-]{0,63}\Z")
FEDERATION_NAME_RE = re.compile(rf"\Afederations/({_PART})\Z")
TAG_RE = re.compile(r"\A[a-z0-9][a-z0-9-]{0,31}\Z")
METRIC_KEY_RE = re.compile(r"\A[a-z0-9_.:/-]{1,64}\Z")
JOB_NAME_RE = re.compile(r"\Ajobs/([0-9a-f]{16})\Z")
DATASET_NAME_RE = re.compile(r"\Adatasets/([0-9a-f]{16})\Z")
FILENAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")  # an uploaded file's own name, no folders
REQUEST_ID_RE = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")
