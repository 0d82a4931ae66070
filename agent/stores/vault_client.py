"""The Vault store's HTTP side: TLS trust, hvac client construction and failure translation.

Guarantees:
- TLS verification is never turned off. The trusted CAs come from the store's `caBundle`, then its
  `caProvider`, then `VAULT_CACERT`, then the system CAs, in that order; the first one set wins.
- A CA held only in memory (`caBundle`, `caProvider`) is written to a private temporary file
  (mode 0600), because requests takes a path. `CATrust.close` removes it.
- hvac never picks up `VAULT_TOKEN` or `~/.vault-token`: every client starts without a token.
- Failures that concern the whole store (no connection, TLS, 5xx, sealed, throttled) become
  `StoreError`s whose messages name the server and the fix, never a token or a value.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import requests

from agent.errors import StoreError, StoreUnavailableError
from agent.models import VaultProvider
from agent.refs import ReferenceResolver

REQUEST_TIMEOUT_SECONDS = 30
# Vault error strings are short; a longer one is cut so that a message stays readable.
MAX_VAULT_ERROR_CHARS = 300
PEM_CERTIFICATE_MARKER = b"-----BEGIN CERTIFICATE-----"


class TLSVerificationError(StoreError):
    """Vault's certificate could not be verified against the trusted CAs.

    This is a configuration error, not a transient one: retrying with the same trust fails the
    same way, so it is reported at once and the fix is to trust the right CA.
    """


@dataclass
class CATrust:
    """The CAs a store trusts: `verify` as requests takes it, and where they came from."""

    verify: str | bool
    source: str
    temporary_file: Path | None = None

    def close(self) -> None:
        """Remove the temporary CA file, if one was written."""
        if self.temporary_file is not None:
            self.temporary_file.unlink(missing_ok=True)
            self.temporary_file = None


def load_ca_trust(provider: VaultProvider, *, refs: ReferenceResolver, store: str) -> CATrust:
    """Resolve the CAs to trust for `provider`, writing an in-memory bundle to a private file."""
    if provider.ca_bundle is not None:
        pem = decode_pem_bundle(
            provider.ca_bundle.encode(), store=store, field="spec.provider.vault.caBundle"
        )
        path = _write_private_file(pem)
        return CATrust(verify=str(path), source="caBundle", temporary_file=path)

    if provider.ca_provider is not None:
        selector = provider.ca_provider
        field = "spec.provider.vault.caProvider"
        content = refs.read_secret(selector, store=store, field=field)
        pem = decode_pem_bundle(content, store=store, field=field)
        source = f"caProvider {selector.type} {selector.name} (key {selector.key})"
        path = _write_private_file(pem)
        return CATrust(verify=str(path), source=source, temporary_file=path)

    environment_ca = os.environ.get("VAULT_CACERT")
    if environment_ca:
        if not os.path.isfile(environment_ca):
            raise StoreError(
                f"VAULT_CACERT names {environment_ca}, which is not a file",
                store=store,
                fix="point VAULT_CACERT at a PEM file of the CA that signed Vault's certificate",
            )
        return CATrust(environment_ca, source=f"VAULT_CACERT {environment_ca}")

    return CATrust(True, source="the system CAs")


def decode_pem_bundle(content: bytes, *, store: str, field: str) -> bytes:
    """Return PEM certificates given either as PEM text or as base64 of PEM text.

    External Secrets Operator documents `caBundle` as base64-encoded PEM; plain PEM is accepted
    too because that is what a `caProvider` Secret or ConfigMap usually holds.
    """
    text = content.strip()
    if PEM_CERTIFICATE_MARKER in text:
        return text + b"\n"
    try:
        decoded = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if PEM_CERTIFICATE_MARKER in decoded:
        return decoded.strip() + b"\n"
    raise StoreError(
        f"{field} contains no PEM certificate",
        store=store,
        fix="give the CA certificate as PEM text (-----BEGIN CERTIFICATE-----) or its base64",
    )


def _write_private_file(content: bytes) -> Path:
    # mkstemp creates the file with mode 0600, readable by this user only.
    descriptor, name = tempfile.mkstemp(prefix="secrets-agent-vault-ca-", suffix=".pem")
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(content)
    return Path(name)


def vault_namespace(provider: VaultProvider) -> str | None:
    """Return the namespace for data requests: the store's own, else `VAULT_NAMESPACE`."""
    return provider.namespace or os.environ.get("VAULT_NAMESPACE") or None


def new_client(
    server: str, *, namespace: str | None, trust: CATrust, session: requests.Session
) -> hvac.Client:
    """Create an hvac client without a token; clients of one store share one session."""
    # token="" keeps hvac from reading VAULT_TOKEN or ~/.vault-token: tokens come only from
    # the store's auth block.
    return hvac.Client(
        url=server,
        token="",
        verify=trust.verify,
        timeout=REQUEST_TIMEOUT_SECONDS,
        namespace=namespace,
        session=session,
    )


def new_session(trust: CATrust) -> tuple[requests.Session, StatusRecorder]:
    """Create the requests session of a store, recording the status of every response."""
    session = requests.Session()
    session.verify = trust.verify
    recorder = StatusRecorder()
    session.hooks["response"].append(recorder.record)
    return session, recorder


class StatusRecorder:
    """The HTTP status of the last response, because hvac's `UnexpectedError` does not carry it."""

    def __init__(self) -> None:
        self.last_status: int | None = None

    def record(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        self.last_status = response.status_code


def vault_errors(error: hvac.exceptions.VaultError) -> str:
    """Return the `errors` strings of a Vault error response, shortened, for a message."""
    if error.errors:
        text = "; ".join(" ".join(str(item).split()) for item in error.errors)
    else:
        text = ""
    if len(text) > MAX_VAULT_ERROR_CHARS:
        text = text[:MAX_VAULT_ERROR_CHARS] + "..."
    return text


def result_label(error: BaseException) -> str:
    """Return the metrics result for a failed request."""
    if isinstance(error, hvac.exceptions.Forbidden):
        return "denied"
    if isinstance(error, hvac.exceptions.InvalidPath):
        return "not_found"
    if isinstance(error, hvac.exceptions.RateLimitExceeded):
        return "throttled"
    if isinstance(
        error,
        hvac.exceptions.VaultDown
        | hvac.exceptions.InternalServerError
        | hvac.exceptions.BadGateway
        | requests.ConnectionError
        | requests.Timeout,
    ) and not isinstance(error, requests.exceptions.SSLError):
        return "unavailable"
    return "error"


def store_wide_error(
    error: Exception,
    *,
    store: str,
    server: str,
    trust: CATrust | None,
    last_status: int | None,
) -> StoreError | None:
    """Translate a failure that concerns the whole store, or return None for the caller to judge.

    Transport failures, 5xx responses, a sealed Vault and throttling are store-wide. A 4xx
    response other than 429 concerns the request that got it, so the caller decides what it means.
    """
    if isinstance(error, requests.exceptions.SSLError):
        trusted = trust.source if trust is not None else "the system CAs"
        return TLSVerificationError(
            f"TLS verification of {server} failed ({_tls_reason(error)}) while trusting {trusted}",
            store=store,
            fix="set caBundle or caProvider on the store (or VAULT_CACERT) to the CA that "
            "signed Vault's certificate",
        )
    if isinstance(error, requests.Timeout):
        return StoreUnavailableError(
            f"request to Vault at {server} timed out after {REQUEST_TIMEOUT_SECONDS} s",
            store=store,
            fix="check that Vault is running and reachable; the agent retries",
        )
    if isinstance(error, requests.ConnectionError):
        reason = "connection refused" if "refused" in str(error).lower() else "connection failed"
        return StoreUnavailableError(
            f"cannot connect to Vault at {server} ({reason})",
            store=store,
            fix="check spec.provider.vault.server and that Vault is running and reachable",
        )
    if isinstance(error, requests.RequestException):
        return StoreUnavailableError(
            f"request to Vault at {server} failed ({type(error).__name__})", store=store
        )
    if not isinstance(error, hvac.exceptions.VaultError):
        return None

    detail = vault_errors(error)
    if isinstance(error, hvac.exceptions.VaultDown):
        if "sealed" in detail.lower():
            return StoreUnavailableError(
                f"Vault at {server} is sealed", store=store, fix="unseal Vault; the agent retries"
            )
        return StoreUnavailableError(
            f"Vault at {server} is unavailable (503{_colon(detail)})",
            store=store,
            fix="check Vault's health; the agent retries",
        )
    if isinstance(error, hvac.exceptions.RateLimitExceeded):
        return StoreUnavailableError(
            f"Vault at {server} throttled the request (429{_colon(detail)})",
            store=store,
            fix="the agent retries with backoff; raise the rate limit quota if this persists",
        )
    server_errors = (
        hvac.exceptions.InternalServerError,
        hvac.exceptions.BadGateway,
        hvac.exceptions.VaultNotInitialized,
    )
    unexpected_5xx = isinstance(error, hvac.exceptions.UnexpectedError) and (
        last_status is not None and last_status >= 500
    )
    if isinstance(error, server_errors) or unexpected_5xx:
        status = last_status if last_status is not None else "5xx"
        return StoreUnavailableError(
            f"Vault at {server} failed with HTTP {status}{_colon(detail)}",
            store=store,
            fix="check Vault's health and logs; the agent retries",
        )
    if isinstance(error, hvac.exceptions.UnexpectedError):
        return StoreError(
            f"Vault at {server} returned unexpected HTTP status {last_status}"
            f"{_colon(detail, ' (', ')')}",
            store=store,
        )
    return None


def _colon(detail: str, before: str = ": ", after: str = "") -> str:
    return f"{before}{detail}{after}" if detail else ""


_TLS_REASON = re.compile(r"(certificate verify failed: [^(\"')]+|hostname mismatch[^\"')]*)", re.I)


def _tls_reason(error: requests.exceptions.SSLError) -> str:
    match = _TLS_REASON.search(str(error))
    if match:
        return match.group(1).strip()
    return "TLS handshake failed"
