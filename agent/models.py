"""The declaration shapes: SecretStore, ClusterSecretStore and ExternalSecret.

Field names and meanings follow External Secrets Operator's API, so a manifest written for it is
read here unchanged. Only the supported subset is modelled; every model forbids unknown fields, so
a field secrets-agent does not support is reported instead of being silently ignored. Loading
files and reporting errors lives in `agent.declarations`; this module holds only the shapes.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

API_VERSIONS = frozenset(
    {"secrets-agent.io/v1alpha1", "external-secrets.io/v1beta1", "external-secrets.io/v1"}
)
STORE_KINDS = ("SecretStore", "ClusterSecretStore")

# Annotations on an ExternalSecret that override the agent-wide file settings for its target.
# Annotations keep `spec` identical to External Secrets Operator's.
FILE_MODE_ANNOTATION = "secrets-agent.io/file-mode"
FILE_UID_ANNOTATION = "secrets-agent.io/file-uid"
FILE_GID_ANNOTATION = "secrets-agent.io/file-gid"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Parse a Go duration string (`1h30m`, `90s`, `0`) into seconds.

    Raises ValueError for anything Go's time.ParseDuration would reject, and for negative values,
    which make no sense as an interval.
    """
    text = text.strip()
    if text in ("0", "+0"):
        return 0.0
    body = text[1:] if text.startswith("+") else text
    if not body or body.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: use a Go duration such as 1h, 30m or 1h30m")
    position = 0
    seconds = 0.0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}: use a Go duration such as 1h, 30m or 1h30m"
            )
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    return seconds


def _duration_seconds(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool):
        raise ValueError("expected a Go duration string such as 1h or 30m")
    if isinstance(value, int) and value == 0:
        return 0.0
    raise ValueError("expected a Go duration string such as 1h or 30m")


Duration = Annotated[float, BeforeValidator(_duration_seconds)]


class Model(BaseModel):
    """Base of every declaration shape: camelCase field names and no unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=False,
    )


def _exactly_one(model: BaseModel, names: tuple[str, ...], what: str) -> None:
    present = [name for name in names if getattr(model, name) is not None]
    if len(present) != 1:
        listed = ", ".join(to_camel(name) for name in names)
        raise ValueError(f"set exactly one {what} ({listed}); found {len(present)}")


# --- references to Kubernetes objects, resolved to files inside the pod ------------------------


class SecretKeySelector(Model):
    """A key of a Kubernetes Secret; in the pod, the file `<refs dir>/<name>/<key>`."""

    name: str = Field(min_length=1)
    key: str = Field(min_length=1)
    namespace: str | None = None


class ServiceAccountSelector(Model):
    """A service account whose token is used to log in."""

    name: str = Field(min_length=1)
    namespace: str | None = None
    audiences: list[str] = []


class CAProvider(Model):
    """A CA bundle kept in a Secret or ConfigMap; in the pod, `<refs dir>/<name>/<key>`."""

    type: Literal["Secret", "ConfigMap"]
    name: str = Field(min_length=1)
    key: str = Field(min_length=1)
    namespace: str | None = None


# --- AWS -----------------------------------------------------------------------------------------


class AwsJwtAuth(Model):
    service_account_ref: ServiceAccountSelector


class AwsSecretRefAuth(Model):
    access_key_id_secret_ref: SecretKeySelector = Field(alias="accessKeyIDSecretRef")
    secret_access_key_secret_ref: SecretKeySelector
    session_token_secret_ref: SecretKeySelector | None = None


class AwsAuth(Model):
    jwt: AwsJwtAuth | None = None
    secret_ref: AwsSecretRefAuth | None = None

    @model_validator(mode="after")
    def _one_method(self) -> AwsAuth:
        _exactly_one(self, ("jwt", "secret_ref"), "auth method")
        return self


class AwsProvider(Model):
    """`provider.aws`: SSM Parameter Store or Secrets Manager in one region."""

    service: Literal["ParameterStore", "SecretsManager"]
    # External Secrets Operator requires region; here it may come from AWS_REGION instead.
    region: str | None = None
    role: str | None = None
    auth: AwsAuth | None = None


# --- Vault ---------------------------------------------------------------------------------------


class VaultKubernetesAuth(Model):
    mount_path: str = "kubernetes"
    role: str = Field(min_length=1)
    service_account_ref: ServiceAccountSelector | None = None
    secret_ref: SecretKeySelector | None = None


class VaultAppRoleAuth(Model):
    path: str = "approle"
    role_id: str | None = None
    role_ref: SecretKeySelector | None = None
    secret_ref: SecretKeySelector

    @model_validator(mode="after")
    def _one_role_id(self) -> VaultAppRoleAuth:
        _exactly_one(self, ("role_id", "role_ref"), "role id source")
        return self


class VaultAuth(Model):
    token_secret_ref: SecretKeySelector | None = None
    kubernetes: VaultKubernetesAuth | None = None
    app_role: VaultAppRoleAuth | None = None
    namespace: str | None = None

    @model_validator(mode="after")
    def _one_method(self) -> VaultAuth:
        _exactly_one(self, ("token_secret_ref", "kubernetes", "app_role"), "auth method")
        return self


class VaultProvider(Model):
    """`provider.vault`: one Vault server and KV mount."""

    server: str = Field(min_length=1)
    path: str | None = None
    version: Literal["v1", "v2"] = "v2"
    namespace: str | None = None
    ca_bundle: str | None = None
    ca_provider: CAProvider | None = None
    auth: VaultAuth

    @field_validator("server")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. https://vault.example:8200")
        return value.rstrip("/")


class Provider(Model):
    aws: AwsProvider | None = None
    vault: VaultProvider | None = None

    @model_validator(mode="after")
    def _one_provider(self) -> Provider:
        _exactly_one(self, ("aws", "vault"), "provider")
        return self


class StoreSpec(Model):
    provider: Provider


# --- ExternalSecret ------------------------------------------------------------------------------

DecodingStrategy = Literal["None", "Base64", "Base64URL", "Auto"]


class RemoteRef(Model):
    """`remoteRef` or `dataFrom[].extract`: one remote key, optionally one property of it."""

    key: str = Field(min_length=1)
    property_path: str | None = Field(default=None, alias="property")
    version: str | None = None
    decoding_strategy: DecodingStrategy = "None"
    conversion_strategy: Literal["Default"] = "Default"
    metadata_policy: Literal["None"] = "None"


class DataItem(Model):
    secret_key: str = Field(min_length=1)
    remote_ref: RemoteRef


class FindName(Model):
    regexp: str

    @field_validator("regexp")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"invalid regular expression: {error}") from None
        return value


class Find(Model):
    path: str | None = None
    name: FindName | None = None
    decoding_strategy: DecodingStrategy = "None"
    conversion_strategy: Literal["Default"] = "Default"

    @model_validator(mode="after")
    def _something_to_find(self) -> Find:
        if self.path is None and self.name is None:
            raise ValueError("set find.path, find.name.regexp or both")
        return self


class RewriteRegexp(Model):
    source: str
    target: str

    @field_validator("source")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"invalid regular expression: {error}") from None
        return value


class Rewrite(Model):
    regexp: RewriteRegexp


class DataFromItem(Model):
    extract: RemoteRef | None = None
    find: Find | None = None
    rewrite: list[Rewrite] = []

    @model_validator(mode="after")
    def _one_source(self) -> DataFromItem:
        _exactly_one(self, ("extract", "find"), "source")
        return self


class StoreRef(Model):
    name: str = Field(min_length=1)
    kind: Literal["SecretStore", "ClusterSecretStore"] = "SecretStore"


class Target(Model):
    """`spec.target`. The agent writes files; the policies matter only to the controller."""

    name: str | None = None
    creation_policy: Literal["Owner", "Orphan", "Merge", "None"] = "Owner"
    deletion_policy: Literal["Retain", "Delete", "Merge"] = "Retain"
    immutable: bool = False


class ExternalSecretSpec(Model):
    refresh_interval: Duration = 3600.0
    secret_store_ref: StoreRef
    target: Target = Target()
    data: list[DataItem] = []
    data_from: list[DataFromItem] = []

    @model_validator(mode="after")
    def _something_to_fetch(self) -> ExternalSecretSpec:
        if not self.data and not self.data_from:
            raise ValueError("declares nothing to fetch: add spec.data or spec.dataFrom entries")
        return self


class ObjectMeta(BaseModel):
    """Kubernetes metadata. Fields other than these are accepted and have no effect here."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    namespace: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
