"""Credentials, clients, retries and error mapping shared by the two AWS stores.

`AwsClients` creates one botocore session per store at the first request, and one client per
service that it reuses for the store's life. It uses botocore directly: boto3 adds only its
resource layer and S3 transfer manager, which the stores do not use, and importing them costs
about 3 MiB and 30 ms. Every session of the process shares one botocore loader, so botocore's
endpoint data and each service model are read and kept once, however many stores use them, and
that loader reads and keeps the data of SSM, Secrets Manager and STS only. The declaration
decides the credentials:

- no `auth`: botocore's default chain (IRSA from `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`,
  EKS Pod Identity, environment keys), as botocore defines it;
- `auth.jwt.serviceAccountRef`: STS AssumeRoleWithWebIdentity of `provider.aws.role` with the
  named service account's token, read again at every refresh;
- `auth.secretRef`: static keys from the mounted Secret files;
- `role` without `auth.jwt`: STS AssumeRole of that role on top of the credentials above.

Assumed-role credentials are botocore refreshable credentials, so they are renewed before they
expire. Endpoints come from botocore itself (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_SSM`, ...):
this module never sets an endpoint URL.

`AwsClients.call` sends one API request, counts it in the metrics, backs off with full jitter when
AWS still throttles after botocore's own retries, and turns every botocore failure into a
`StoreError` written in our own words plus the AWS error code. The text of an AWS error message is
never copied, because some services echo request input in it.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import botocore.session
from botocore import UNSIGNED
from botocore.config import Config
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    Credentials,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    DataNotFoundError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from botocore.loaders import JSONFileLoader, Loader

from agent.errors import (
    AccessDeniedError,
    RemoteKeyNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from agent.field_rules import aws_region
from agent.logs import log_event
from agent.refs import MissingReferenceError, require_one_line

if TYPE_CHECKING:
    from botocore.client import BaseClient

    from agent.declarations import StoreDeclaration
    from agent.metrics import Metrics
    from agent.models import AwsProvider, AwsSecretRefAuth, ServiceAccountSelector
    from agent.refs import ReferenceResolver

logger = logging.getLogger(__name__)

THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "ProvisionedThroughputExceededException",
        "SlowDown",
    }
)
# The identity is known but lacks a permission (IAM policy, KMS key policy, trust policy).
PERMISSION_DENIED_CODES = frozenset(
    {"AccessDeniedException", "AccessDenied", "AuthorizationError", "DecryptionFailure"}
)
# The credentials themselves were rejected. Static keys are read again after one of these, so a
# rotated Secret is picked up without restarting the agent.
CREDENTIALS_REJECTED_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "AuthFailure",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidIdentityToken",
        "IDPRejectedClaim",
    }
)
NOT_FOUND_CODES = frozenset(
    {"ParameterNotFound", "ParameterVersionNotFound", "ResourceNotFoundException"}
)
SERVER_ERROR_CODES = frozenset(
    {
        "InternalServerError",
        "InternalServerErrorException",
        "InternalFailure",
        "InternalServiceError",
        "InternalServiceErrorException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        # STS could not reach the cluster's OIDC issuer to check a web identity token.
        "IDPCommunicationError",
    }
)
# botocore's service-specific endpoint variables; AWS_ENDPOINT_URL applies to every service.
ENDPOINT_VARIABLES = {
    "ssm": "AWS_ENDPOINT_URL_SSM",
    "secretsmanager": "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "sts": "AWS_ENDPOINT_URL_STS",
}
# The services the stores create clients for; `_AgentLoader` reads botocore's data for these only.
AGENT_SERVICES = tuple(ENDPOINT_VARIABLES)
# The IAM action prefix of each service, for messages that name the permission to grant.
IAM_PREFIXES = {"ssm": "ssm", "secretsmanager": "secretsmanager", "sts": "sts"}

_SAFE_CODE = re.compile(r"[A-Za-z0-9._:#-]{1,80}")
# botocore's ParamValidationError report names each invalid parameter ("Invalid length for
# parameter RoleArn, value: ..."). Only the names are taken from it, because it also quotes values.
_INVALID_PARAMETER = re.compile(r"for parameter ([A-Za-z][A-Za-z0-9]*)")
# The source of each request parameter the AWS stores send, named in the fix of a request that
# botocore rejected before sending it.
PARAMETER_SOURCES = {
    "RoleArn": "spec.provider.aws.role",
    "RoleSessionName": "the store's metadata.name, from which the role session name is built",
    "WebIdentityToken": "the token mounted for spec.provider.aws.auth.jwt.serviceAccountRef",
    "DurationSeconds": "the assumed role's session duration",
    "Names": "remoteRef.key and remoteRef.version",
    "Name": "remoteRef.key",
    "SecretId": "remoteRef.key",
    "SecretIdList": "remoteRef.key",
    "VersionId": "remoteRef.version",
    "VersionStage": "remoteRef.version",
    "Path": "dataFrom[].find.path",
    "Filters": "dataFrom[].find.path",
    "ParameterFilters": "remoteRef.key",
}
_SESSION_NAME_UNSAFE = re.compile(r"[^\w+=,.@-]")
_TOKEN_FIELD = "spec.provider.aws.auth.jwt.serviceAccountRef"
_KEYS_FIELD = "spec.provider.aws.auth.secretRef"


@dataclass(frozen=True)
class AwsClientOptions:
    """Timeouts and retry limits of the AWS clients.

    `botocore_attempts` is botocore's total attempts per request in `retry_mode` (adaptive mode
    also slows the client down after throttling). When a request is still throttled after those,
    `AwsClients.call` sends it again up to `throttle_retries` times, sleeping a random time
    between 0 and `min(backoff_max, backoff_base * 2**n)` seconds before retry n (full jitter).
    `sleep` and `jitter` (a random number in [0, 1)) are injectable so tests need not wait.
    """

    retry_mode: str = "adaptive"
    botocore_attempts: int = 3
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    throttle_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 4.0
    role_duration_seconds: int | None = None
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random

    def backoff_delay(self, retry: int) -> float:
        """Return the sleep before retry `retry` (0-based), with full jitter."""
        return self.jitter() * min(self.backoff_max, self.backoff_base * 2**retry)


class ThrottledError(StoreUnavailableError):
    """AWS still throttled a request after botocore's retries and the agent's own backoff."""


class PermissionDeniedError(AccessDeniedError):
    """AWS accepted the credentials but denied this request (IAM, KMS or resource policy)."""


class RequestRejectedError(StoreError):
    """AWS (ValidationException and other 4xx codes) or botocore's parameter validation
    rejected this request as invalid."""


@dataclass(frozen=True)
class ErrorContext:
    """The subject of one request, named in the message of any error it ends in."""

    service: str
    operation: str
    remote_key: str = ""
    noun: str = "remote key"
    not_found_fix: str = "check remoteRef.key and the region"


class _ProvidedCredentials(CredentialProvider):
    """A botocore credential provider that hands out credentials built by `AwsClients`."""

    METHOD = "secrets-agent"

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> Credentials:
        return self._credentials


class AwsClients:
    """The botocore session and clients of one AWS store, and the one way to send requests.

    Nothing touches the network or reads files before the first `call`. Not thread-safe beyond
    what botocore guarantees: a store is used from one thread at a time.
    """

    def __init__(
        self,
        declaration: StoreDeclaration,
        *,
        refs: ReferenceResolver,
        metrics: Metrics,
        options: AwsClientOptions | None = None,
    ) -> None:
        provider = declaration.spec.provider.aws
        assert provider is not None, "AwsClients needs a store with provider.aws"
        self.provider: AwsProvider = provider
        self.store = declaration.display_name
        self.refs = refs
        self.metrics = metrics
        self.options = options or AwsClientOptions()
        self._region: str | None = None
        self._session: botocore.session.Session | None = None
        self._clients: dict[str, BaseClient] = {}
        self._config = Config(
            retries={
                "mode": self.options.retry_mode,
                "total_max_attempts": self.options.botocore_attempts,
            },
            connect_timeout=self.options.connect_timeout,
            read_timeout=self.options.read_timeout,
        )

    @property
    def region(self) -> str:
        """The store's region: `provider.aws.region`, else AWS_REGION or AWS_DEFAULT_REGION."""
        if self._region is None:
            region = (
                self.provider.region
                or os.environ.get("AWS_REGION")
                or os.environ.get("AWS_DEFAULT_REGION")
            )
            if not region:
                raise StoreError(
                    "no AWS region configured",
                    store=self.store,
                    fix="set spec.provider.aws.region in the store, or AWS_REGION in the "
                    "agent's environment",
                )
            if not self.provider.region:
                # The store's own region was checked when it was loaded; the environment's was not.
                variable = "AWS_REGION" if os.environ.get("AWS_REGION") else "AWS_DEFAULT_REGION"
                try:
                    aws_region(region)
                except ValueError as error:
                    raise StoreError(
                        f"{variable} {region!r} is {error}",
                        store=self.store,
                        fix=f"correct {variable} in the agent's environment, or set "
                        "spec.provider.aws.region in the store",
                    ) from None
            self._region = region
        return self._region

    def client(self, service: str) -> BaseClient:
        """Return the store's client for `service`, creating it on first use."""
        client = self._clients.get(service)
        if client is None:
            if self._session is None:
                self._session = self._build_session()
            client = self._session.create_client(service, config=self._config)
            self._clients[service] = client
        return client

    def call(
        self,
        service: str,
        operation: str,
        params: Mapping[str, Any],
        *,
        remote_key: str = "",
        noun: str = "remote key",
        not_found_fix: str = "check remoteRef.key and the region",
    ) -> dict[str, Any]:
        """Send one `operation` request (e.g. "GetParameters") and return botocore's response.

        Raises a `StoreError`: `ThrottledError` when throttling outlasts every retry,
        `StoreUnavailableError` for connection failures and 5xx responses, `AccessDeniedError`,
        `RemoteKeyNotFoundError` (naming `noun` and `remote_key`, with `not_found_fix`), or
        `StoreError` otherwise.
        """
        context = ErrorContext(
            service=service,
            operation=operation,
            remote_key=remote_key,
            noun=noun,
            not_found_fix=not_found_fix,
        )
        return self._call(lambda: self.client(service), params, context)

    def close(self) -> None:
        """Close the HTTP connections of every client; a later call opens new ones."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._session = None

    def map_error_code(
        self,
        code: str,
        *,
        status: int | None = None,
        deleted: bool = False,
        context: ErrorContext,
    ) -> StoreError:
        """Turn an AWS error code into our error, for whole responses and per-key batch errors.

        `deleted` is true when AWS reported the resource as scheduled for deletion. That case is
        reported as not found.
        """
        where = {"store": self.store, "remote_key": context.remote_key}
        region = self._region or "the configured region"
        operation = context.operation
        if code in THROTTLING_CODES or status == 429:
            return ThrottledError(
                f"{operation} was throttled in {region} ({code})",
                fix="the agent retries with backoff; if this persists, refresh less often or "
                "raise the account's API request rate limit",
                **where,
            )
        if code in CREDENTIALS_REJECTED_CODES:
            # Drop the session, so the next request reads static keys and tokens again.
            self.close()
            return AccessDeniedError(
                f"{operation} failed: the AWS credentials were rejected ({code})",
                fix=self._credentials_fix(operation),
                **where,
            )
        if code in PERMISSION_DENIED_CODES:
            return PermissionDeniedError(
                f"{operation} failed: access denied in {region} ({code})",
                fix=self._permission_fix(context),
                **where,
            )
        if code in NOT_FOUND_CODES:
            return RemoteKeyNotFoundError(
                f"{context.noun} not found in {region} ({code})",
                fix=context.not_found_fix,
                **where,
            )
        if deleted:
            return RemoteKeyNotFoundError(
                f"{context.noun} is scheduled for deletion in {region} ({code})",
                fix="restore it (RestoreSecret) or point remoteRef.key at a secret in use",
                **where,
            )
        if code in SERVER_ERROR_CODES or (status is not None and status >= 500):
            return StoreUnavailableError(
                f"{operation} failed with HTTP {status} ({code})",
                fix="the agent retries; check the AWS service health",
                **where,
            )
        return RequestRejectedError(
            f"{operation} was rejected with HTTP {status} ({code})",
            fix="check remoteRef.key, remoteRef.version and the store's settings",
            **where,
        )

    # --- sending requests ----------------------------------------------------------------------

    def _call(
        self,
        get_client: Callable[[], BaseClient],
        params: Mapping[str, Any],
        context: ErrorContext,
    ) -> dict[str, Any]:
        retry = 0
        while True:
            try:
                return self._attempt(get_client, params, context)
            except ThrottledError as error:
                if retry >= self.options.throttle_retries:
                    raise
                delay = self.options.backoff_delay(retry)
                log_event(
                    logger,
                    logging.WARNING,
                    "store_throttled",
                    store=self.store,
                    operation=context.operation,
                    retry=retry + 1,
                    delay_ms=round(delay * 1000),
                    error=error.message,
                )
                self.options.sleep(delay)
                retry += 1

    def _attempt(
        self,
        get_client: Callable[[], BaseClient],
        params: Mapping[str, Any],
        context: ErrorContext,
    ) -> dict[str, Any]:
        with self.metrics.backend_request(self.store, context.operation) as record:
            try:
                client = get_client()
                method = getattr(client, botocore.xform_name(context.operation))
                return method(**params)
            except StoreError as error:
                # Raised while building the session (no region, key file missing) or refreshing
                # credentials (STS denied, counted under its own operation). It concerns the
                # store, not this request.
                wide = store_wide(error)
                record.result = result_label(wide)
                raise wide from None
            except (BotoCoreError, ClientError) as error:
                mapped = self._map_error(error, context)
                record.result = result_label(mapped)
                raise mapped from None
            except OSError as error:
                # botocore reads the files the environment names (AWS_WEB_IDENTITY_TOKEN_FILE,
                # for one) while it signs, and lets their errors through.
                unreadable = self._file_error(error, context)
                record.result = result_label(unreadable)
                raise unreadable from None

    # --- error mapping -------------------------------------------------------------------------

    def _map_error(self, error: BotoCoreError | ClientError, context: ErrorContext) -> StoreError:
        if isinstance(error, ClientError):
            metadata = error.response.get("ResponseMetadata", {})
            message = str(error.response.get("Error", {}).get("Message", ""))
            return self.map_error_code(
                error_code(error),
                status=metadata.get("HTTPStatusCode"),
                deleted=reports_deletion(error_code(error), message),
                context=context,
            )
        where = {"store": self.store, "remote_key": context.remote_key}
        operation = context.operation
        service = context.service
        if isinstance(error, BotocoreConnectionError | HTTPClientError):
            endpoint = _without_userinfo(getattr(error, "kwargs", {}).get("endpoint_url"))
            target = f"the {service} endpoint" + (f" {endpoint}" if endpoint else "")
            variable = ENDPOINT_VARIABLES.get(service, "AWS_ENDPOINT_URL_<SERVICE>")
            return StoreUnavailableError(
                f"{operation} failed: cannot reach {target} ({type(error).__name__})",
                fix="the agent retries; check network access from the pod, proxies, and "
                f"AWS_ENDPOINT_URL / {variable} if they are set",
                **where,
            )
        if isinstance(error, NoCredentialsError | PartialCredentialsError):
            return AccessDeniedError(
                f"{operation} failed: no complete AWS credentials found ({type(error).__name__})",
                fix="give the pod an identity (IRSA: AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE; "
                "or EKS Pod Identity) or set spec.provider.aws.auth",
                **where,
            )
        if isinstance(error, CredentialRetrievalError):
            return StoreUnavailableError(
                f"{operation} failed: AWS credentials could not be retrieved "
                f"({type(error).__name__})",
                fix="the agent retries; check the pod's IRSA or Pod Identity setup",
                **where,
            )
        if isinstance(error, ParamValidationError):
            return self._invalid_parameters_error(error, context)
        return StoreError(f"{operation} failed ({type(error).__name__})", **where)

    def _file_error(self, error: OSError, context: ErrorContext) -> StoreError:
        path = f" {error.filename}" if error.filename else ""
        return StoreUnavailableError(
            f"{context.operation} failed: reading AWS credential file{path} failed "
            f"({type(error).__name__}: {error.strerror or 'unreadable'})",
            fix="the agent retries; check that AWS_WEB_IDENTITY_TOKEN_FILE, AWS_CONFIG_FILE and "
            "AWS_SHARED_CREDENTIALS_FILE, when set, name readable files (IRSA mounts the token "
            "at the path in AWS_WEB_IDENTITY_TOKEN_FILE)",
            store=self.store,
            remote_key=context.remote_key,
        )

    def _invalid_parameters_error(
        self, error: ParamValidationError, context: ErrorContext
    ) -> RequestRejectedError:
        """Name the parameters botocore rejected and the declaration fields they come from."""
        report = str(getattr(error, "kwargs", {}).get("report", ""))
        names = list(dict.fromkeys(_INVALID_PARAMETER.findall(report)))
        sources = list(dict.fromkeys(PARAMETER_SOURCES.get(name, "") for name in names))
        if names and all(sources):
            fix = "check " + " and ".join(sources)
        else:
            fix = "check the store's settings, remoteRef.key and remoteRef.version"
        listed = f": invalid {', '.join(names)}" if names else ""
        return RequestRejectedError(
            f"{context.operation} request is invalid and was not sent{listed} "
            f"({type(error).__name__})",
            fix=fix,
            store=self.store,
            remote_key=context.remote_key,
        )

    def _credentials_fix(self, operation: str) -> str:
        if operation == "AssumeRoleWithWebIdentity":
            return (
                f"check that the token mounted for {_TOKEN_FIELD} is current and issued for the "
                "audience sts.amazonaws.com, and that the cluster's OIDC provider is registered "
                "in IAM"
            )
        auth = self.provider.auth
        if auth is not None and auth.secret_ref is not None:
            return (
                f"check the access key ID, secret access key and session token mounted for "
                f"{_KEYS_FIELD}; they are read again at the next request"
            )
        return "check the pod's identity (IRSA or EKS Pod Identity) and the keys in its environment"

    def _permission_fix(self, context: ErrorContext) -> str:
        role = self.provider.role or "the service account's IAM role"
        operation = context.operation
        action = f"{IAM_PREFIXES.get(context.service, context.service)}:{operation}"
        if operation == "AssumeRoleWithWebIdentity":
            return (
                f"allow this service account in the trust policy of {role} "
                "(Federated principal of the cluster's OIDC provider, action "
                "sts:AssumeRoleWithWebIdentity)"
            )
        if operation == "AssumeRole":
            return (
                f"allow sts:AssumeRole on {role} for the agent's base identity, and allow that "
                "identity in the role's trust policy"
            )
        return (
            f"allow {action} on this {context.noun} in the IAM policy of {role} "
            "(and kms:Decrypt on its KMS key if the value is encrypted with a customer key)"
        )

    # --- credentials ---------------------------------------------------------------------------

    def _build_session(self) -> botocore.session.Session:
        region = self.region
        auth = self.provider.auth
        if auth is not None and auth.jwt is not None:
            if not self.provider.role:
                raise StoreError(
                    f"{_TOKEN_FIELD} is set but spec.provider.aws.role is missing",
                    store=self.store,
                    fix="set spec.provider.aws.role to the ARN of the IAM role the service "
                    "account's token may assume",
                )
            selector = auth.jwt.service_account_ref
            return self._session_with(
                DeferredRefreshableCredentials(
                    refresh_using=self._web_identity_refresher(selector, self.provider.role),
                    method="assume-role-with-web-identity",
                )
            )

        base = _new_session(region)
        if auth is not None and auth.secret_ref is not None:
            base.set_credentials(**self._static_keys(auth.secret_ref))
        if not self.provider.role:
            return base
        return self._session_with(
            DeferredRefreshableCredentials(
                refresh_using=self._assume_role_refresher(base, self.provider.role),
                method="assume-role",
            )
        )

    def _session_with(self, credentials: Credentials) -> botocore.session.Session:
        session = _new_session(self.region)
        session.register_component(
            "credential_provider", CredentialResolver([_ProvidedCredentials(credentials)])
        )
        return session

    def _static_keys(self, secret_ref: AwsSecretRefAuth) -> dict[str, str]:
        keys = {
            "access_key": self._read_key(
                secret_ref.access_key_id_secret_ref, field="accessKeyIDSecretRef"
            ),
            "secret_key": self._read_key(
                secret_ref.secret_access_key_secret_ref, field="secretAccessKeySecretRef"
            ),
        }
        if secret_ref.session_token_secret_ref is not None:
            keys["token"] = self._read_key(
                secret_ref.session_token_secret_ref, field="sessionTokenSecretRef"
            )
        return keys

    def _read_key(self, selector: Any, *, field: str) -> str:
        field_path = f"{_KEYS_FIELD}.{field}"
        raw = self.refs.read_secret(selector, store=self.store, field=field_path)
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            text = ""
        location = self.refs.secret_location(selector)
        if not text:
            raise MissingReferenceError(
                f"{field_path}: {location} is empty or not UTF-8 text",
                store=self.store,
                fix=f"store the key as plain text in Secret {selector.name}, key {selector.key}",
            )
        return require_one_line(text, store=self.store, field=field_path, location=location)

    def _role_session_name(self) -> str:
        name = _SESSION_NAME_UNSAFE.sub("-", f"secrets-agent-{self.store}")
        return name[:64]

    def _role_params(self, role: str) -> dict[str, Any]:
        params: dict[str, Any] = {"RoleArn": role, "RoleSessionName": self._role_session_name()}
        if self.options.role_duration_seconds is not None:
            params["DurationSeconds"] = self.options.role_duration_seconds
        return params

    def _web_identity_refresher(
        self, selector: ServiceAccountSelector, role: str
    ) -> Callable[[], dict[str, Any]]:
        sts: list[BaseClient] = []

        def unsigned_sts() -> BaseClient:
            # AssumeRoleWithWebIdentity is authenticated by the token alone; signing it would
            # need the very credentials it is about to return.
            if not sts:
                session = _new_session(self.region)
                config = self._config.merge(Config(signature_version=UNSIGNED))
                sts.append(session.create_client("sts", config=config))
            return sts[0]

        def refresh() -> dict[str, Any]:
            token = self.refs.read_token(selector, store=self.store, field=_TOKEN_FIELD)
            if not token:
                raise MissingReferenceError(
                    f"{_TOKEN_FIELD}: {self.refs.token_location(selector)} is empty",
                    store=self.store,
                    fix=f"mount a projected token of service account {selector.name} there",
                )
            location = self.refs.token_location(selector)
            require_one_line(token, store=self.store, field=_TOKEN_FIELD, location=location)
            params = {**self._role_params(role), "WebIdentityToken": token}
            context = ErrorContext(
                service="sts", operation="AssumeRoleWithWebIdentity", noun="role"
            )
            response = self._call(unsigned_sts, params, context)
            return _credential_metadata(response)

        return refresh

    def _assume_role_refresher(
        self, base: botocore.session.Session, role: str
    ) -> Callable[[], dict[str, Any]]:
        sts: list[BaseClient] = []

        def base_sts() -> BaseClient:
            if not sts:
                sts.append(base.create_client("sts", config=self._config))
            return sts[0]

        def refresh() -> dict[str, Any]:
            context = ErrorContext(service="sts", operation="AssumeRole", noun="role")
            response = self._call(base_sts, self._role_params(role), context)
            return _credential_metadata(response)

        return refresh


class _JSONFileLoader(JSONFileLoader):
    """botocore's JSON file loader, building plain dicts.

    botocore 1.44 builds an OrderedDict for every JSON object of its data files. Plain dicts keep
    insertion order as well, parse endpoints.json in about 16 ms against 35 ms, and make the
    parsed SSM model 2.2 MiB against 3.4 MiB.
    """

    def load_file(self, file_path: str) -> Any:
        """Return the data of `file_path` + `.json` or `.json.gz`, or None when neither exists."""
        for extension, opener in ((".json", open), (".json.gz", gzip.open)):
            path = file_path + extension
            if os.path.isfile(path):
                with opener(path, "rb") as file:
                    return json.loads(file.read().decode("utf-8"))
        return None


class _AgentLoader(Loader):
    """A botocore loader that reads and keeps botocore's data for `AGENT_SERVICES` only.

    - botocore's endpoints.json describes every service in every partition: 1.2 MB of JSON,
      about 4 MiB of Python objects once parsed into dicts (7 MiB into botocore's OrderedDicts;
      botocore 1.44), which the base class would cache for the life of the process. A client
      reads it only for its own service, so the other services' entries are dropped right
      after parsing.
    - Before loading a service model, the base class lists every service directory of every
      search path to check that the service exists: about 450 directories and 2,700 stat calls,
      30 to 50 ms of CPU. This loader looks at the agent's services only.
    - It parses data files into plain dicts (`_JSONFileLoader`).

    Everything else is loaded and cached as botocore does.
    """

    def __init__(self, *, search_paths: list[str]) -> None:
        super().__init__(
            extra_search_paths=list(search_paths),
            file_loader=_JSONFileLoader(),
            include_default_search_paths=False,
        )
        self._endpoints_lock = threading.Lock()
        self._endpoints: tuple[Any, str] | None = None

    def load_data_with_path(self, name: str) -> tuple[Any, str]:
        if name != "endpoints":
            return super().load_data_with_path(name)
        with self._endpoints_lock:
            if self._endpoints is None:
                self._endpoints = self._read_endpoints()
            return self._endpoints

    def list_available_services(self, type_name: str) -> list[str]:
        return sorted(name for name in AGENT_SERVICES if self._has_data(name, type_name))

    def _has_data(self, service: str, type_name: str) -> bool:
        """Return whether any API version of `service` has `type_name` data (e.g. service-2)."""
        for directory in self.search_paths:
            service_directory = os.path.join(directory, service)
            if not os.path.isdir(service_directory):
                continue
            for api_version in os.listdir(service_directory):
                if self.file_loader.exists(os.path.join(service_directory, api_version, type_name)):
                    return True
        return False

    def _read_endpoints(self) -> tuple[Any, str]:
        for directory in self.search_paths:
            path = os.path.join(directory, "endpoints")
            data = self.file_loader.load_file(path)
            if data is not None:
                # Services are keyed by endpoint prefix, which for the agent's services is the
                # service name.
                for partition in data.get("partitions", []):
                    services = partition.get("services", {})
                    partition["services"] = {
                        name: services[name] for name in AGENT_SERVICES if name in services
                    }
                return data, path
        raise DataNotFoundError(data_path="endpoints")


_loader_lock = threading.Lock()
_shared_loader: Loader | None = None


def _new_session(region: str) -> botocore.session.Session:
    """Create a botocore session for `region` that uses the process's shared loader.

    The shared loader searches the directories of the first session's default loader, so botocore
    still decides where data files are found (including AWS_DATA_PATH).
    """
    global _shared_loader
    session = botocore.session.Session()
    with _loader_lock:
        if _shared_loader is None:
            default = session.get_component("data_loader")
            _shared_loader = _AgentLoader(search_paths=default.search_paths)
        session.register_component("data_loader", _shared_loader)
    session.set_config_variable("region", region)
    return session


def error_code(error: ClientError) -> str:
    """Return the AWS error code of a botocore ClientError, or "unknown" if it is not a name."""
    return error_code_text(error.response.get("Error", {}).get("Code"))


def error_code_text(code: object) -> str:
    """Return `code` if it is a plain error code name, else "unknown".

    Only such names go into our messages, because the text comes from the endpoint.
    """
    text = str(code or "")
    return text if _SAFE_CODE.fullmatch(text) else "unknown"


def reports_deletion(code: str, message: str) -> bool:
    """Return whether a Secrets Manager error reports a secret scheduled for deletion.

    AWS returns InvalidRequestException for that case. The message is read only to tell it
    apart from other invalid requests and is never copied into ours.
    """
    return code == "InvalidRequestException" and "delet" in message.lower()


def result_label(error: StoreError) -> str:
    """Return the `result` label of `secrets_agent_backend_requests_total` for a failure."""
    if isinstance(error, ThrottledError):
        return "throttled"
    if isinstance(error, StoreUnavailableError):
        return "unavailable"
    if isinstance(error, AccessDeniedError):
        return "denied"
    if isinstance(error, RemoteKeyNotFoundError):
        return "not_found"
    return "error"


def store_wide(error: StoreError) -> StoreError:
    """Return the same error as one that concerns the whole store rather than one request.

    A credential refresh fails inside whatever request needed the credentials. Callers treat
    `PermissionDeniedError` and `RequestRejectedError` as per-request, and retry
    `ThrottledError` with backoff, but STS already did its own retries, so those three become
    their base classes.
    """
    for specific, general in (
        (ThrottledError, StoreUnavailableError),
        (PermissionDeniedError, AccessDeniedError),
        (RequestRejectedError, StoreError),
    ):
        if isinstance(error, specific):
            return general(
                error.message, store=error.store, remote_key=error.remote_key, fix=error.fix
            )
    return error


def chunked(items: list[Any], size: int) -> list[list[Any]]:
    """Split `items` into lists of at most `size`, in order."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def _credential_metadata(response: Mapping[str, Any]) -> dict[str, Any]:
    credentials = response["Credentials"]
    return {
        "access_key": credentials["AccessKeyId"],
        "secret_key": credentials["SecretAccessKey"],
        "token": credentials["SessionToken"],
        "expiry_time": credentials["Expiration"].isoformat(),
    }


def _without_userinfo(url: object) -> str:
    if not isinstance(url, str) or not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
