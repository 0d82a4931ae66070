"""The AWS Secrets Manager store.

`fetch` reads remote keys without a version with BatchGetSecretValue, at most 20 secret IDs per
request (the API's limit for SecretIdList), and each versioned remote key with GetSecretValue.
A version `uuid/<id>` or a UUID is sent as VersionId, anything else as VersionStage (AWSCURRENT,
AWSPREVIOUS, a custom stage). `SecretString` becomes its UTF-8 bytes and `SecretBinary` its raw
bytes. A secret scheduled for deletion counts as not found.

If the identity may not call BatchGetSecretValue (it needs that permission besides
GetSecretValue), the store logs it once and reads each secret with GetSecretValue from then on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.errors import RemoteKeyNotFoundError, StoreError
from agent.logs import log_event
from agent.stores import RemoteKey, RemoteValue, Store
from agent.stores.aws import (
    AwsClientOptions,
    AwsClients,
    ErrorContext,
    PermissionDeniedError,
    RequestRejectedError,
    chunked,
    error_code_text,
    reports_deletion,
)

if TYPE_CHECKING:
    from agent.declarations import StoreDeclaration
    from agent.metrics import Metrics
    from agent.refs import ReferenceResolver

logger = logging.getLogger(__name__)

MAX_IDS_PER_BATCH = 20
MAX_RESULTS_PER_LIST = 100
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_VERSION_ID_PREFIX = "uuid/"
# The 6 random characters AWS appends to a secret's name in its ARN.
_ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}")


class SecretsManagerStore(Store):
    """Secrets Manager in one region, through the store's `AwsClients`."""

    def __init__(
        self,
        declaration: StoreDeclaration,
        *,
        refs: ReferenceResolver,
        metrics: Metrics,
        options: AwsClientOptions | None = None,
    ) -> None:
        super().__init__(declaration, refs=refs, metrics=metrics)
        self.aws = AwsClients(declaration, refs=refs, metrics=metrics, options=options)
        self.batch_allowed = True

    def fetch(self, keys: Sequence[RemoteKey]) -> dict[RemoteKey, RemoteValue | Exception]:
        """Read `keys`: BatchGetSecretValue for current values, GetSecretValue for versions.

        Raises a `StoreError` only when the store as a whole fails; a missing or deleted secret
        is returned as that key's `RemoteKeyNotFoundError`.
        """
        current = list(dict.fromkeys(key.key for key in keys if key.version is None))
        versioned = list(dict.fromkeys(key for key in keys if key.version is not None))

        values = self._read_current(current)
        results: dict[RemoteKey, RemoteValue | Exception] = {}
        for key in keys:
            if key.version is None:
                results[key] = values[key.key]
        for key in versioned:
            results[key] = self._get_secret_value(key)
        return results

    def fetch_prefix(self, path: str) -> dict[str, RemoteValue]:
        """Read every secret whose name starts with `path`, keyed by secret name.

        Secret names have no hierarchy, so `path` is a plain name prefix: `prod/` matches
        `prod/db` and `prod/api/key`, and `prod` also matches `production`. Secrets scheduled
        for deletion are left out, and so is a secret that vanishes between listing and
        reading. Any other error for one secret fails the whole call, so a partial set is never
        returned as complete.
        """
        names = self._list_names(path)
        values = self._read_current(names)
        found: dict[str, RemoteValue] = {}
        for name in names:
            value = values[name]
            if isinstance(value, RemoteKeyNotFoundError):
                continue
            if isinstance(value, Exception):
                raise value
            found[name] = value
        return found

    def close(self) -> None:
        self.aws.close()

    # --- current values --------------------------------------------------------------------------

    def _read_current(self, secret_ids: list[str]) -> dict[str, RemoteValue | Exception]:
        values: dict[str, RemoteValue | Exception] = {}
        for chunk in chunked(secret_ids, MAX_IDS_PER_BATCH):
            if self.batch_allowed:
                values.update(self._batch_get(chunk))
            else:
                values.update(self._get_each(chunk))
        return values

    def _get_each(self, secret_ids: list[str]) -> dict[str, RemoteValue | Exception]:
        return {secret_id: self._get_secret_value(RemoteKey(secret_id)) for secret_id in secret_ids}

    def _batch_get(self, secret_ids: list[str]) -> dict[str, RemoteValue | Exception]:
        """Read up to 20 secrets with BatchGetSecretValue, following NextToken if AWS pages."""
        secret_values: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        params: dict[str, Any] = {"SecretIdList": secret_ids}
        while True:
            try:
                response = self.aws.call(
                    "secretsmanager", "BatchGetSecretValue", params, noun="secret"
                )
            except PermissionDeniedError:
                self._stop_batching()
                return self._get_each(secret_ids)
            except RequestRejectedError:
                # One malformed secret ID rejects the whole request; read each alone so the
                # error names its remote key.
                return self._get_each(secret_ids)
            secret_values.extend(response.get("SecretValues", []))
            errors.extend(response.get("Errors", []))
            token = response.get("NextToken")
            if not token or token == params.get("NextToken"):
                break
            params["NextToken"] = token
        return self._match_batch(secret_ids, secret_values, errors)

    def _match_batch(
        self,
        secret_ids: list[str],
        secret_values: list[dict[str, Any]],
        errors: list[dict[str, Any]],
    ) -> dict[str, RemoteValue | Exception]:
        by_id: dict[str, dict[str, Any]] = {}
        for secret in secret_values:
            by_id[secret.get("Name", "")] = secret
            by_id[secret.get("ARN", "")] = secret
        failures = {error.get("SecretId", ""): error for error in errors}

        values: dict[str, RemoteValue | Exception] = {}
        for secret_id in secret_ids:
            secret = by_id.get(secret_id) or _by_partial_arn(secret_values, secret_id)
            if secret is not None:
                values[secret_id] = self._value_of(secret, RemoteKey(secret_id))
            elif secret_id in failures:
                values[secret_id] = self._batch_error(secret_id, failures[secret_id])
            else:
                # Neither a value nor an error: ask for this one alone.
                values[secret_id] = self._get_secret_value(RemoteKey(secret_id))
        return values

    def _batch_error(self, secret_id: str, failure: dict[str, Any]) -> StoreError:
        code = error_code_text(failure.get("ErrorCode"))
        message = str(failure.get("Message", ""))
        deleted = reports_deletion(code, message)
        context = ErrorContext(
            service="secretsmanager",
            operation="BatchGetSecretValue",
            remote_key=secret_id,
            noun="secret",
        )
        return self.aws.map_error_code(code, deleted=deleted, context=context)

    def _stop_batching(self) -> None:
        self.batch_allowed = False
        log_event(
            logger,
            logging.WARNING,
            "store_batch_denied",
            store=self.name,
            operation="BatchGetSecretValue",
            fallback="GetSecretValue",
            fix="allow secretsmanager:BatchGetSecretValue to read up to 20 secrets per request",
        )

    # --- one secret ------------------------------------------------------------------------------

    def _get_secret_value(self, key: RemoteKey) -> RemoteValue | Exception:
        params: dict[str, Any] = {"SecretId": key.key}
        noun = "secret"
        not_found_fix = "check remoteRef.key and the region"
        if key.version is not None:
            version_id = _version_id(key.version)
            if version_id is not None:
                params["VersionId"] = version_id
                noun = f"version {version_id} of the secret"
            else:
                params["VersionStage"] = key.version
                noun = f"version stage {key.version} of the secret"
            not_found_fix = "check remoteRef.version and the secret's versions and stages"
        try:
            response = self.aws.call(
                "secretsmanager",
                "GetSecretValue",
                params,
                remote_key=key.key,
                noun=noun,
                not_found_fix=not_found_fix,
            )
        except (RemoteKeyNotFoundError, PermissionDeniedError, RequestRejectedError) as error:
            return error
        return self._value_of(response, key)

    def _value_of(self, secret: dict[str, Any], key: RemoteKey) -> RemoteValue | Exception:
        if secret.get("SecretString") is not None:
            return secret["SecretString"].encode("utf-8")
        if secret.get("SecretBinary") is not None:
            return bytes(secret["SecretBinary"])
        return RemoteKeyNotFoundError(
            "secret has no value (neither SecretString nor SecretBinary)",
            store=self.name,
            remote_key=key.key,
            fix="put a value in the secret (PutSecretValue)",
        )

    # --- listing -------------------------------------------------------------------------------

    def _list_names(self, path: str) -> list[str]:
        params: dict[str, Any] = {"MaxResults": MAX_RESULTS_PER_LIST}
        # AWS's name filter is a case-insensitive prefix match, and a leading '!' negates it.
        # So the filter only narrows the listing, and the exact prefix is checked below.
        if path and not path.startswith("!"):
            params["Filters"] = [{"Key": "name", "Values": [path]}]
        names: list[str] = []
        while True:
            response = self.aws.call(
                "secretsmanager", "ListSecrets", params, remote_key=path, noun="secret prefix"
            )
            for secret in response.get("SecretList", []):
                name = secret.get("Name", "")
                if name.startswith(path) and not secret.get("DeletedDate"):
                    names.append(name)
            token = response.get("NextToken")
            if not token or token == params.get("NextToken"):
                return list(dict.fromkeys(names))
            params["NextToken"] = token


def _version_id(version: str) -> str | None:
    """The VersionId a declared version stands for, or None when it is a version stage."""
    if version.startswith(_VERSION_ID_PREFIX):
        return version.removeprefix(_VERSION_ID_PREFIX)
    if _UUID.fullmatch(version):
        return version
    return None


def _by_partial_arn(secret_values: list[dict[str, Any]], secret_id: str) -> dict[str, Any] | None:
    # A partial ARN leaves out the random suffix AWS appends to the name.
    if not secret_id.startswith("arn:"):
        return None
    for secret in secret_values:
        arn = secret.get("ARN", "")
        if arn.startswith(secret_id) and _ARN_SUFFIX.fullmatch(arn[len(secret_id) :]):
            return secret
    return None
