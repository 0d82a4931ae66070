"""The AWS Systems Manager Parameter Store store.

`fetch` reads remote keys with GetParameters, at most 10 names per request (the API's limit) and
with decryption, so N distinct parameters cost ceil(N/10) requests. A remote key's version
becomes a selector: `name:3` for a version number, `name:label` for a label. `fetch_prefix`
reads a whole hierarchy with GetParametersByPath. Values are the UTF-8 bytes of the parameter
value; a StringList stays the raw comma-separated text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.errors import RemoteKeyNotFoundError, StoreError
from agent.stores import RemoteKey, RemoteValue, Store
from agent.stores.aws import (
    AwsClientOptions,
    AwsClients,
    PermissionDeniedError,
    RequestRejectedError,
)

if TYPE_CHECKING:
    from agent.declarations import StoreDeclaration
    from agent.metrics import Metrics
    from agent.refs import ReferenceResolver

MAX_NAMES_PER_REQUEST = 10
MAX_RESULTS_PER_PAGE = 10
_SELECTOR = re.compile(r"[A-Za-z0-9_.-]{1,100}")
# arn:partition:ssm:region:account:parameter/name has six colon-separated fields.
_ARN_FIELDS = 6


@dataclass(frozen=True)
class _Request:
    """One name sent to GetParameters: a parameter name or ARN with an optional selector."""

    base: str
    selector: str | None

    @property
    def name(self) -> str:
        return self.base if self.selector is None else f"{self.base}:{self.selector}"


class ParameterStore(Store):
    """SSM Parameter Store in one region, through the store's `AwsClients`."""

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

    def fetch(self, keys: Sequence[RemoteKey]) -> dict[RemoteKey, RemoteValue | Exception]:
        """Read `keys` with GetParameters, at most 10 distinct names per request.

        Raises a `StoreError` only when the store as a whole fails (connection, throttling,
        credentials). A missing parameter, version or label is returned as that key's
        `RemoteKeyNotFoundError`.
        """
        results: dict[RemoteKey, RemoteValue | Exception] = {}
        requests: dict[_Request, list[RemoteKey]] = {}
        for key in keys:
            request = self._request_for(key)
            if isinstance(request, StoreError):
                results[key] = request
            else:
                requests.setdefault(request, []).append(key)

        for batch in _plan_batches(list(requests)):
            answers = self._get_parameters(batch)
            for request in batch:
                for key in requests[request]:
                    results[key] = answers[request]
        return results

    def fetch_prefix(self, path: str) -> dict[str, RemoteValue]:
        """Read every parameter beneath `path` (recursively) with GetParametersByPath.

        `path` is a hierarchy such as `/production/payment`; `/` reads every parameter. Keys of
        the result are full parameter names.
        """
        if not path.startswith("/"):
            raise StoreError(
                f"path {path!r} is not a parameter hierarchy",
                store=self.name,
                fix="start find.path with '/', e.g. /production/payment",
            )
        values: dict[str, RemoteValue] = {}
        params: dict[str, Any] = {
            "Path": path.rstrip("/") or "/",
            "Recursive": True,
            "WithDecryption": True,
            "MaxResults": MAX_RESULTS_PER_PAGE,
        }
        seen_tokens: set[str] = set()
        while True:
            response = self.aws.call(
                "ssm", "GetParametersByPath", params, remote_key=path, noun="parameter path"
            )
            for parameter in response.get("Parameters", []):
                values[parameter["Name"]] = parameter["Value"].encode("utf-8")
            # Pages are best-effort: one may be short or empty while NextToken shows more remain.
            token = response.get("NextToken")
            if not token:
                return values
            if token in seen_tokens:
                raise StoreError(
                    "GetParametersByPath returned the same NextToken twice",
                    store=self.name,
                    remote_key=path,
                    fix="check AWS_ENDPOINT_URL: the endpoint does not page like SSM",
                )
            seen_tokens.add(token)
            params["NextToken"] = token

    def close(self) -> None:
        self.aws.close()

    # --- one request -----------------------------------------------------------------------------

    def _request_for(self, key: RemoteKey) -> _Request | StoreError:
        if key.version is None:
            return _split_selector(key.key)
        if not _SELECTOR.fullmatch(key.version):
            return StoreError(
                f"invalid version {key.version!r}",
                store=self.name,
                remote_key=key.key,
                fix="set remoteRef.version to a version number such as 3 or a label made of "
                "letters, digits, '_', '.' and '-'",
            )
        return _Request(base=key.key, selector=key.version)

    def _get_parameters(self, batch: list[_Request]) -> dict[_Request, RemoteValue | Exception]:
        """Send one GetParameters request; split it if AWS rejects it as a whole."""
        try:
            response = self.aws.call(
                "ssm",
                "GetParameters",
                {"Names": [request.name for request in batch], "WithDecryption": True},
                remote_key=batch[0].name if len(batch) == 1 else "",
                noun="parameter",
            )
        except (PermissionDeniedError, RequestRejectedError) as error:
            if len(batch) == 1:
                return {batch[0]: error}
            # One invalid or forbidden name fails the whole request (ValidationException, or
            # AccessDeniedException when the policy covers only some of the names). Asking for
            # each name alone ties the error to its remote key and lets the others through, at
            # the cost of one request per name while the error lasts.
            answers: dict[_Request, RemoteValue | Exception] = {}
            for request in batch:
                answers.update(self._get_parameters([request]))
            return answers
        return self._match_response(batch, response)

    def _match_response(
        self, batch: list[_Request], response: dict[str, Any]
    ) -> dict[_Request, RemoteValue | Exception]:
        # Parameters come back in the service's own order, named without their selector. A batch
        # contains at most one request per parameter, so the name (or ARN) identifies the request.
        by_name: dict[str, dict[str, Any]] = {}
        for parameter in response.get("Parameters", []):
            by_name[parameter["Name"]] = parameter
            if "ARN" in parameter:
                by_name[parameter["ARN"]] = parameter
        invalid = set(response.get("InvalidParameters", []))

        answers: dict[_Request, RemoteValue | Exception] = {}
        for request in batch:
            parameter = _lookup(by_name, request.base)
            if request.name in invalid or parameter is None:
                answers[request] = self._not_found(request, listed=request.name in invalid)
            else:
                answers[request] = parameter["Value"].encode("utf-8")
        return answers

    def _not_found(self, request: _Request, *, listed: bool) -> StoreError:
        region = self.aws.region
        if not listed:
            return StoreError(
                f"parameter missing from the GetParameters response in {region}",
                store=self.name,
                remote_key=request.base,
                fix="check AWS_ENDPOINT_URL: the endpoint does not respond like SSM",
            )
        if request.selector is None:
            subject, fix = "parameter", "check remoteRef.key and the region"
        elif request.selector.isdigit():
            subject = f"version {request.selector} of the parameter"
            fix = "check remoteRef.version and that the parameter still keeps that version"
        else:
            subject = f"label {request.selector} of the parameter"
            fix = "check remoteRef.version and the labels on the parameter's versions"
        return RemoteKeyNotFoundError(
            f"{subject} not found in {region}", store=self.name, remote_key=request.base, fix=fix
        )


def _split_selector(name: str) -> _Request:
    """Split a name that already carries a selector (`/app/key:3`, `arn:...:parameter/k:3`)."""
    fields = name.split(":")
    base_fields = _ARN_FIELDS if name.startswith("arn:") else 1
    if len(fields) <= base_fields:
        return _Request(base=name, selector=None)
    return _Request(base=":".join(fields[:base_fields]), selector=":".join(fields[base_fields:]))


def _lookup(by_name: dict[str, dict[str, Any]], base: str) -> dict[str, Any] | None:
    parameter = by_name.get(base)
    if parameter is None and base.startswith("arn:"):
        # An ARN request may come back under the plain name: `parameter/app/key` is `/app/key`
        # and `parameter/key` is `key` (a name without a leading slash).
        # NOTE: moto returns the plain name; which of the two AWS returns was not checked, so
        # both are matched.
        resource = base.split(":", _ARN_FIELDS - 1)[-1]
        short = resource.removeprefix("parameter")
        parameter = by_name.get(short) or by_name.get(short.removeprefix("/"))
    return parameter


def _plan_batches(requests: list[_Request]) -> list[list[_Request]]:
    """Group requests into GetParameters batches of at most 10 names.

    Two selectors of one parameter (`/k:1` and `/k:2`) go to different batches, because the
    response names a parameter without its selector (moto 5.2 also omits `Selector`), so only
    one request per parameter can be matched in each response.
    """
    batches: list[list[_Request]] = []
    bases: list[set[str]] = []
    for request in requests:
        for batch, names in zip(batches, bases, strict=True):
            if len(batch) < MAX_NAMES_PER_REQUEST and request.base not in names:
                batch.append(request)
                names.add(request.base)
                break
        else:
            batches.append([request])
            bases.append({request.base})
    return batches
