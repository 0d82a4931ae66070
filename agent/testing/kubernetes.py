"""A Kubernetes API emulator for the controller's tests and benchmark, built on kmock.

kmock's `KubernetesEmulator` keeps objects in memory and serves discovery, list, watch, get,
create, merge patch and delete over HTTP. It keeps no resourceVersion, ignores label selectors
and never returns 409 Conflict for an update. `KubernetesApiEmulator` adds the API server
behaviour the controller depends on:

- `metadata.uid`, `creationTimestamp` and `resourceVersion` (one counter for every object,
  moved only by a write that changes something), and `metadata.generation` for resources of a
  named API group, moved when anything outside `metadata` and `status` changes;
- optimistic concurrency: a write that names a stale `metadata.resourceVersion` gets 409
  Conflict, a JSON patch whose `test` operation fails gets 422;
- JSON merge patch as RFC 7386 defines it, JSON patch, and PUT to replace an object;
- the status subresource: a write to `/status` changes only `status`, and a write to the object
  itself leaves `status` alone;
- label selectors on list and watch, parsed and matched as the API server does (see
  `agent.testing.labels`; an invalid one gets 400); a watch reports an object that starts or
  stops matching as ADDED or DELETED;
- watches from a `resourceVersion`, as a client sends after its list: the changes after that
  version are replayed from the last `watch_history` events of that resource. An older
  version gets the watch event `ERROR` with status 410 Expired, so the client lists again. A
  watch without a version (or with "0") starts with every current object as ADDED;
- garbage collection: deleting an object deletes, in the background, every object whose
  `ownerReferences` all point to deleted objects;
- namespace objects (`/api/v1/namespaces[/NAME]`), which kmock's URL parser cannot read;
- the TokenRequest subresource: `POST .../serviceaccounts/NAME/token` returns an unsigned
  JWT-shaped token for an existing service account (see `agent.testing.jwt`);
- injected failures: `fail_writes` makes the next writes of one method (to objects or to one
  subresource) fail with an error status, as an API server that is overloaded or restarting.
  `delay_responses` makes writes of one method take effect at once but respond late, as over a
  slow network;
- traffic counts for benchmarks: the requests, objects and response bytes that lists and watches
  sent, per resource and label selector, in `traffic` and at `GET /_emulator/traffic` (a path
  the API server does not have).

Limitation: strategic merge patch is treated as a JSON merge patch (lists are replaced, never
merged by key), field selectors are ignored, and admission (CRD schemas, defaults, RBAC) is not
emulated.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import importlib.resources
import json
import re
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
from kmock import KubernetesEmulator, KubernetesError, ResourceInfo, resource
from kmock._internal import rendering

from agent.testing import labels
from agent.testing.jwt import fake_jwt
from agent.testing.labels import LabelRequirement

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
DEFAULT_TOKEN_SECONDS = 3600
CONTROLLER_RESOURCES: dict[str, ResourceInfo] = {
    "secrets-agent.io/v1alpha1/externalsecrets": ResourceInfo(
        kind="ExternalSecret", singular="externalsecret", namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status"},
    ),
    "secrets-agent.io/v1alpha1/secretstores": ResourceInfo(
        kind="SecretStore", singular="secretstore", namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status"},
    ),
    "secrets-agent.io/v1alpha1/clustersecretstores": ResourceInfo(
        kind="ClusterSecretStore", singular="clustersecretstore", namespaced=False,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status"},
    ),
    "secrets-agent.io/v1alpha1/vaultdynamicsecrets": ResourceInfo(
        kind="VaultDynamicSecret", singular="vaultdynamicsecret", namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status"},
    ),
    "kopf.dev/v1/clusterkopfpeerings": ResourceInfo(
        kind="ClusterKopfPeering", singular="clusterkopfpeering", namespaced=False,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "kopf.dev/v1/kopfpeerings": ResourceInfo(
        kind="KopfPeering", singular="kopfpeering", namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
}  # fmt: skip

TRAFFIC_PATH = "/_emulator/traffic"
# Events kept per resource for watches that resume from a resourceVersion. The API server keeps
# changes until etcd compacts them, which depends on time rather than on a count.
WATCH_HISTORY = 10_000
_NAMESPACES_PATH = re.compile(r"/api/v1/namespaces(?:/(?P<name>[^/]+))?/?")


class KubernetesConflictError(KubernetesError):
    """409: the write named a stale resourceVersion, or the object already exists."""


class KubernetesInvalidError(KubernetesError):
    """422: the request cannot be applied (a failed JSON patch test, an invalid body)."""


def parse_label_selector(text: str) -> list[LabelRequirement]:
    """Parse a label selector as the API server does; raise KubernetesInvalidError if invalid."""
    try:
        return labels.parse_label_selector(text)
    except labels.LabelSelectorError as error:
        raise KubernetesInvalidError(
            status=400, reason="BadRequest", message=f"unable to parse requirement: {error}"
        ) from None


def selector_matches(requirements: list[LabelRequirement], body: Mapping[str, Any] | None) -> bool:
    if body is None:
        return False
    return labels.labels_match(requirements, body.get("metadata", {}).get("labels") or {})


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7386): objects merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass(frozen=True)
class IssuedToken:
    """A token the TokenRequest subresource returned, for assertions."""

    namespace: str
    service_account: str
    audiences: tuple[str, ...]
    token: str


@dataclass
class Traffic:
    """Requests, objects and response bytes sent by the lists or watches of one resource and
    label selector."""

    requests: int = 0
    objects: int = 0
    bytes: int = 0


@attrs.define(kw_only=True)
class KubernetesApiEmulator(KubernetesEmulator):
    """kmock's emulator with resource versions, conflicts, selectors, GC and TokenRequest."""

    _counter: int = attrs.field(default=0, init=False)
    issued_tokens: list[IssuedToken] = attrs.field(factory=list, init=False)
    # ("list" or "watch", "v1/secrets" or "group/version/plural", label selector) -> Traffic
    traffic: dict[tuple[str, str, str], Traffic] = attrs.field(factory=dict, init=False)
    # Whether kmock keeps every request for assertions. kmock's reaction matching scans that
    # whole list on each request it matches, so a long-running server drops finished requests.
    keep_requests: bool = True
    # How many of a resource's latest changes are kept for watches that resume.
    watch_history: int = WATCH_HISTORY
    # resource -> (resourceVersion, event) of its latest changes, oldest first.
    _history: dict[Any, collections.deque[tuple[int, dict[str, Any]]]] = attrs.field(
        factory=dict, init=False
    )
    # resource -> the newest resourceVersion dropped from its history; a watch from an older
    # version gets 410.
    _history_floor: dict[Any, int] = attrs.field(factory=dict, init=False)
    # (method, plural, subresource) -> [status, writes left to fail]; see `fail_writes`.
    _failures: dict[tuple[str, str | None, str | None], list[int]] = attrs.field(
        factory=dict, init=False
    )
    # (method, plural) -> seconds to wait before responding; see `delay_responses`.
    _delays: dict[tuple[str, str], float] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock's own resource list, as `resources.load_bundled()` reads it, without the
        # deprecated importlib call that method makes.
        bundled = importlib.resources.files("kmock._internal") / "resources.json.gz"
        with importlib.resources.as_file(bundled) as path:
            self.resources.load_path(path)
        for key, info in CONTROLLER_RESOURCES.items():
            self.resources[key] = attrs.evolve(info)

    @property
    def resource_version(self) -> int:
        """The resourceVersion of the latest change to any object."""
        return self._counter

    def body(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """Return a deep copy of an object as the API serves it, or None when it does not exist.

        `plural` is `group/version/plural`, or `v1/plural` for the core group.
        """
        key = (resource(plural), namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(self._objects[key].raw)

    def fail_writes(
        self,
        method: str,
        *,
        plural: str | None = None,
        subresource: str | None = None,
        times: int = 1,
        status: int = 503,
    ) -> None:
        """Make the next `times` writes with `method` fail with `status` and a Kubernetes Status
        body, changing nothing: writes to objects of `plural` (of any resource when None), or to
        their `subresource`. `times=0` ends an earlier injection."""
        self._failures[(method.upper(), plural, subresource)] = [status, times]

    def delay_responses(self, method: str, *, plural: str, seconds: float) -> None:
        """Respond to writes with `method` to objects of `plural` `seconds` late. The write
        itself (and its watch event) happens at once. Method "LIST" delays lists of `plural`, so a
        client's watch of that resource starts late. `seconds=0` ends it."""
        self._delays[(method.upper(), plural)] = seconds

    def _injected_failure(self, method: str, plural: str, subresource: str | None) -> int | None:
        for key in ((method, plural, subresource), (method, None, subresource)):
            failure = self._failures.get(key)
            if failure is not None and failure[1] > 0:
                failure[1] -= 1
                return failure[0]
        return None

    # --- routing -------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock reads `/api/v1/namespaces/NAME` as a namespace prefix without a resource (and
        # fails on `/api/v1/namespaces`), so namespace objects are served here.
        if raw_request.path == TRAFFIC_PATH:
            return aiohttp.web.json_response(self._traffic_report())
        match = _NAMESPACES_PATH.fullmatch(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        await raw_request.read()
        return await self._serve_namespace(raw_request, match["name"])

    async def _serve_namespace(
        self, raw_request: aiohttp.web.BaseRequest, name: str | None
    ) -> aiohttp.web.StreamResponse:
        namespaces = resource("v1/namespaces")
        if raw_request.method == "POST" and name is None:
            body = await raw_request.json()
            self.add_namespace(body["metadata"]["name"], body["metadata"].get("labels"))
            return aiohttp.web.json_response(
                self.body("v1/namespaces", None, body["metadata"]["name"]), status=201
            )
        if raw_request.method != "GET":
            return aiohttp.web.json_response({"kind": "Status", "code": 405}, status=405)
        if name is None and raw_request.query.get("watch") in ("true", "1"):
            return await self._watch_namespaces(raw_request)
        if name is None:
            items = [
                obj.raw
                for (res, _, _), obj in self._objects.items()
                if res == namespaces and not obj.deleted
            ]
            return aiohttp.web.json_response(
                {"kind": "NamespaceList", "metadata": {}, "items": items}
            )
        found = self.body("v1/namespaces", None, name)
        if found is None:
            return aiohttp.web.json_response(
                {"kind": "Status", "code": 404, "reason": "NotFound"}, status=404
            )
        return aiohttp.web.json_response(found)

    async def _watch_namespaces(
        self, raw_request: aiohttp.web.BaseRequest
    ) -> aiohttp.web.StreamResponse:
        """Stream every namespace as ADDED, then keep the stream open until the client leaves.

        kopf watches namespaces when it serves a list of them. Namespaces are created only
        through `add_namespace` and the POST above, which send no watch event, so none follows.
        """
        namespaces = resource("v1/namespaces")
        response = aiohttp.web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(raw_request)
        for (res, _, _), obj in list(self._objects.items()):
            if res == namespaces and not obj.deleted:
                event = {"type": "ADDED", "object": obj.raw}
                await response.write(json.dumps(event).encode() + b"\n")
        transport = raw_request.transport
        while transport is not None and not transport.is_closing():
            await asyncio.sleep(0.2)
        return response

    def add_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Create a namespace object (before watchers start; no watch event is sent)."""
        self._objects[(resource("v1/namespaces"), None, name)] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": dict(labels or {}),
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_version(),
                "creationTimestamp": _now(),
            },
        }

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        try:
            return await self._serve(request)
        finally:
            if not self.keep_requests:
                self._forget(request)

    def _forget(self, request: rendering.Request) -> None:
        for index in range(len(self._requests) - 1, -1, -1):
            if self._requests[index] is request:
                del self._requests[index]
                return

    async def _serve(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        method = str(request.method.value).upper()
        if method == "GET" and request.resource is not None and request.resource.plural:
            # Reads of objects are served directly (discovery has no plural and goes to kmock).
            # kmock's reaction matching scans every request served so far, so through it each
            # read would cost more than the one before.
            if request.action == "WATCH":
                return await self._stream(request, self._serve_watch(request))
            if request.name is None:
                delay = self._delays.get(("LIST", request.resource.plural), 0.0)
                if delay > 0:
                    await asyncio.sleep(delay)
                return aiohttp.web.json_response(await self._serve_list(request))
            async with self._lock:
                return aiohttp.web.json_response(self._current(request))
        write = self._write_for(request)
        if write is None:
            return await super()._handle(request)
        assert request.resource is not None  # `_write_for` found a write to a resource
        failed = self._injected_failure(method, request.resource.plural, request.subresource)
        if failed is not None:
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": "injected failure",
                "code": failed,
            }
            return aiohttp.web.json_response(status, status=failed)
        async with self._lock:
            status, body = await write(request)
        delay = self._delays.get((method, request.resource.plural), 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        return aiohttp.web.json_response(body, status=status)

    def _write_for(self, request: rendering.Request) -> Callable[[rendering.Request], Any] | None:
        if request.resource is None:
            return None
        method = str(request.method.value).upper()
        if method == "POST" and request.name is None:
            return self._create
        if method == "POST" and request.subresource == "token":
            return self._request_token
        if request.name is None:
            return None
        if method == "PATCH":
            return self._patch
        if method == "PUT":
            return self._replace
        if method == "DELETE":
            return self._delete
        return None

    # --- writes --------------------------------------------------------------------------------

    async def _create(self, request: rendering.Request) -> tuple[int, dict[str, Any]]:
        body = copy.deepcopy(request.data or {})
        metadata = body.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
        namespace = request.namespace or metadata.get("namespace")
        if namespace is not None:
            metadata["namespace"] = namespace
        key = (request.resource, namespace, metadata.get("name"))
        if key in self._objects and not self._objects[key].deleted:
            raise KubernetesConflictError(
                status=409, reason="AlreadyExists", message=f"{metadata.get('name')} exists"
            )
        if self._has_status(request.resource):
            body.pop("status", None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = _now()
        metadata["resourceVersion"] = self._next_version()
        if request.resource.group:
            metadata["generation"] = 1
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            metadata.pop(field, None)
        if key in self._objects:
            self._objects[key].history.append(body)
        else:
            self._objects[key] = body
        await self._publish(request.resource, "ADDED", body, previous=None)
        return 201, body

    async def _patch(self, request: rendering.Request) -> tuple[int, dict[str, Any]]:
        current = self._current(request)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type == JSON_PATCH:
            try:
                patched = jsonpatch.apply_patch(current, request.data, in_place=False)
            except jsonpatch.JsonPatchTestFailed:
                raise KubernetesInvalidError(
                    status=422, reason="Invalid", message="the JSON patch test failed"
                ) from None
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                raise KubernetesInvalidError(
                    status=422, reason="Invalid", message=f"invalid JSON patch: {error}"
                ) from None
        else:
            self._check_precondition(current, request.data)
            patched = merge_patch(current, request.data)
        return await self._store(request, current, patched)

    async def _replace(self, request: rendering.Request) -> tuple[int, dict[str, Any]]:
        current = self._current(request)
        self._check_precondition(current, request.data)
        return await self._store(request, current, copy.deepcopy(request.data))

    async def _store(
        self, request: rendering.Request, current: dict[str, Any], new: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """Keep what the subresource rules protect, then record `new` if it changed anything."""
        new = self._apply_subresource_rules(request, current, new)
        if new == current:
            return 200, current
        _check_immutable_fields(request.resource, current, new)
        metadata = new["metadata"]
        if request.resource.group and _spec_part(new) != _spec_part(current):
            metadata["generation"] = int(current["metadata"].get("generation", 1)) + 1
        metadata["resourceVersion"] = self._next_version()
        key = (request.resource, request.namespace, request.name)
        self._objects[key].history.append(new)
        await self._publish(request.resource, "MODIFIED", new, previous=current)
        if metadata.get("deletionTimestamp") and not metadata.get("finalizers"):
            await self._remove(key, new)
        return 200, new

    def _apply_subresource_rules(
        self, request: rendering.Request, current: dict[str, Any], new: dict[str, Any]
    ) -> dict[str, Any]:
        protected = {
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
            "namespace",
            "name",
        }
        if self._has_status(request.resource):
            if request.subresource == "status":
                result = copy.deepcopy(current)
                if "status" in new:
                    result["status"] = new["status"]
                else:
                    result.pop("status", None)
                return result
            new = dict(new)
            if "status" in current:
                new["status"] = current["status"]
            else:
                new.pop("status", None)
        metadata = dict(new.get("metadata") or {})
        for field in protected:
            if field in current["metadata"]:
                metadata[field] = current["metadata"][field]
            else:
                metadata.pop(field, None)
        new["metadata"] = metadata
        return new

    async def _delete(self, request: rendering.Request) -> tuple[int, dict[str, Any]]:
        current = self._current(request)
        self._check_precondition(current, {"metadata": _delete_preconditions(request.data)})
        key = (request.resource, request.namespace, request.name)
        metadata = current["metadata"]
        if metadata.get("finalizers"):
            if metadata.get("deletionTimestamp"):
                return 200, current
            marked = copy.deepcopy(current)
            marked["metadata"]["deletionTimestamp"] = _now()
            marked["metadata"]["resourceVersion"] = self._next_version()
            self._objects[key].history.append(marked)
            await self._publish(request.resource, "MODIFIED", marked, previous=current)
            return 200, marked
        await self._remove(key, current)
        return 200, current

    async def _remove(self, key: tuple[Any, str | None, str], body: dict[str, Any]) -> None:
        """Delete an object now, then every object left without a live owner."""
        self._objects[key].delete()
        await self._publish(key[0], "DELETED", body, previous=body)
        await self._collect_garbage()

    async def _collect_garbage(self) -> None:
        live = {obj.raw["metadata"].get("uid") for obj in self._objects.values() if not obj.deleted}
        for key, obj in list(self._objects.items()):
            if obj.deleted:
                continue
            owners = obj.raw.get("metadata", {}).get("ownerReferences") or []
            if owners and not any(owner.get("uid") in live for owner in owners):
                body = copy.deepcopy(obj.raw)
                if body["metadata"].get("finalizers"):
                    if not body["metadata"].get("deletionTimestamp"):
                        previous = copy.deepcopy(body)
                        body["metadata"]["deletionTimestamp"] = _now()
                        body["metadata"]["resourceVersion"] = self._next_version()
                        obj.history.append(body)
                        await self._publish(key[0], "MODIFIED", body, previous=previous)
                    continue
                await self._remove(key, body)

    async def _request_token(self, request: rendering.Request) -> tuple[int, dict[str, Any]]:
        account = (resource("v1/serviceaccounts"), request.namespace, request.name)
        if account not in self._objects or self._objects[account].deleted:
            raise KubernetesError(
                status=404,
                reason="NotFound",
                message=f'serviceaccounts "{request.name}" not found',
            )
        spec = dict((request.data or {}).get("spec") or {})
        audiences = tuple(spec.get("audiences") or ["https://kubernetes.default.svc"])
        seconds = int(spec.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS)
        token = fake_jwt(
            f"system:serviceaccount:{request.namespace}:{request.name}",
            aud=list(audiences),
            exp=int(datetime.datetime.now(datetime.UTC).timestamp()) + seconds,
            **{
                "kubernetes.io": {
                    "namespace": request.namespace,
                    "serviceaccount": {"name": request.name},
                }
            },
        )
        assert request.namespace is not None and request.name is not None
        self.issued_tokens.append(IssuedToken(request.namespace, request.name, audiences, token))
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
        return 201, {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": request.name, "namespace": request.namespace},
            "spec": {"audiences": list(audiences), "expirationSeconds": seconds},
            "status": {"token": token, "expirationTimestamp": _stamp(expires)},
        }

    # --- reads ---------------------------------------------------------------------------------

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_list(request)
        requirements = parse_label_selector(request.params.get("labelSelector", ""))
        assert isinstance(payload, dict)
        payload["items"] = [
            item for item in payload["items"] if selector_matches(requirements, item)
        ]
        payload["metadata"] = {"resourceVersion": str(self._counter)}
        traffic = self._traffic_of("list", request)
        traffic.requests += 1
        traffic.objects += len(payload["items"])
        traffic.bytes += len(json.dumps(payload))
        return payload

    async def _serve_watch(self, request: rendering.Request) -> AsyncGenerator[bytes, None]:
        requirements = parse_label_selector(request.params.get("labelSelector", ""))
        since = _watch_start(request.params.get("resourceVersion"))
        assert request.resource is not None
        bus = self._buses[request.resource]
        traffic = self._traffic_of("watch", request)
        traffic.requests += 1
        yield b""  # sends the headers, so the client sees the stream open
        async with self._lock:
            mark = await bus.mark()
            if since is None:
                replay = self._current_as_added(request)
            elif since < self._history_floor.get(request.resource, 0):
                replay = [_expired(since, self._history_floor[request.resource])]
            else:
                replay = [
                    event
                    for version, event in self._history.get(request.resource, ())
                    if version > since
                ]
        try:
            for event in replay:
                translated = _watch_event(event, request, requirements)
                if translated is not None:
                    yield _counted(traffic, translated)
                if translated is not None and translated["type"] == "ERROR":
                    return
            async for event in bus.stream(since=mark):
                translated = _watch_event(event, request, requirements)
                if translated is not None:
                    yield _counted(traffic, translated)
        finally:
            await bus.unmark(mark)

    def _current_as_added(self, request: rendering.Request) -> list[dict[str, Any]]:
        return [
            {"type": "ADDED", "object": obj.raw, "previous": None}
            for (res, namespace, name), obj in self._objects.items()
            if res == request.resource
            and not obj.deleted
            and (request.namespace is None or namespace == request.namespace)
            and (request.name is None or name == request.name)
        ]

    async def _stream(
        self, request: rendering.Request, chunks: AsyncGenerator[bytes, None]
    ) -> aiohttp.web.StreamResponse:
        """Send a watch's chunks. An error raised before the first chunk reaches kmock, which
        returns it as an API error status."""
        first = await anext(chunks)
        response = aiohttp.web.StreamResponse()
        response.content_type = "application/json"
        assert request._raw_request is not None
        await response.prepare(request._raw_request)
        try:
            await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            await chunks.aclose()
        return response

    # --- helpers -------------------------------------------------------------------------------

    def _traffic_of(self, verb: str, request: rendering.Request) -> Traffic:
        assert request.resource is not None
        name = "/".join(
            part
            for part in (request.resource.group, request.resource.version, request.resource.plural)
            if part
        )
        key = (verb, name, request.params.get("labelSelector", ""))
        return self.traffic.setdefault(key, Traffic())

    def _traffic_report(self) -> list[dict[str, Any]]:
        return [
            {"verb": verb, "resource": name, "labelSelector": selector, **asdict(traffic)}
            for (verb, name, selector), traffic in self.traffic.items()
        ]

    def _current(self, request: rendering.Request) -> dict[str, Any]:
        key = (request.resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            raise KubernetesError(
                status=404,
                reason="NotFound",
                message=f'{request.resource.plural} "{request.name}" not found',
            )
        return copy.deepcopy(self._objects[key].raw)

    def _check_precondition(self, current: dict[str, Any], body: Any) -> None:
        if not isinstance(body, dict):
            return
        expected = (body.get("metadata") or {}).get("resourceVersion")
        if expected and str(expected) != str(current["metadata"].get("resourceVersion")):
            raise KubernetesConflictError(
                status=409,
                reason="Conflict",
                message="the object has been modified; apply your changes to the latest version",
            )

    def _has_status(self, res: Any) -> bool:
        return res in self.resources and "status" in self.resources[res].subresources

    def _next_version(self) -> str:
        self._counter += 1
        return str(self._counter)

    async def _publish(
        self, res: Any, kind: str, body: dict[str, Any], *, previous: dict[str, Any] | None
    ) -> None:
        event = {"type": kind, "object": copy.deepcopy(body), "previous": previous}
        if kind == "DELETED":
            # The API server gives a deletion a resourceVersion of its own.
            event["object"]["metadata"]["resourceVersion"] = self._next_version()
        history = self._history.setdefault(res, collections.deque(maxlen=self.watch_history))
        if len(history) == history.maxlen:
            self._history_floor[res] = history[0][0]
        history.append((int(event["object"]["metadata"]["resourceVersion"]), event))
        await self._buses[res].put(event)


def _watch_start(value: str | None) -> int | None:
    """Read a watch's `resourceVersion`: None for none or "0" (start with the current objects)."""
    if value in (None, "", "0"):
        return None
    if not value.isdigit():
        raise KubernetesInvalidError(
            status=400, reason="BadRequest", message=f"invalid resourceVersion {value!r}"
        )
    return int(value)


def _expired(since: int, floor: int) -> dict[str, Any]:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": 410,
        "reason": "Expired",
        "message": f"too old resource version: {since} ({floor + 1})",
    }
    return {"type": "ERROR", "object": status}


def _watch_event(
    event: Mapping[str, Any], request: rendering.Request, requirements: list[LabelRequirement]
) -> dict[str, Any] | None:
    """Translate a recorded change into the event one watcher receives, or None for none."""
    if event["type"] == "ERROR":
        return dict(event)
    body = event["object"]
    metadata = body.get("metadata", {})
    if request.namespace is not None and metadata.get("namespace") != request.namespace:
        return None
    if request.name is not None and metadata.get("name") != request.name:
        return None
    kind = event["type"]
    now = selector_matches(requirements, body)
    before = selector_matches(requirements, event.get("previous"))
    if kind == "ADDED":
        return {"type": "ADDED", "object": body} if now else None
    if kind == "DELETED":
        return {"type": "DELETED", "object": body} if now else None
    if now and before:
        return {"type": "MODIFIED", "object": body}
    if now:
        return {"type": "ADDED", "object": body}
    if before:
        return {"type": "DELETED", "object": body}
    return None


def _counted(traffic: Traffic, event: dict[str, Any]) -> bytes:
    """Encode one watch event as a JSON line, as kmock would, and count it."""
    line = json.dumps(event).encode() + b"\n"
    traffic.objects += 1
    traffic.bytes += len(line)
    return line


def _check_immutable_fields(res: Any, current: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Reject, as the API server's validation does, an update that changes a Secret's `type`, or
    the data or `immutable` flag of a Secret or ConfigMap marked `immutable: true`."""
    if res.group or res.plural not in ("secrets", "configmaps"):
        return
    kind = "Secret" if res.plural == "secrets" else "ConfigMap"
    invalid = f'{kind} "{current["metadata"].get("name")}" is invalid'
    if kind == "Secret" and new.get("type", "Opaque") != current.get("type", "Opaque"):
        raise KubernetesInvalidError(
            status=422,
            reason="Invalid",
            message=f'{invalid}: type: Invalid value: "{new.get("type")}": field is immutable',
        )
    if not current.get("immutable"):
        return
    for field in ("data", "binaryData", "immutable"):
        if new.get(field) != current.get(field):
            raise KubernetesInvalidError(
                status=422,
                reason="Invalid",
                message=f"{invalid}: {field}: Forbidden: field is immutable when `immutable` "
                "is set",
            )


def _spec_part(body: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in ("metadata", "status")}


def _delete_preconditions(data: Any) -> dict[str, Any]:
    if isinstance(data, dict):
        return {"resourceVersion": (data.get("preconditions") or {}).get("resourceVersion")}
    return {}


def _now() -> str:
    return _stamp(datetime.datetime.now(datetime.UTC))


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def serve(*, host: str, port: int, namespaces: list[str]) -> None:
    """Serve an emulator until cancelled; print its URL on the first line of stdout."""
    import asyncio

    import kmock

    emulator = KubernetesApiEmulator(keep_requests=False)
    for name in namespaces:
        emulator.add_namespace(name)
    async with emulator, kmock.Server(emulator, host=host, port=port) as server:
        print(str(server.url).rstrip("/"), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":  # pragma: no cover - used by bench/bench_controller.py
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(description="Serve the Kubernetes API emulator.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--namespace", action="append", default=[])
    options = parser.parse_args()
    asyncio.run(serve(host="127.0.0.1", port=options.port, namespaces=options.namespace))
