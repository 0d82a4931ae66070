"""The declaration shapes: SecretStore, ClusterSecretStore and ExternalSecret.

Field names and meanings follow External Secrets Operator's API, so a manifest written for it is
read here unchanged. Only the supported subset is modelled. Every model forbids unknown fields, so
a field secrets-agent does not support is reported instead of being silently ignored.
`UNSUPPORTED_FIELDS` and `DEFAULT_ONLY_FIELDS` give the fix for the common ones. Loading
files and reporting errors lives in `agent.declarations`; this module holds only the shapes.

No validator here puts a rejected input into its error message (the declaration tests check
this), so a token pasted into the wrong field cannot leak through an error.
"""

from __future__ import annotations

import datetime
import re
from signal import Signals
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from agent import field_rules
from agent.goregexp import compile_regexp

API_VERSIONS = frozenset(
    {"secrets-agent.io/v1alpha1", "external-secrets.io/v1beta1", "external-secrets.io/v1"}
)
STORE_KINDS = ("SecretStore", "ClusterSecretStore")
# Generator documents (`agent.generators`) carry External Secrets Operator's generator group or
# ours; `dataFrom[].sourceRef.generatorRef` names them with either.
GENERATOR_API_VERSIONS = frozenset(
    {"generators.external-secrets.io/v1alpha1", "secrets-agent.io/v1alpha1"}
)
GENERATOR_KINDS = ("VaultDynamicSecret",)

# Annotations on an ExternalSecret that override the agent-wide file settings for its target.
# Annotations keep `spec` identical to External Secrets Operator's.
FILE_MODE_ANNOTATION = "secrets-agent.io/file-mode"
FILE_UID_ANNOTATION = "secrets-agent.io/file-uid"
FILE_GID_ANNOTATION = "secrets-agent.io/file-gid"

# --- Go durations --------------------------------------------------------------------------------

# Nanoseconds per unit, as in Go's time package (both micro signs, U+00B5 and U+03BC, are accepted).
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
# Go's time.Duration is an int64 count of nanoseconds, about 2562047h.
_MAX_DURATION_NS = 2**63 - 1
_DURATION_NUMBER = re.compile(r"(\d*)(?:\.(\d*))?")
_DURATION_UNIT = re.compile(r"[^0-9.]*")
_DURATION_EXAMPLES = "use a Go duration such as 1h, 30m, 1h30m or 0"
# Go stops reading fraction digits after 18 or 19 of them, before an int64 overflows. Keeping 18
# changes the result by less than a nanosecond.
_MAX_FRACTION_DIGITS = 18


def parse_duration(text: str) -> float:
    """Parse a Go duration string (`1h30m`, `90s`, `1.5h`, `300ms`, `0`) into seconds.

    Accepts what Go's time.ParseDuration accepts, except negative durations, which make no sense
    as an interval. Raises ValueError otherwise. The message describes the problem without
    repeating the text.
    """
    body = text
    negative = body[:1] == "-"
    if body[:1] in ("+", "-"):
        body = body[1:]
    if body == "0":
        return 0.0
    if body == "":
        raise ValueError(f"invalid duration: it is empty; {_DURATION_EXAMPLES}")
    total = 0
    while body:
        nanoseconds, body = _duration_component(body)
        total += nanoseconds
        if total > _MAX_DURATION_NS:
            raise ValueError(
                "invalid duration: longer than Go's maximum of about 2562047h; use a shorter one"
            )
    if negative and total:
        raise ValueError(f"invalid duration: it must not be negative; {_DURATION_EXAMPLES}")
    return total / 1e9


def _duration_component(body: str) -> tuple[int, str]:
    """Split one `<number><unit>` component off `body`; return its nanoseconds and the rest."""
    number = _DURATION_NUMBER.match(body)
    assert number is not None  # the pattern also matches the empty string
    integer, fraction = number.group(1), number.group(2) or ""
    if not integer and not fraction:
        raise ValueError(f"invalid duration: expected a number; {_DURATION_EXAMPLES}")
    rest = body[number.end() :]
    unit = _DURATION_UNIT.match(rest)
    assert unit is not None
    name, rest = unit.group(), rest[unit.end() :]
    if not name:
        raise ValueError(
            f"invalid duration: a number has no unit (ns, us, ms, s, m, h); {_DURATION_EXAMPLES}"
        )
    if name not in _DURATION_UNITS:
        raise ValueError(_unknown_unit_message(name))
    scale = _DURATION_UNITS[name]
    nanoseconds = int(integer or "0") * scale
    if fraction:
        # Same arithmetic as Go: a float64 product, truncated to whole nanoseconds.
        digits = fraction[:_MAX_FRACTION_DIGITS]
        nanoseconds += int(float(int(digits)) * (scale / float(10 ** len(digits))))
    return nanoseconds, rest


def _unknown_unit_message(name: str) -> str:
    if " " in name or "\t" in name:
        return "invalid duration: it contains a space; write 1h30m, not 1h 30m"
    if name in ("d", "w", "y"):
        return "invalid duration: Go has no unit for days or longer; write e.g. 24h"
    return "invalid duration: unknown unit; use ns, us, ms, s, m or h, e.g. 1h30m"


def _duration_seconds(value: object) -> object:
    """Turn a declared duration into seconds; the number 0 (unquoted in YAML) means 0s."""
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, datetime.timedelta) and value >= datetime.timedelta(0):
        return value.total_seconds()
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, not true or false; {_DURATION_EXAMPLES}")
    if isinstance(value, int | float) and value == 0:
        return 0.0
    if isinstance(value, int | float):
        raise ValueError("a duration needs a unit; write e.g. 600s, 10m or 1h (0 alone is allowed)")
    raise ValueError(f"expected a duration string; {_DURATION_EXAMPLES}")


# In a JSON schema (the controller's CRDs) a duration is the Go duration string.
Duration = Annotated[float, BeforeValidator(_duration_seconds), WithJsonSchema({"type": "string"})]

# --- common --------------------------------------------------------------------------------------


class Model(BaseModel):
    """Base of every declaration shape: camelCase field names and no unknown fields.

    `populate_by_name` lets Python code build models with snake_case names. The loader validates
    manifests by alias only, so a manifest must use External Secrets Operator's camelCase names.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=False,
        # str(ValidationError) would otherwise quote each rejected value, which may be a secret.
        hide_input_in_errors=True,
        # Build each validator at its first use: an agent uses a few of these shapes, and
        # building all of them at import took about 25 ms.
        defer_build=True,
    )


def _exactly_one(model: BaseModel, names: tuple[str, ...], what: str, *, hint: str = "") -> None:
    """Raise ValueError, as "problem; fix", unless exactly one of the fields `names` is set."""
    present = [to_camel(name) for name in names if getattr(model, name) is not None]
    if len(present) == 1:
        return
    listed = ", ".join(to_camel(name) for name in names)
    if present:
        problem = f"found {' and '.join(present)}, expected exactly one {what} ({listed})"
        fix = "keep one of them"
    else:
        problem = f"no {what} is set, expected exactly one ({listed})"
        fix = "add one of them"
    if hint:
        fix = f"{fix}, {hint}"
    raise ValueError(f"{problem}; {fix}")


def _check_regexp(value: str) -> str:
    compile_regexp(value)  # raises ValueError worded "problem; fix", without the pattern
    return value


# A Go regexp (RE2 syntax), compiled and matched with RE2 by agent.goregexp.
Regexp = Annotated[str, Field(min_length=1), AfterValidator(_check_regexp)]


# --- references to Kubernetes objects, resolved to files inside the pod ------------------------

# Both become path segments under the refs directory, so they must be what Kubernetes accepts.
ObjectName = Annotated[str, Field(min_length=1), AfterValidator(field_rules.object_name)]
DataKey = Annotated[str, Field(min_length=1), AfterValidator(field_rules.data_key)]


class SecretKeySelector(Model):
    """A key of a Kubernetes Secret; in the pod, the file `<refs dir>/<name>/<key>`."""

    name: ObjectName
    key: DataKey
    namespace: str | None = None


class ServiceAccountSelector(Model):
    """A service account whose token is used to log in."""

    name: ObjectName
    namespace: str | None = None
    audiences: list[str] = []


class CAProvider(Model):
    """A CA bundle kept in a Secret or ConfigMap; in the pod, `<refs dir>/<name>/<key>`."""

    type: Literal["Secret", "ConfigMap"]
    name: ObjectName
    key: DataKey
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
        hint = "or remove auth to use the pod's own identity"
        _exactly_one(self, ("jwt", "secret_ref"), "auth method", hint=hint)
        return self


class AwsProvider(Model):
    """`provider.aws`: SSM Parameter Store or Secrets Manager in one region."""

    service: Literal["ParameterStore", "SecretsManager"]
    # External Secrets Operator requires region; here it may come from AWS_REGION instead.
    region: Annotated[str, AfterValidator(field_rules.aws_region)] | None = None
    role: Annotated[str, AfterValidator(field_rules.aws_role_arn)] | None = None
    auth: AwsAuth | None = None

    @model_validator(mode="after")
    def _jwt_needs_role(self) -> AwsProvider:
        if self.auth is not None and self.auth.jwt is not None and not self.role:
            raise ValueError(
                "auth.jwt is set but role is missing; set role to the ARN of the IAM role that "
                "the service account's token may assume"
            )
        return self


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


VaultNamespace = Annotated[str, AfterValidator(field_rules.vault_namespace)]


class VaultAuth(Model):
    token_secret_ref: SecretKeySelector | None = None
    kubernetes: VaultKubernetesAuth | None = None
    app_role: VaultAppRoleAuth | None = None
    namespace: VaultNamespace | None = None

    @model_validator(mode="after")
    def _one_method(self) -> VaultAuth:
        _exactly_one(self, ("token_secret_ref", "kubernetes", "app_role"), "auth method")
        return self


class VaultProvider(Model):
    """`provider.vault`: one Vault server and KV mount."""

    server: Annotated[str, Field(min_length=1), AfterValidator(field_rules.vault_server)]
    path: str | None = None
    version: Literal["v1", "v2"] = "v2"
    namespace: VaultNamespace | None = None
    ca_bundle: Annotated[str, AfterValidator(field_rules.ca_bundle)] | None = None
    ca_provider: CAProvider | None = None
    auth: VaultAuth


class Provider(Model):
    aws: AwsProvider | None = None
    vault: VaultProvider | None = None

    @model_validator(mode="after")
    def _one_provider(self) -> Provider:
        _exactly_one(self, ("aws", "vault"), "provider")
        return self


class StoreSpec(Model):
    provider: Provider


class LabelSelectorRequirement(Model):
    """One `matchExpressions` entry of a Kubernetes label selector."""

    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = []


class LabelSelector(Model):
    """A Kubernetes label selector: every `matchLabels` pair and every expression must hold."""

    match_labels: dict[str, str] = {}
    match_expressions: list[LabelSelectorRequirement] = []


class ClusterStoreCondition(Model):
    """One `conditions[]` entry: the namespaces whose ExternalSecrets may use the store."""

    namespace_selector: LabelSelector | None = None
    namespaces: list[str] = []
    namespace_regexes: list[Regexp] = []


class ClusterStoreSpec(StoreSpec):
    """A ClusterSecretStore's `spec` as the controller reads it, with namespace conditions.

    Inside a pod there are no namespaces to compare, so the file loader keeps using `StoreSpec`
    and reports `conditions` as unsupported.
    """

    conditions: list[ClusterStoreCondition] = []


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
    """`spec.data[]`: one secret key filled from one remote key.

    External Secrets Operator also requires a secret key to match `^[-._a-zA-Z0-9]+$` and be at
    most 253 characters. That pattern is not enforced here: the loader checks every secret key
    with the writer's file-name rules instead, which also admit nested keys (`tls/key.pem`)
    when they are enabled and reject only names that are unsafe as files.
    """

    secret_key: str = Field(min_length=1)
    remote_ref: RemoteRef


class FindName(Model):
    regexp: Regexp


class Find(Model):
    path: str | None = None
    name: FindName | None = None
    decoding_strategy: DecodingStrategy = "None"
    conversion_strategy: Literal["Default"] = "Default"

    @model_validator(mode="after")
    def _something_to_find(self) -> Find:
        if self.path is None and self.name is None:
            raise ValueError("nothing to find; set find.path, find.name.regexp or both")
        return self


class RewriteRegexp(Model):
    source: Regexp
    target: str


class Rewrite(Model):
    regexp: RewriteRegexp


class GeneratorRef(Model):
    """`sourceRef.generatorRef`: a generator declared in the same files (see agent.leases)."""

    api_version: str = "generators.external-secrets.io/v1alpha1"
    kind: str = Field(min_length=1)
    name: str = Field(min_length=1)

    @field_validator("api_version")
    @classmethod
    def _generator_group(cls, value: str) -> str:
        if value not in GENERATOR_API_VERSIONS:
            versions = " or ".join(sorted(GENERATOR_API_VERSIONS))
            raise ValueError(f"not a generator apiVersion; use {versions}")
        return value

    @field_validator("kind")
    @classmethod
    def _supported_kind(cls, value: str) -> str:
        if value not in GENERATOR_KINDS:
            raise ValueError(
                "this generator kind is not supported by secrets-agent yet; use a "
                "VaultDynamicSecret, or remove the entry"
            )
        return value


class SourceRef(Model):
    """`dataFrom[].sourceRef`: only `generatorRef`; `storeRef` is rejected with its fix."""

    generator_ref: GeneratorRef


class DataFromItem(Model):
    extract: RemoteRef | None = None
    find: Find | None = None
    source_ref: SourceRef | None = None
    rewrite: list[Rewrite] = []

    @model_validator(mode="after")
    def _one_source(self) -> DataFromItem:
        _exactly_one(self, ("extract", "find", "source_ref"), "source")
        return self


class StoreRef(Model):
    name: str = Field(min_length=1)
    kind: Literal["SecretStore", "ClusterSecretStore"] = "SecretStore"


# (creationPolicy, deletionPolicy) pairs that External Secrets Operator rejects, as its lifecycle
# documentation lists them: the deletion would remove or change a Secret it does not own.
_FORBIDDEN_POLICIES = {
    ("Merge", "Delete"): "use creationPolicy Owner, or deletionPolicy Retain",
    ("None", "Delete"): "use creationPolicy Owner, or deletionPolicy Retain",
    ("None", "Merge"): "use deletionPolicy Retain, because there is no Secret to merge into",
}


class TemplateMetadata(Model):
    """`spec.target.template.metadata`: labels and annotations of the controller's Secret."""

    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    finalizers: list[str] = []


class TargetTemplate(Model):
    """`spec.target.template`: files rendered from Jinja2 templates, see `agent.templates`.

    `engineVersion` names External Secrets Operator's Go template engine. Templates here are
    always Jinja2, so only its default is accepted. `type` and `metadata` shape the controller's
    Kubernetes Secret and do not change the files.
    """

    engine_version: Literal["v2"] = "v2"
    type: str | None = None
    metadata: TemplateMetadata = TemplateMetadata()
    merge_policy: Literal["Replace", "Merge"] = "Replace"
    data: dict[str, str] = {}


class Target(Model):
    """`spec.target`. The agent writes files; the policies matter only to the controller."""

    name: str | None = None
    template: TargetTemplate | None = None
    creation_policy: Literal["Owner", "Orphan", "Merge", "None"] = "Owner"
    deletion_policy: Literal["Retain", "Delete", "Merge"] = "Retain"
    immutable: StrictBool = False

    @model_validator(mode="after")
    def _allowed_policies(self) -> Target:
        fix = _FORBIDDEN_POLICIES.get((self.creation_policy, self.deletion_policy))
        if fix is not None:
            raise ValueError(
                f"deletionPolicy {self.deletion_policy} cannot be combined with creationPolicy "
                f"{self.creation_policy}; {fix}"
            )
        return self


class ExternalSecretSpec(Model):
    refresh_interval: Annotated[Duration, AfterValidator(field_rules.refresh_interval)] = 3600.0
    # Only External Secrets Operator's default is supported: refresh every refreshInterval.
    refresh_policy: Literal["Periodic"] = "Periodic"
    # Optional as in External Secrets Operator: only generatorRef entries need no store. The
    # loader requires it for every other entry.
    secret_store_ref: StoreRef | None = None
    target: Target = Target()
    data: list[DataItem] = []
    data_from: list[DataFromItem] = []

    @model_validator(mode="after")
    def _something_to_fetch(self) -> ExternalSecretSpec:
        if not self.data and not self.data_from:
            raise ValueError("nothing to fetch; add spec.data or spec.dataFrom entries")
        return self


class ObjectMeta(BaseModel):
    """Kubernetes metadata. Fields other than these are accepted and have no effect here."""

    model_config = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True)

    name: str = Field(min_length=1)
    namespace: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


# --- External Secrets Operator fields outside the supported subset -------------------------------
# Keys are the end of a field path in the manifest's words, with `[]` for any list index and `*`
# for any field name. The loader uses these texts in place of a generic "field not supported".

_AWS_ROLE_OPTION = "remove it (only provider.aws.role is assumed, without chaining or session tags)"
_VAULT_AUTH_METHOD = "remove it and use auth.kubernetes, auth.appRole or auth.tokenSecretRef"
_PUSH_ONLY = "remove it (it applies only to pushing secrets, which secrets-agent never does)"
_METADATA = "remove it (reading a remote key's metadata is not supported)"

# Field path -> the fix. The problem reported is "not supported by secrets-agent yet".
UNSUPPORTED_FIELDS: dict[str, str] = {
    "spec.target.template.templateFrom": "remove it and write each template in "
    "spec.target.template.data (templates kept in a ConfigMap or Secret are not supported)",
    "spec.target.manifest": "remove it (a target is always a directory of files or a Secret)",
    "spec.syncWindows": "remove it (every target is refreshed every spec.refreshInterval)",
    "spec.data[].sourceRef": "remove it and name the store in spec.secretStoreRef",
    "spec.dataFrom[].sourceRef.storeRef": "remove it and name the store in "
    "spec.secretStoreRef (one store per ExternalSecret)",
    "remoteRef.nullBytePolicy": "remove it",
    "extract.nullBytePolicy": "remove it",
    "find.tags": "remove it and select remote keys with find.path and find.name.regexp",
    "rewrite[].transform": "remove it (only rewrite[].regexp is supported)",
    "rewrite[].merge": "remove it (only rewrite[].regexp is supported)",
    "spec.controller": "remove it (it selects an External Secrets Operator instance)",
    "spec.retrySettings": "remove it (secrets-agent retries with its own backoff)",
    "spec.refreshInterval": "remove it from the store and set it on each ExternalSecret",
    "spec.conditions": "remove it from the manifests the agent in a pod reads, where every store "
    "serves every ExternalSecret; keep it in manifests for the controller, which limits the "
    "store to those namespaces, and check those with `secrets-agent check --controller`",
    "spec.provider.*": "use provider.aws or provider.vault",
    "provider.aws.additionalRoles": _AWS_ROLE_OPTION,
    "provider.aws.externalID": _AWS_ROLE_OPTION,
    "provider.aws.sessionTags": _AWS_ROLE_OPTION,
    "provider.aws.transitiveTagKeys": _AWS_ROLE_OPTION,
    "provider.aws.sessionTagsPolicy": _AWS_ROLE_OPTION,
    "provider.aws.customSessionTags": _AWS_ROLE_OPTION,
    "provider.aws.prefix": "remove it and write the full name in each remote key",
    "provider.aws.secretsManager": _PUSH_ONLY,
    "provider.vault.checkAndSet": _PUSH_ONLY,
    "provider.vault.tls": "remove it (TLS client certificates are not supported yet)",
    "provider.vault.headers": "remove it (extra request headers are not supported yet)",
    "provider.vault.readYourWrites": "remove it",
    "provider.vault.forwardInconsistent": "remove it",
    "provider.vault.auth.jwt": _VAULT_AUTH_METHOD,
    "provider.vault.auth.ldap": _VAULT_AUTH_METHOD,
    "provider.vault.auth.userPass": _VAULT_AUTH_METHOD,
    "provider.vault.auth.cert": _VAULT_AUTH_METHOD,
    "provider.vault.auth.iam": _VAULT_AUTH_METHOD,
    "provider.vault.auth.gcp": _VAULT_AUTH_METHOD,
}

# Field path -> the problem, for fields of UNSUPPORTED_FIELDS that only the agent in a pod
# rejects, because the controller reads them.
POD_ONLY_PROBLEMS: dict[str, str] = {"spec.conditions": "not supported by the agent in a pod"}

# Field path -> the fix, for fields where only External Secrets Operator's default value is
# supported. The problem reported is "only the default <value> is supported by secrets-agent yet".
DEFAULT_ONLY_FIELDS: dict[str, str] = {
    "spec.refreshPolicy": "remove it (targets are refreshed every spec.refreshInterval, "
    "and refreshInterval 0 fetches once)",
    "remoteRef.metadataPolicy": _METADATA,
    "extract.metadataPolicy": _METADATA,
    "remoteRef.conversionStrategy": "remove it",
    "extract.conversionStrategy": "remove it",
    "find.conversionStrategy": "remove it",
    "template.engineVersion": "remove it (templates are always rendered with Jinja2, "
    "see docs/templates.md)",
}


# --- NotifyTarget: a secrets-agent kind with no External Secrets Operator counterpart -----------

NOTIFY_TARGET_KIND = "NotifyTarget"
NOTIFY_TARGET_API_VERSION = "secrets-agent.io/v1alpha1"
_SIGNAL_EXAMPLES = "use a name such as SIGHUP, SIGUSR1 or SIGTERM"
# An HTTP header name is an RFC 9110 token.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# http.client computes these from the request itself; a declared value would contradict it.
_HEADERS_SET_BY_AGENT = ("content-length", "transfer-encoding")
_MAX_NOTIFY_TIMEOUT_SECONDS = 3600.0
_MAX_NOTIFY_RETRIES = 10


def signal_from_name(text: str) -> Signals:
    """Parse a signal name (`SIGHUP`, `HUP`, `sigusr1`) into a signal a program can catch.

    Raises ValueError, worded "problem; fix", for unknown names and for SIGKILL and SIGSTOP,
    which no program can handle, so neither can ask one to reload.
    """
    name = text.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        number = Signals[name]
    except KeyError:
        raise ValueError(f"unknown signal name; {_SIGNAL_EXAMPLES}") from None
    if number in (Signals.SIGKILL, Signals.SIGSTOP):
        raise ValueError(
            f"{number.name} cannot be caught, so a program cannot react to it; {_SIGNAL_EXAMPLES}"
        )
    return number


def _signal_name(value: str) -> str:
    return signal_from_name(value).name


def _seconds_up_to(maximum: float) -> AfterValidator:
    def check(value: float) -> float:
        if not 0 < value <= maximum:
            raise ValueError(
                f"must be more than 0 and at most {maximum:g} seconds; write e.g. 5 or 0.5"
            )
        return value

    return AfterValidator(check)


def _retry_count(value: int) -> int:
    if not 0 <= value <= _MAX_NOTIFY_RETRIES:
        raise ValueError(f"must be from 0 to {_MAX_NOTIFY_RETRIES}; write e.g. 3")
    return value


SignalName = Annotated[str, AfterValidator(_signal_name)]
RetryCount = Annotated[StrictInt, AfterValidator(_retry_count)]


class NotifySignal(Model):
    """`spec.signal`: a signal to a process of the pod, found by name or by pid file."""

    process_name: str | None = None
    pid_file: str | None = None
    signal: SignalName = "SIGHUP"

    @field_validator("process_name")
    @classmethod
    def _plain_process_name(cls, value: str) -> str:
        if not value or "/" in value or not value.isprintable():
            raise ValueError(
                "must be a program name without '/', as /proc/<pid>/comm or the last part of "
                "argv[0] shows it; write e.g. nginx or java"
            )
        return value

    @field_validator("pid_file")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/") or "\x00" in value:
            raise ValueError("must be an absolute path; write e.g. /var/run/app/app.pid")
        return value

    @model_validator(mode="after")
    def _one_process_source(self) -> NotifySignal:
        _exactly_one(self, ("process_name", "pid_file"), "way to find the process")
        return self


class HeaderValueSource(Model):
    """`valueFrom` of a header: a key of a Secret mounted at `<refs dir>/<name>/<key>`."""

    secret_key_ref: SecretKeySelector


class HttpHeader(Model):
    """One request header, with its value written inline or read from a mounted Secret."""

    name: str
    value: str | None = None
    value_from: HeaderValueSource | None = None

    @field_validator("name")
    @classmethod
    def _token(cls, value: str) -> str:
        if not _HEADER_NAME.fullmatch(value):
            raise ValueError("invalid header name; use letters, digits and '-', e.g. Authorization")
        if value.lower() in _HEADERS_SET_BY_AGENT:
            raise ValueError("this header is set by the agent for each request; remove it")
        return value

    @field_validator("value")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(character in value for character in "\r\n\x00"):
            raise ValueError("a header value must be one line; remove line breaks and NUL bytes")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> HttpHeader:
        hint = "and use valueFrom.secretKeyRef for credentials"
        _exactly_one(self, ("value", "value_from"), "header value", hint=hint)
        return self


class NotifyHttp(Model):
    """`spec.http`: an HTTP request; any 2xx status is success, anything else is retried."""

    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: list[HttpHeader] = []
    timeout_seconds: Annotated[StrictFloat, _seconds_up_to(300.0)] = 10.0
    retries: RetryCount = 3

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        problem = _url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("headers")
    @classmethod
    def _unique_names(cls, value: list[HttpHeader]) -> list[HttpHeader]:
        names = [header.name.lower() for header in value]
        if len(set(names)) != len(names):
            raise ValueError("a header name appears twice; keep one entry per header name")
        return value


def _url_problem(url: str) -> str | None:
    """Return what is wrong with a notify URL ("problem; fix"), or None when it is usable."""
    example = "write e.g. http://127.0.0.1:8080/actuator/refresh"
    if any(character.isspace() or not character.isprintable() for character in url):
        return f"the URL contains a space or a control character; {example}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number up to 65535
    except ValueError:
        return f"invalid URL; {example}"
    if parts.scheme not in ("http", "https"):
        return f"not an http:// or https:// URL; {example}"
    if not parts.hostname:
        return f"the URL has no host; {example}"
    if parts.username is not None or parts.password is not None:
        return (
            "the URL contains a user name or password; send credentials in a header with "
            "valueFrom.secretKeyRef"
        )
    return None


class NotifyCommand(Model):
    """`spec.command`: a program run without a shell; exit status 0 is success."""

    argv: list[str] = Field(min_length=1)
    timeout_seconds: Annotated[StrictFloat, _seconds_up_to(_MAX_NOTIFY_TIMEOUT_SECONDS)] = 30.0
    retries: RetryCount = 3

    @field_validator("argv")
    @classmethod
    def _runnable(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("the program name (the first item) is empty; write e.g. [nginx, -s]")
        if any("\x00" in item for item in value):
            raise ValueError("an argument contains a NUL byte; remove it")
        return value


class NotifyTargetSpec(Model):
    """A NotifyTarget's `spec`: which targets it watches and exactly one way to notify."""

    targets: list[Annotated[str, Field(min_length=1)]] | None = None
    signal: NotifySignal | None = None
    http: NotifyHttp | None = None
    command: NotifyCommand | None = None

    @field_validator("targets")
    @classmethod
    def _named_once(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("the list is empty; name at least one target, or remove targets")
        if len(set(value)) != len(value):
            raise ValueError("a target is named twice; name each target once")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> NotifyTargetSpec:
        _exactly_one(self, ("signal", "http", "command"), "kind of notification")
        return self
