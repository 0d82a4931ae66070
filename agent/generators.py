"""Generator declarations: the `VaultDynamicSecret` shape and what the loader keeps of it.

A generator is a document of its own (apiVersion `generators.external-secrets.io/v1alpha1`, as
External Secrets Operator writes it, or `secrets-agent.io/v1alpha1`) that an ExternalSecret names
in `spec.dataFrom[].sourceRef.generatorRef`. Each top-level field of the response becomes a secret
key of that ExternalSecret's target. `agent.leases` decides when the response is read, renewed and
replaced; `agent.stores.vault_dynamic` sends the requests.

This module contains shapes only and imports no backend library, so `secrets-agent check` stays
light. As in `agent.models`, no validator puts a rejected input into its message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from agent.errors import StoreError
from agent.models import UNSUPPORTED_FIELDS, Model, VaultProvider

if TYPE_CHECKING:
    from agent.declarations import Origin

VAULT_DYNAMIC_SECRET = "VaultDynamicSecret"

# The lifetime a generator's response carries: a lease id (`lease`), a token (`token`, resultType
# Auth), only a TTL without a lease id (`ttl`, e.g. KV version 1 with a ttl field), or none.
SecretKind = Literal["lease", "token", "ttl", "none"]


class LeaseRefusedError(StoreError):
    """Vault refused to renew a lease or token for good (unknown, expired, not renewable, or
    denied by policy). Retrying the renewal is useless; new credentials are needed."""


# Fields of External Secrets Operator's VaultDynamicSecret that are not supported here, with the
# fix; the loader reports them as "not supported by secrets-agent yet". The provider's entries
# are the SecretStore's `provider.vault` ones, because the generator's provider has that shape.
GENERATOR_UNSUPPORTED_FIELDS: dict[str, str] = {
    "spec.controller": "remove it (it selects an External Secrets Operator instance)",
    "spec.retrySettings": "remove it (secrets-agent retries with its own backoff)",
    "spec.allowEmptyResponse": "remove it (a response without data is always an error here)",
    "spec.getParameters": "remove it and send the parameters with method POST or PUT "
    "(query parameters are not supported)",
    **{
        "spec.provider." + path.removeprefix("provider.vault."): fix
        for path, fix in UNSUPPORTED_FIELDS.items()
        if path.startswith("provider.vault.")
    },
}


class VaultDynamicSecretSpec(Model):
    """`spec` of a VaultDynamicSecret: one Vault request whose response is a set of secret keys.

    `provider` has the shape of a SecretStore's `provider.vault`; its `path` and `version` (the
    KV mount) are accepted and play no part here. `method` GET reads `path`; POST and PUT write
    `parameters` to it. `resultType` Data takes the response's `data`, Auth its `auth` block (for
    example from `auth/token/create`).
    """

    # Read by the loader in place of the ExternalSecret's table of unsupported fields.
    unsupported_fields: ClassVar[dict[str, str]] = GENERATOR_UNSUPPORTED_FIELDS

    provider: VaultProvider
    path: str = Field(min_length=1)
    method: Literal["GET", "POST", "PUT"] = "GET"
    parameters: dict[str, Any] | None = None
    result_type: Literal["Data", "Auth"] = "Data"

    @field_validator("path")
    @classmethod
    def _plain_path(cls, value: str) -> str:
        path = value.strip("/")
        if not path:
            raise ValueError("names no Vault path; write e.g. database/creds/orders")
        if any(character in path for character in "?#"):
            raise ValueError(
                "must not contain ? or #; write the path alone and send parameters with "
                "method POST or PUT"
            )
        if any(segment in ("", ".", "..") for segment in path.split("/")):
            raise ValueError(
                "contains an empty, . or .. segment; write the Vault path as it is, e.g. "
                "database/creds/orders"
            )
        return path

    @field_validator("method", mode="before")
    @classmethod
    def _upper_case_method(cls, value: object) -> object:
        # External Secrets Operator compares the method with "GET"; lower case is common in YAML.
        return value.upper() if isinstance(value, str) else value

    @field_validator("result_type", mode="before")
    @classmethod
    def _known_result_type(cls, value: object) -> object:
        if value == "Raw":
            raise ValueError(
                "resultType Raw is not supported by secrets-agent yet; use Data (the response's "
                "data) or Auth (its auth block)"
            )
        return value

    @model_validator(mode="after")
    def _parameters_need_a_write(self) -> VaultDynamicSecretSpec:
        if self.parameters is not None and self.method == "GET":
            raise ValueError(
                "parameters are sent only with method POST or PUT; set method: POST, or remove "
                "parameters"
            )
        return self


@dataclass(frozen=True)
class GeneratorDeclaration:
    """A valid generator document: its kind, name, spec and where it was read from."""

    kind: str
    name: str
    spec: VaultDynamicSecretSpec
    origin: Origin
    # The Kubernetes namespace of a generator the controller read; None in the agent.
    namespace: str | None = None

    @property
    def ref(self) -> tuple[str, str]:
        return (self.kind, self.name)

    @property
    def display_name(self) -> str:
        """The name used in messages, logs and metric labels: `VaultDynamicSecret/<name>`, or
        `VaultDynamicSecret/<namespace>/<name>` in the controller."""
        if self.namespace is None:
            return f"{self.kind}/{self.name}"
        return f"{self.kind}/{self.namespace}/{self.name}"

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the spec: a lease issued under another fingerprint is replaced.

        It is a SHA-256 of the spec's JSON, so the lease state file can store it without
        storing the spec (which may hold an AppRole role ID).
        """
        document = self.spec.model_dump_json(by_alias=True).encode()
        return "sha256:" + hashlib.sha256(document).hexdigest()[:32]
