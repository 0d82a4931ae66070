"""Value rules for declaration fields that `agent.models` applies while a manifest loads.

Each function returns the value (possibly normalised) or raises ValueError worded "problem; fix"
(the loader splits the two at "; "). No message repeats the rejected value: a credential pasted
into the wrong field, or the password in `http://user:password@host`, must not reach a log.

Checking these at load time makes `secrets-agent check` reject what `once` would otherwise
reject only when it reaches the store.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

# Kubernetes object names (Secrets, ConfigMaps, service accounts) are DNS-1123 subdomains.
_OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# A key of a Secret's or ConfigMap's `data`, as the API server validates it.
_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_MAX_NAME_LENGTH = 253
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----"
)
_SERVER_EXAMPLE = "write e.g. https://vault.example:8200"
# An IAM role ARN in any partition (aws, aws-cn, aws-us-gov, ...): account IDs have 12 digits, and
# the role's name may follow a path (`role/team/payment`).
_ROLE_ARN = re.compile(r"arn:[a-z-]+:iam::\d{12}:role/.+")
_ROLE_ARN_EXAMPLE = (
    "write arn:<partition>:iam::<12-digit account>:role/<name>, "
    "e.g. arn:aws:iam::123456789012:role/payment-reader"
)
# The shape every AWS region name has had so far (eu-west-1, us-gov-west-1, cn-north-1,
# ap-southeast-4): lowercase words joined by '-', ending in a number. A list of regions is not
# kept here because AWS adds new ones.
_AWS_REGION = re.compile(r"[a-z]{2,}(-[a-z]+)+-\d+")


def object_name(value: str) -> str:
    """Check a Kubernetes object name (`name` of a Secret, ConfigMap or service account)."""
    if len(value) > _MAX_NAME_LENGTH or not _OBJECT_NAME.fullmatch(value):
        raise ValueError(
            "invalid Kubernetes object name; use lowercase letters, digits, '-' and '.', "
            f"starting and ending with a letter or digit, at most {_MAX_NAME_LENGTH} characters "
            "(e.g. vault-token)"
        )
    return value


def data_key(value: str) -> str:
    """Check a key of a Secret's or ConfigMap's data (`key` of a reference)."""
    if len(value) > _MAX_NAME_LENGTH or not _DATA_KEY.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            "invalid Secret or ConfigMap key; use letters, digits, '-', '_' and '.', "
            f"not '.' or '..', at most {_MAX_NAME_LENGTH} characters (e.g. token or ca.crt)"
        )
    return value


def vault_server(value: str) -> str:
    """Check a Vault address: http(s), a host, an optional port and nothing else.

    Returns it without a trailing `/`. A path is rejected because the client appends `/v1/...`
    to the address itself, so `http://host:8200/v1/` would request `/v1/v1/...`.
    """
    if any(character.isspace() or not character.isprintable() for character in value):
        raise ValueError(f"the URL contains a space or a control character; {_SERVER_EXAMPLE}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number up to 65535
    except ValueError:
        raise ValueError(f"invalid URL; {_SERVER_EXAMPLE}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"not an http:// or https:// URL; {_SERVER_EXAMPLE}")
    if "@" in parts.netloc:
        raise ValueError(
            "the URL contains a user name or password; remove them and log in with "
            "spec.provider.vault.auth"
        )
    if not parts.hostname:
        raise ValueError(f"the URL has no host; {_SERVER_EXAMPLE}")
    if parts.path.strip("/") or parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(
            "the URL has a path, query or fragment; drop it and give only the scheme, host and "
            "port, e.g. https://vault.example:8200 (the agent adds /v1/ itself)"
        )
    return value.rstrip("/")


def aws_role_arn(value: str) -> str:
    """Check `provider.aws.role`: the ARN of an IAM role, not a role's bare name."""
    if not _ROLE_ARN.fullmatch(value):
        raise ValueError(f"not an IAM role ARN; {_ROLE_ARN_EXAMPLE}")
    return value


def aws_region(value: str) -> str:
    """Check `provider.aws.region` against the shape of AWS region names."""
    if not _AWS_REGION.fullmatch(value):
        raise ValueError(
            "not an AWS region name; write a region such as eu-west-1 or us-gov-west-1 "
            "(lowercase words joined by '-', ending in '-' and a number)"
        )
    return value


def ca_bundle(value: str) -> str:
    """Check `caBundle`: PEM text, or base64 of PEM text, holding at least one certificate."""
    text = value.encode("utf-8", "replace")
    if _has_certificate(text):
        return value
    try:
        decoded = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not _has_certificate(decoded):
        raise ValueError(
            "contains no PEM certificate, neither as text nor as base64; give the CA "
            "certificate as PEM text (-----BEGIN CERTIFICATE-----) or as base64 of that text"
        )
    return value


def _has_certificate(text: bytes) -> bool:
    for block in _PEM_CERTIFICATE.finditer(text):
        try:
            if base64.b64decode(b"".join(block.group(1).split()), validate=True):
                return True
        except (binascii.Error, ValueError):
            continue
    return False


def vault_namespace(value: str) -> str:
    """Check a Vault namespace path such as `team-a/payments`; return it without outer `/`.

    Vault ignores a leading or trailing `/`, so they are dropped. Empty, `.` and `..` segments
    are rejected as mistakes: a namespace path lists namespace names, and Vault does not read
    `..` as the parent namespace.
    """
    example = "write a namespace path such as team-a or team-a/payments"
    if any(character.isspace() or not character.isprintable() for character in value):
        raise ValueError(f"the namespace contains a space or a control character; {example}")
    if value == "":
        return value
    trimmed = value.strip("/")
    if trimmed == "":
        raise ValueError(
            "the namespace is only '/'; remove the field to use VAULT_NAMESPACE or the root "
            f"namespace, or {example}"
        )
    if any(segment in ("", ".", "..") for segment in trimmed.split("/")):
        raise ValueError(f"the namespace has an empty, '.' or '..' path segment; {example}")
    return trimmed


def refresh_interval(seconds: float) -> float:
    """Check `refreshInterval`: 0 (fetch once) or at least one second."""
    if 0 < seconds < 1:
        raise ValueError(
            "shorter than 1s, which would send requests to the store many times a second; "
            "use 1s or more (e.g. 30s or 1h), or 0 to fetch once"
        )
    return seconds
