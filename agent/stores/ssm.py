"""The AWS Systems Manager Parameter Store store.

`fetch` reads remote keys with GetParameters, at most 10 names per request (the API's limit) and
with decryption. A remote key's version becomes a selector: `name:3` for a version number,
`name:label` for a label. `fetch_prefix` reads a whole hierarchy with GetParametersByPath at every
call. Values are the UTF-8 bytes of the parameter value; a StringList stays the raw
comma-separated text.

A store that is reused across refreshes (the `run` sidecar, the controller) does not read
unchanged parameters again. It remembers each value it read together with the parameter's Version
and LastModifiedDate. A later `fetch` of remembered keys first lists that pair with
DescribeParameters (up to 50 names per request, following NextToken), which returns no values and
decrypts nothing. GetParameters then reads only the keys whose pair changed, whose parameter is
missing from the listing, or that were never read. N unchanged keys cost ceil(N/50) requests when
DescribeParameters returns full pages (moto 5.2 returns 10 entries a page, so about N/10 against
it), and C changed keys add ceil(C/10). A first `fetch`, as in `once` mode, costs what it always
did.

These keys are read with GetParameters at every refresh:
- label selectors (`name:label`): moving a label changes neither Version nor LastModifiedDate, and
  DescribeParameters neither returns labels nor filters by them;
- ARN-form keys: an ARN usually names a parameter shared from another account, which
  DescribeParameters does not list by default, and moto 5.2 leaves the ARN out of its listing, so
  a listed entry could not be checked to be the same parameter;
- the keys a listing did not reach: when DescribeParameters returns short pages, listing 50 names
  stops after 6 pages (the 5 GetParameters requests it was meant to save, plus one), so a refresh
  never costs much more than reading every key;
- every key, for one refresh, when DescribeParameters fails, and for the rest of the store's life
  when AWS denies it (the identity lacks ssm:DescribeParameters), logged once as
  `ssm_describe_denied`.

Remembered values follow the requested keys: a key that no `fetch` requested for
FORGET_AFTER_SECONDS is forgotten, and so is a key whose read failed.

Limitation: a parameter deleted and re-created with the same Version and the same LastModifiedDate
looks unchanged, so the agent keeps its old value until the parameter changes again.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.errors import RemoteKeyNotFoundError, StoreError
from agent.logs import log_event
from agent.stores import RemoteKey, RemoteValue, Store
from agent.stores.aws import (
    AwsClientOptions,
    AwsClients,
    PermissionDeniedError,
    RequestRejectedError,
    chunked,
)

if TYPE_CHECKING:
    from agent.declarations import StoreDeclaration
    from agent.metrics import Metrics
    from agent.refs import ReferenceResolver

logger = logging.getLogger(__name__)

MAX_NAMES_PER_REQUEST = 10
MAX_RESULTS_PER_PAGE = 10
# DescribeParameters takes at most 50 values in one filter and a MaxResults of at most 50.
MAX_NAMES_PER_DESCRIBE = 50
MAX_RESULTS_PER_DESCRIBE = 50
# Longer than a 24-hour refreshInterval plus its 10 % jitter, so a daily refresh still finds its
# values remembered. Forgetting too early costs one GetParameters read, never a missed change.
FORGET_AFTER_SECONDS = 27 * 3600.0
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

    @property
    def checkable(self) -> bool:
        """Whether DescribeParameters can show that this request's value is unchanged.

        Labels cannot begin with a digit, so a selector of digits is a version number.
        """
        if self.base.startswith("arn:"):
            return False
        return self.selector is None or self.selector.isdigit()


@dataclass(frozen=True)
class _Fingerprint:
    """A parameter's Version and LastModifiedDate (POSIX seconds), which change on every put."""

    version: int
    last_modified: float


@dataclass(frozen=True)
class _Read:
    """One parameter value returned by GetParameters, with the fingerprint it came with."""

    value: bytes
    fingerprint: _Fingerprint | None


@dataclass
class _Remembered:
    """A value read earlier, the fingerprint it belongs to, and when a fetch last requested it."""

    value: bytes
    fingerprint: _Fingerprint
    requested_at: float


class ParameterStore(Store):
    """SSM Parameter Store in one region, through the store's `AwsClients`.

    `clock` (monotonic seconds) and `forget_after` decide when a remembered value whose key is no
    longer requested is dropped; tests inject both.
    """

    def __init__(
        self,
        declaration: StoreDeclaration,
        *,
        refs: ReferenceResolver,
        metrics: Metrics,
        options: AwsClientOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        forget_after: float = FORGET_AFTER_SECONDS,
    ) -> None:
        super().__init__(declaration, refs=refs, metrics=metrics)
        self.aws = AwsClients(declaration, refs=refs, metrics=metrics, options=options)
        self.clock = clock
        self.forget_after = forget_after
        self._remembered: dict[_Request, _Remembered] = {}
        # Set for good once AWS denies DescribeParameters, after which every fetch reads every key.
        self._describe_denied = False
        # Consecutive fetches whose DescribeParameters failed, so that only the first one warns.
        self._describe_failures = 0

    def fetch(self, keys: Sequence[RemoteKey]) -> dict[RemoteKey, RemoteValue | Exception]:
        """Read `keys`, skipping the parameters that did not change since this store read them.

        GetParameters reads the keys that were never read, changed since, are labelled or are in
        ARN form, at most 10 distinct names per request. DescribeParameters checks the others.
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

        values = self._read(list(requests))
        for request, request_keys in requests.items():
            for key in request_keys:
                results[key] = values[request]
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
        self._remembered.clear()
        self.aws.close()

    # --- skipping unchanged parameters -----------------------------------------------------------

    def _read(self, requests: list[_Request]) -> dict[_Request, RemoteValue | Exception]:
        now = self.clock()
        self._forget_idle(now)
        unchanged, listed = self._check_remembered(requests)
        stale = [request for request in requests if request not in unchanged]
        answers: dict[_Request, _Read | Exception] = {}
        for batch in _plan_batches(stale):
            answers.update(self._get_parameters(batch))

        values: dict[_Request, RemoteValue | Exception] = {}
        for request in requests:
            if request in unchanged:
                remembered = self._remembered[request]
                remembered.requested_at = now
                values[request] = remembered.value
                continue
            answer = answers[request]
            self._remember(request, answer, listed=listed.get(request), now=now)
            values[request] = answer.value if isinstance(answer, _Read) else answer
        return values

    def _check_remembered(
        self, requests: list[_Request]
    ) -> tuple[set[_Request], dict[_Request, _Fingerprint]]:
        """Return the remembered requests whose parameter is unchanged, and the fingerprint
        DescribeParameters listed for each remembered request whose parameter changed."""
        remembered = [request for request in requests if request in self._remembered]
        if not remembered or self._describe_denied:
            return set(), {}
        listing = self._describe({_canonical_name(request.base) for request in remembered})
        if listing is None:
            return set(), {}

        unchanged: set[_Request] = set()
        listed: dict[_Request, _Fingerprint] = {}
        for request in remembered:
            current = listing.get(_canonical_name(request.base))
            if current is None:
                # Deleted, or listed without a usable fingerprint. GetParameters reads it again,
                # or reports it missing exactly as for a key that was never read.
                del self._remembered[request]
            elif current == self._remembered[request].fingerprint:
                unchanged.add(request)
            else:
                listed[request] = current
        return unchanged, listed

    def _remember(
        self,
        request: _Request,
        answer: _Read | Exception,
        *,
        listed: _Fingerprint | None,
        now: float,
    ) -> None:
        if not isinstance(answer, _Read) or not request.checkable or self._describe_denied:
            self._remembered.pop(request, None)
            return
        # Prefer the fingerprint listed before this read. It is never newer than the value, so a
        # put in between shows as a difference at the next refresh and costs one more read, never
        # a missed change. GetParameters' own fingerprint is used for a first read, and for a
        # version selector it belongs to that version, which costs one more read if the version
        # is not the latest.
        fingerprint = listed or answer.fingerprint
        if fingerprint is None:
            self._remembered.pop(request, None)
            return
        self._remembered[request] = _Remembered(answer.value, fingerprint, now)

    def _forget_idle(self, now: float) -> None:
        oldest = now - self.forget_after
        idle = [r for r, entry in self._remembered.items() if entry.requested_at < oldest]
        for request in idle:
            del self._remembered[request]

    def _describe(self, names: set[str]) -> dict[str, _Fingerprint] | None:
        """List the fingerprint of each named parameter that exists, keyed by canonical name.

        Returns None when DescribeParameters failed, so that the caller reads every key.
        """
        listing: dict[str, _Fingerprint] = {}
        try:
            for chunk in chunked(sorted(names), MAX_NAMES_PER_DESCRIBE):
                listing.update(self._describe_chunk(chunk))
        except PermissionDeniedError as error:
            self._stop_describing(error)
            return None
        except StoreError as error:
            self._describe_failed(error)
            return None
        if self._describe_failures:
            log_event(
                logger,
                logging.INFO,
                "ssm_describe_recovered",
                store=self.name,
                failed_fetches=self._describe_failures,
            )
            self._describe_failures = 0
        return listing

    def _describe_chunk(self, names: list[str]) -> dict[str, _Fingerprint]:
        params: dict[str, Any] = {
            "ParameterFilters": [{"Key": "Name", "Option": "Equals", "Values": names}],
            "MaxResults": MAX_RESULTS_PER_DESCRIBE,
        }
        listing: dict[str, _Fingerprint] = {}
        seen_tokens: set[str] = set()
        # AWS fills pages on a best-effort basis, and in a large account a filtered listing can
        # come back in many short or empty pages. Past the number of GetParameters requests the
        # listing was meant to save (plus one for a last empty page), reading is cheaper: stop,
        # and the names not listed yet are read with GetParameters like deleted ones.
        pages_left = -(-len(names) // MAX_NAMES_PER_REQUEST) + 1
        while True:
            response = self.aws.call("ssm", "DescribeParameters", params, noun="parameter")
            pages_left -= 1
            for parameter in response.get("Parameters", []):
                name = parameter.get("Name")
                fingerprint = _fingerprint(parameter)
                if isinstance(name, str) and fingerprint is not None:
                    listing[_canonical_name(name)] = fingerprint
            # Pages are best-effort: one may be short or empty while NextToken shows more remain.
            token = response.get("NextToken")
            if not token:
                return listing
            if token in seen_tokens:
                raise StoreError(
                    "DescribeParameters returned the same NextToken twice",
                    store=self.name,
                    fix="check AWS_ENDPOINT_URL: the endpoint does not page like SSM",
                )
            if pages_left == 0:
                return listing
            seen_tokens.add(token)
            params["NextToken"] = token

    def _stop_describing(self, error: StoreError) -> None:
        self._describe_denied = True
        self._remembered.clear()
        log_event(
            logger,
            logging.WARNING,
            "ssm_describe_denied",
            store=self.name,
            error=error.message,
            fix='allow ssm:DescribeParameters on Resource "*" for the store\'s identity; until '
            "the store is reopened, every refresh reads every parameter with GetParameters",
        )

    def _describe_failed(self, error: StoreError) -> None:
        self._describe_failures += 1
        log_event(
            logger,
            logging.WARNING if self._describe_failures == 1 else logging.DEBUG,
            "ssm_describe_failed",
            store=self.name,
            failed_fetches=self._describe_failures,
            error=error.message,
            fix="this fetch reads every parameter with GetParameters; the next fetch tries "
            "DescribeParameters again",
        )

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

    def _get_parameters(self, batch: list[_Request]) -> dict[_Request, _Read | Exception]:
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
            answers: dict[_Request, _Read | Exception] = {}
            for request in batch:
                answers.update(self._get_parameters([request]))
            return answers
        return self._match_response(batch, response)

    def _match_response(
        self, batch: list[_Request], response: dict[str, Any]
    ) -> dict[_Request, _Read | Exception]:
        # Parameters come back in the service's own order, named without their selector. A batch
        # contains at most one request per parameter, so the name (or ARN) identifies the request.
        by_name: dict[str, dict[str, Any]] = {}
        for parameter in response.get("Parameters", []):
            by_name[parameter["Name"]] = parameter
            by_name.setdefault(_canonical_name(parameter["Name"]), parameter)
            if "ARN" in parameter:
                by_name[parameter["ARN"]] = parameter
        invalid = set(response.get("InvalidParameters", []))

        answers: dict[_Request, _Read | Exception] = {}
        for request in batch:
            parameter = _lookup(by_name, request.base)
            if request.name in invalid or parameter is None:
                answers[request] = self._not_found(request, listed=request.name in invalid)
            else:
                value = parameter["Value"].encode("utf-8")
                answers[request] = _Read(value, _fingerprint(parameter))
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


def _canonical_name(name: str) -> str:
    """Return the name a parameter is listed under: `/key` and `key` are one parameter.

    SSM stores a one-level name without its leading slash (moto 5.2 looks names up the same way,
    but lists them as they were created), so names are compared in this form.
    """
    rest = name.removeprefix("/")
    return name if "/" in rest else rest


def _fingerprint(parameter: Mapping[str, Any]) -> _Fingerprint | None:
    """Return a parameter's fingerprint, or None when the response lacks either field."""
    version = parameter.get("Version")
    modified = parameter.get("LastModifiedDate")
    if not isinstance(version, int) or not isinstance(modified, datetime):
        return None
    return _Fingerprint(version, modified.timestamp())


def _split_selector(name: str) -> _Request:
    """Split a name that already carries a selector (`/app/key:3`, `arn:...:parameter/k:3`)."""
    fields = name.split(":")
    base_fields = _ARN_FIELDS if name.startswith("arn:") else 1
    if len(fields) <= base_fields:
        return _Request(base=name, selector=None)
    return _Request(base=":".join(fields[:base_fields]), selector=":".join(fields[base_fields:]))


def _lookup(by_name: dict[str, dict[str, Any]], base: str) -> dict[str, Any] | None:
    parameter = by_name.get(base) or by_name.get(_canonical_name(base))
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
    one request per parameter can be matched in each response. `/k` and `k` name one parameter,
    so they are kept apart too.
    """
    batches: list[list[_Request]] = []
    bases: list[set[str]] = []
    for request in requests:
        base = _canonical_name(request.base)
        for batch, names in zip(batches, bases, strict=True):
            if len(batch) < MAX_NAMES_PER_REQUEST and base not in names:
                batch.append(request)
                names.add(base)
                break
        else:
            batches.append([request])
            bases.append({base})
    return batches
