"""Helpers for the Vault store tests: declarations, a shared clock, refs files and certificates.

`SharedClock` moves the store's clock and the emulator's clock together, so token lifetimes can
be crossed in accelerated time without sleeping: the store sees the same elapsed time as Vault.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.declarations import Origin, StoreDeclaration
from agent.metrics import Metrics
from agent.models import StoreSpec
from agent.refs import Refs
from agent.stores.vault import VaultStore

VAULT_VARIABLES = ("VAULT_TOKEN", "VAULT_ADDR", "VAULT_NAMESPACE", "VAULT_CACERT", "VAULT_CAPATH")
STORE_NAME = "vault-kv"
TOKEN_SECRET = {"name": "vault-token", "key": "token"}


def vault_declaration(name: str = STORE_NAME, **vault: Any) -> StoreDeclaration:
    """A SecretStore declaration for `provider.vault` with the given fields (camelCase)."""
    spec = StoreSpec.model_validate({"provider": {"vault": vault}})
    return StoreDeclaration(kind="SecretStore", name=name, spec=spec, origin=Origin("test", 1))


class SharedClock:
    """A manual clock for the store that advances the emulator's clock by the same amount."""

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.emulator.advance(seconds)


@dataclass
class StoreFactory:
    """Builds Vault stores that read references from `refs_dir` and share one Metrics."""

    refs_dir: Path
    metrics: Metrics
    clock: SharedClock | None = None
    pod_token: Path | None = None

    def __call__(self, declaration: StoreDeclaration) -> VaultStore:
        refs = Refs(self.refs_dir, pod_token=self.pod_token or self.refs_dir / "pod-token")
        if self.clock is None:
            return VaultStore(declaration, refs=refs, metrics=self.metrics)
        return VaultStore(declaration, refs=refs, metrics=self.metrics, clock=self.clock)


def write_ref(refs_dir: Path, name: str, key: str, content: str | bytes) -> Path:
    """Write a mounted Secret key as the agent finds it: `<refs dir>/<name>/<key>`."""
    path = refs_dir / name / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def write_service_account_token(refs_dir: Path, account: str, jwt: str) -> Path:
    """Write a projected service account token where `serviceAccountRef` points."""
    path = refs_dir / "serviceaccount" / account / "token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jwt)
    return path


def request_count(metrics: Metrics, *, store: str, operation: str, result: str = "") -> int:
    """Requests counted in `secrets_agent_backend_requests_total`, optionally for one result."""
    total = 0.0
    for family in metrics.registry.collect():
        if family.name != "secrets_agent_backend_requests":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if sample.labels["store"] != store or sample.labels["operation"] != operation:
                continue
            if result and sample.labels["result"] != result:
                continue
            total += sample.value
    return int(total)


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, as PEM files and bytes."""

    certfile: Path
    keyfile: Path
    pem: bytes


def self_signed_certificate(directory: Path, *, common_name: str = "vault.test") -> Certificate:
    """Create a self-signed CA-style server certificate valid for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    directory.mkdir(parents=True, exist_ok=True)
    certfile = directory / f"{common_name}.crt"
    keyfile = directory / f"{common_name}.key"
    certfile.write_bytes(pem)
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(certfile=certfile, keyfile=keyfile, pem=pem)
