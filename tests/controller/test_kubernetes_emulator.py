"""The Kubernetes API emulator's additions to kmock, over HTTP with a plain aiohttp client.

The controller tests rely on these semantics (resource versions, conflicts, label selectors,
the status subresource, garbage collection, TokenRequest), so they are checked here on their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kmock
import pytest
from kmock import KubernetesError

from agent.testing.kubernetes import KubernetesApiEmulator, merge_patch, parse_label_selector

SECRETS = "/api/v1/namespaces/team-a/secrets"
ES = "/apis/secrets-agent.io/v1alpha1/namespaces/team-a/externalsecrets"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
async def api() -> AsyncIterator[tuple[KubernetesApiEmulator, aiohttp.ClientSession]]:
    emulator = KubernetesApiEmulator()
    async with emulator, kmock.Server(emulator) as server:
        async with aiohttp.ClientSession(base_url=server.url) as session:
            yield emulator, session


async def call(
    session: aiohttp.ClientSession, method: str, path: str, body: Any = None, **kwargs: Any
) -> tuple[int, Any]:
    async with session.request(method, path, json=body, **kwargs) as response:
        return response.status, await response.json()


def secret(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels or {}},
        "data": {"a": base64.b64encode(b"fake-value-1").decode()},
    }


async def test_create_sets_identity_and_version(api) -> None:
    emulator, session = api
    status, body = await call(session, "POST", SECRETS, secret("one"))
    assert status == 201
    assert body["metadata"]["uid"]
    assert body["metadata"]["resourceVersion"] == "1"
    assert body["metadata"]["namespace"] == "team-a"
    assert "generation" not in body["metadata"]  # core resources carry none


async def test_create_twice_conflicts(api) -> None:
    _, session = api
    await call(session, "POST", SECRETS, secret("one"))
    status, body = await call(session, "POST", SECRETS, secret("one"))
    assert status == 409
    assert body["reason"] == "AlreadyExists"


async def test_patch_moves_version_only_on_change(api) -> None:
    _, session = api
    await call(session, "POST", SECRETS, secret("one"))
    status, same = await call(
        session, "PATCH", f"{SECRETS}/one", {"data": secret("one")["data"]}, headers=MERGE
    )
    assert status == 200
    assert same["metadata"]["resourceVersion"] == "1"
    _, changed = await call(
        session, "PATCH", f"{SECRETS}/one", {"data": {"b": "eA=="}}, headers=MERGE
    )
    assert changed["metadata"]["resourceVersion"] == "2"
    assert set(changed["data"]) == {"a", "b"}


async def test_stale_resource_version_conflicts(api) -> None:
    _, session = api
    await call(session, "POST", SECRETS, secret("one"))
    await call(session, "PATCH", f"{SECRETS}/one", {"data": {"b": "eA=="}}, headers=MERGE)
    stale = {"metadata": {"resourceVersion": "1"}, "data": {"c": "eA=="}}
    status, body = await call(session, "PATCH", f"{SECRETS}/one", stale, headers=MERGE)
    assert status == 409
    assert body["reason"] == "Conflict"


async def test_json_patch_test_failure_is_422(api) -> None:
    _, session = api
    await call(session, "POST", SECRETS, secret("one"))
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]
    headers = {"Content-Type": "application/json-patch+json"}
    status, _ = await call(session, "PATCH", f"{SECRETS}/one", ops, headers=headers)
    assert status == 422


async def test_merge_patch_null_removes_key(api) -> None:
    _, session = api
    await call(session, "POST", SECRETS, secret("one"))
    _, body = await call(session, "PATCH", f"{SECRETS}/one", {"data": {"a": None}}, headers=MERGE)
    assert body.get("data") == {}


async def test_put_replaces_object(api) -> None:
    _, session = api
    _, created = await call(session, "POST", SECRETS, secret("one"))
    replacement = secret("one")
    replacement["data"] = {"z": "eA=="}
    replacement["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    status, body = await call(session, "PUT", f"{SECRETS}/one", replacement)
    assert status == 200
    assert body["data"] == {"z": "eA=="}
    assert body["metadata"]["uid"] == created["metadata"]["uid"]


async def test_status_subresource_isolated(api) -> None:
    _, session = api
    document = {
        "apiVersion": "secrets-agent.io/v1alpha1",
        "kind": "ExternalSecret",
        "metadata": {"name": "es"},
        "spec": {"refreshInterval": "1h"},
        "status": {"ignored": True},
    }
    _, created = await call(session, "POST", ES, document)
    assert "status" not in created
    assert created["metadata"]["generation"] == 1
    _, body = await call(
        session, "PATCH", f"{ES}/es/status", {"status": {"refreshTime": "t"}}, headers=MERGE
    )
    assert body["status"] == {"refreshTime": "t"}
    assert body["metadata"]["generation"] == 1
    _, body = await call(
        session,
        "PATCH",
        f"{ES}/es",
        {"spec": {"refreshInterval": "2h"}, "status": {"refreshTime": "u"}},
        headers=MERGE,
    )
    assert body["status"] == {"refreshTime": "t"}
    assert body["metadata"]["generation"] == 2


async def test_metadata_change_keeps_generation(api) -> None:
    _, session = api
    document = {"metadata": {"name": "es"}, "spec": {"refreshInterval": "1h"}}
    await call(session, "POST", ES, document)
    patch = {"metadata": {"annotations": {"force-sync": "1"}}}
    _, body = await call(session, "PATCH", f"{ES}/es", patch, headers=MERGE)
    assert body["metadata"]["generation"] == 1
    assert body["metadata"]["resourceVersion"] == "2"


async def test_list_filters_by_label_selector(api) -> None:
    _, session = api
    await call(session, "POST", SECRETS, secret("managed", {"secrets-agent.io/managed": "true"}))
    await call(session, "POST", SECRETS, secret("other", {"app": "x"}))
    params = {"labelSelector": "secrets-agent.io/managed=true"}
    _, body = await call(session, "GET", SECRETS, params=params)
    assert [item["metadata"]["name"] for item in body["items"]] == ["managed"]


def test_label_selector_operators() -> None:
    labels = {"tier": "web", "env": "prod"}
    cases = {
        "tier=web": True,
        "tier==web": True,
        "tier!=web": False,
        "env in (prod, dev)": True,
        "env notin (prod)": False,
        "tier": True,
        "!tier": False,
        "!missing": True,
        "tier=web,env=dev": False,
    }
    for text, expected in cases.items():
        requirements = parse_label_selector(text)
        assert all(r.matches(labels) for r in requirements) is expected, text


async def test_watch_reports_selector_transitions(api) -> None:
    _, session = api
    selector = "secrets-agent.io/managed=true"
    await call(session, "POST", SECRETS, secret("s", {"secrets-agent.io/managed": "true"}))
    events: list[tuple[str, str]] = []

    async def watch() -> None:
        params = {"watch": "true", "labelSelector": selector}
        async with session.get(SECRETS, params=params) as response:
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    events.append((event["type"], event["object"]["metadata"]["name"]))

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    unlabel = {"metadata": {"labels": {"secrets-agent.io/managed": None}}}
    await call(session, "PATCH", f"{SECRETS}/s", unlabel, headers=MERGE)
    await call(session, "POST", SECRETS, secret("ignored"))
    relabel = {"metadata": {"labels": {"secrets-agent.io/managed": "true"}}}
    await call(session, "PATCH", f"{SECRETS}/s", relabel, headers=MERGE)
    await asyncio.sleep(0.2)
    task.cancel()
    assert events == [("ADDED", "s"), ("DELETED", "s"), ("ADDED", "s")]


async def test_delete_collects_owned_objects(api) -> None:
    emulator, session = api
    _, owner = await call(session, "POST", ES, {"metadata": {"name": "es"}, "spec": {}})
    owned = secret("owned")
    owned["metadata"]["ownerReferences"] = [
        {"apiVersion": "secrets-agent.io/v1alpha1", "kind": "ExternalSecret", "name": "es",
         "uid": owner["metadata"]["uid"], "controller": True}
    ]  # fmt: skip
    await call(session, "POST", SECRETS, owned)
    await call(session, "POST", SECRETS, secret("unowned"))
    status, _ = await call(session, "DELETE", f"{ES}/es")
    assert status == 200
    assert emulator.body("v1/secrets", "team-a", "owned") is None
    assert emulator.body("v1/secrets", "team-a", "unowned") is not None


async def test_finalizer_holds_deletion(api) -> None:
    emulator, session = api
    document = {"metadata": {"name": "es", "finalizers": ["secrets-agent.io/finalizer"]}}
    await call(session, "POST", ES, document)
    _, marked = await call(session, "DELETE", f"{ES}/es")
    assert marked["metadata"]["deletionTimestamp"]
    assert emulator.body("secrets-agent.io/v1alpha1/externalsecrets", "team-a", "es")
    release = {"metadata": {"finalizers": None}}
    await call(session, "PATCH", f"{ES}/es", release, headers=MERGE)
    assert emulator.body("secrets-agent.io/v1alpha1/externalsecrets", "team-a", "es") is None


async def test_token_request_for_existing_account(api) -> None:
    emulator, session = api
    accounts = "/api/v1/namespaces/team-a/serviceaccounts"
    await call(session, "POST", accounts, {"metadata": {"name": "vault-reader"}})
    request = {"spec": {"audiences": ["vault"], "expirationSeconds": 600}}
    status, body = await call(session, "POST", f"{accounts}/vault-reader/token", request)
    assert status == 201
    assert body["status"]["token"].count(".") == 2
    assert emulator.issued_tokens[0].audiences == ("vault",)
    status, _ = await call(session, "POST", f"{accounts}/missing/token", request)
    assert status == 404


def test_merge_patch_follows_rfc7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "list": [3], "new": {"x": 1}}
    assert merge_patch(target, patch) == {
        "a": "z",
        "c": {"d": "e"},
        "list": [3],
        "new": {"x": 1},
    }


async def test_namespaces_served(api) -> None:
    _, session = api
    body = {"metadata": {"name": "team-x", "labels": {"tier": "prod"}}}
    status, created = await call(session, "POST", "/api/v1/namespaces", body)
    assert status == 201
    status, fetched = await call(session, "GET", "/api/v1/namespaces/team-x")
    assert status == 200
    assert fetched["metadata"]["labels"] == {"tier": "prod"}
    _, listed = await call(session, "GET", "/api/v1/namespaces")
    assert [item["metadata"]["name"] for item in listed["items"]] == ["team-x"]
    status, _ = await call(session, "GET", "/api/v1/namespaces/missing")
    assert status == 404


SELECTOR_LABELS = {"tier": "web", "env": "prod", "size": "10", "empty": "", "in": "in"}
VALID_SELECTORS = [
    ("", True),
    ("  ", True),
    ("tier=web", True),
    ("tier==web", True),
    ("  tier = web  ", True),
    ("tier!=web", False),
    ("tier!=db", True),
    ("missing!=x", True),
    ("missing=x", False),
    ("env in (prod,dev)", True),
    ("env in(prod)", True),
    ("env notin (prod)", False),
    ("env notin (dev)", True),
    ("missing notin (a)", True),
    ("missing in (a)", False),
    ("tier", True),
    ("!tier", False),
    ("! missing", True),
    ("size>5", True),
    ("size<5", False),
    ("size>10", False),
    ("size<11", True),
    ("tier>1", False),
    ("missing<100", False),
    ("empty=", True),
    ("tier=", False),
    ("empty in ()", True),
    ("empty in (,)", True),
    ("empty in (a,)", True),
    ("empty in (,a)", True),
    ("empty in (a,,b)", True),
    ("empty in (a,,,)", True),
    ("tier in (a,b)", False),
    ("tier=web,env=dev", False),
    ("tier=web, env=prod,!missing", True),
    ("in in (in)", True),
    ("example.com/tier!=web", True),
]
INVALID_SELECTORS = [
    "tier=web,",
    ",tier=web",
    "tier=web,,env=prod",
    "!tier=web",
    "!!tier",
    "tier in prod",
    "tier in (a b)",
    "tier in (a",
    "tier in (,,)",
    "tier in (a,,)",
    "tier notin",
    "tier=a=b",
    "tier=!x",
    "tier<=5",
    "tier>abc",
    "tier>-1",
    "tier<",
    "tier web",
    "(tier)",
    "tier=web)",
    "-tier=x",
    "a/b/c=x",
    "/tier=x",
    "Example.com/tier=x",
    "tier=-x",
    "x" * 64,
    "tier=" + "v" * 64,
    "tier in (ok,bad!)",
]


def test_label_selector_semantics() -> None:
    for text, expected in VALID_SELECTORS:
        requirements = parse_label_selector(text)
        matched = all(r.matches(SELECTOR_LABELS) for r in requirements)
        assert matched is expected, text


def test_label_selector_rejects_invalid() -> None:
    for text in INVALID_SELECTORS:
        with pytest.raises(KubernetesError) as caught:
            parse_label_selector(text)
        assert caught.value.status == 400, text


async def test_list_and_watch_reject_invalid_selector(api) -> None:
    _, session = api
    for params in ({"labelSelector": "a in (b"}, {"labelSelector": "!a=b", "watch": "true"}):
        status, body = await call(session, "GET", SECRETS, params=params)
        assert status == 400, params
        assert body["reason"] == "BadRequest", params


async def test_list_not_equal_matches_unlabelled(api) -> None:
    _, session = api
    await call(session, "POST", SECRETS, secret("web", {"tier": "web"}))
    await call(session, "POST", SECRETS, secret("db", {"tier": "db"}))
    await call(session, "POST", SECRETS, secret("bare"))
    expected = {
        "tier!=web": ["bare", "db"],
        "tier notin (web,db)": ["bare"],
        "tier in (web,db)": ["db", "web"],
        "!tier": ["bare"],
        "tier,tier!=db": ["web"],
    }
    for selector, names in expected.items():
        _, body = await call(session, "GET", SECRETS, params={"labelSelector": selector})
        assert sorted(item["metadata"]["name"] for item in body["items"]) == names, selector


async def test_traffic_counts_what_was_sent(api) -> None:
    emulator, session = api
    selector = "secrets-agent.io/managed=true"
    await call(session, "POST", SECRETS, secret("managed", {"secrets-agent.io/managed": "true"}))
    await call(session, "POST", SECRETS, secret("other"))
    async with session.get(SECRETS, params={"labelSelector": selector}) as response:
        listed = await response.read()
    received: list[bytes] = []

    async def watch() -> None:
        params = {"watch": "true", "labelSelector": selector}
        async with session.get(SECRETS, params=params) as response:
            async for line in response.content:
                received.append(line)

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    await call(session, "POST", SECRETS, secret("ignored-too"))
    await call(session, "PATCH", f"{SECRETS}/managed", {"data": {"b": "eA=="}}, headers=MERGE)
    await asyncio.sleep(0.2)
    task.cancel()
    status, report = await call(session, "GET", "/_emulator/traffic")
    assert status == 200
    rows = {(row["verb"], row["resource"], row["labelSelector"]): row for row in report}
    listing = rows["list", "v1/secrets", selector]
    assert (listing["requests"], listing["objects"]) == (1, 1)
    assert listing["bytes"] == len(listed)
    watching = rows["watch", "v1/secrets", selector]
    assert (watching["requests"], watching["objects"]) == (1, 2)
    assert watching["bytes"] == sum(len(line) for line in received)
    assert emulator.traffic["watch", "v1/secrets", selector].objects == 2


async def test_requests_dropped_when_not_kept() -> None:
    emulator = KubernetesApiEmulator(keep_requests=False)
    async with emulator, kmock.Server(emulator) as server:
        async with aiohttp.ClientSession(base_url=server.url) as session:
            status, _ = await call(session, "POST", SECRETS, secret("one"))
            assert status == 201
            status, body = await call(session, "GET", SECRETS)
            assert [item["metadata"]["name"] for item in body["items"]] == ["one"]
            status, discovery = await call(session, "GET", "/api/v1")
            assert status == 200
            assert discovery["kind"] == "APIResourceList"
            assert emulator._requests == []


async def read_watch(
    session: aiohttp.ClientSession, params: dict[str, str], *, act: Any = None
) -> list[dict[str, Any]]:
    """Watch Secrets for a moment, running `act` meanwhile; return the events received."""
    events: list[dict[str, Any]] = []

    async def watch() -> None:
        async with session.get(SECRETS, params={"watch": "true", **params}) as response:
            async for line in response.content:
                if line.strip():
                    events.append(json.loads(line))

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    if act is not None:
        await act()
        await asyncio.sleep(0.2)
    task.cancel()
    return events


async def test_watch_resumes_after_version(api) -> None:
    _, session = api
    await call(session, "POST", SECRETS, secret("before"))
    _, listed = await call(session, "GET", SECRETS)
    version = listed["metadata"]["resourceVersion"]
    await call(session, "POST", SECRETS, secret("after"))
    await call(session, "DELETE", f"{SECRETS}/before")
    events = await read_watch(session, {"resourceVersion": version})
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "after"),
        ("DELETED", "before"),
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    assert versions[0] > int(version)


async def test_watch_without_version_lists_current(api) -> None:
    _, session = api
    await call(session, "POST", SECRETS, secret("one"))
    await call(session, "POST", SECRETS, secret("two"))
    await call(session, "DELETE", f"{SECRETS}/one")
    for params in ({}, {"resourceVersion": "0"}):
        events = await read_watch(session, params)
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "two")
        ], params


async def test_watch_from_old_version_expires() -> None:
    emulator = KubernetesApiEmulator(watch_history=2)
    async with emulator, kmock.Server(emulator) as server:
        async with aiohttp.ClientSession(base_url=server.url) as session:
            for name in ("one", "two", "three", "four"):
                await call(session, "POST", SECRETS, secret(name))
            events = await read_watch(session, {"resourceVersion": "1"})
            assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]
            assert events[0]["object"]["reason"] == "Expired"
            events = await read_watch(session, {"resourceVersion": "2"})
            assert [e["object"]["metadata"]["name"] for e in events] == ["three", "four"]


async def test_watch_rejects_invalid_version(api) -> None:
    _, session = api
    params = {"watch": "true", "resourceVersion": "abc"}
    status, body = await call(session, "GET", SECRETS, params=params)
    assert status == 400
    assert body["reason"] == "BadRequest"


async def test_watch_resume_applies_selector(api) -> None:
    _, session = api
    await call(session, "POST", SECRETS, secret("first"))
    _, listed = await call(session, "GET", SECRETS)
    version = listed["metadata"]["resourceVersion"]
    await call(session, "POST", SECRETS, secret("s", {"secrets-agent.io/managed": "true"}))
    await call(session, "POST", SECRETS, secret("other"))
    unlabel = {"metadata": {"labels": {"secrets-agent.io/managed": None}}}
    await call(session, "PATCH", f"{SECRETS}/s", unlabel, headers=MERGE)
    params = {"resourceVersion": version, "labelSelector": "secrets-agent.io/managed=true"}
    events = await read_watch(session, params)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "s"),
        ("DELETED", "s"),
    ]


async def test_watch_history_kept_per_resource() -> None:
    emulator = KubernetesApiEmulator(watch_history=2)
    async with emulator, kmock.Server(emulator) as server:
        async with aiohttp.ClientSession(base_url=server.url) as session:
            await call(session, "POST", SECRETS, secret("one"))
            await call(session, "POST", SECRETS, secret("two"))
            for name in ("a", "b", "c"):
                await call(session, "POST", ES, {"metadata": {"name": name}, "spec": {}})
            events = await read_watch(session, {"resourceVersion": "1"})
            assert [e["object"]["metadata"]["name"] for e in events] == ["two"]


async def test_injected_write_failures(api) -> None:
    emulator, session = api
    base = "/apis/secrets-agent.io/v1alpha1/namespaces/team-a/externalsecrets"
    body = {"metadata": {"name": "es"}, "spec": {"refreshInterval": "1h"}}
    status, _ = await call(session, "POST", base, body)
    assert status == 201
    emulator.fail_writes("PATCH", subresource="status", times=2, status=503)
    patch = {"status": {"refreshTime": "2026-01-01T00:00:00Z"}}
    for _ in range(2):
        status, answer = await call(session, "PATCH", f"{base}/es/status", patch)
        assert (status, answer["code"]) == (503, 503)
    stored = emulator.body("secrets-agent.io/v1alpha1/externalsecrets", "team-a", "es")
    assert "status" not in stored
    # Writes to the object itself were never affected; the third status write succeeds.
    status, _ = await call(session, "PATCH", f"{base}/es", {"metadata": {"labels": {"a": "b"}}})
    assert status == 200
    status, _ = await call(session, "PATCH", f"{base}/es/status", patch)
    assert status == 200
    # A plural limits the failures to one resource.
    emulator.fail_writes("POST", plural="secrets", times=5)
    status, _ = await call(session, "POST", "/api/v1/namespaces/team-a/secrets", secret("s"))
    assert status == 503
    body["metadata"]["name"] = "es-2"
    status, _ = await call(session, "POST", base, body)
    assert status == 201
    emulator.fail_writes("POST", plural="secrets", times=0)
    status, _ = await call(session, "POST", "/api/v1/namespaces/team-a/secrets", secret("s"))
    assert status == 201


async def test_delayed_response_writes_at_once(api) -> None:
    emulator, session = api
    emulator.delay_responses("POST", plural="secrets", seconds=0.5)
    path = "/api/v1/namespaces/team-a/secrets"
    request = asyncio.ensure_future(call(session, "POST", path, secret("late")))
    for _ in range(40):
        if emulator.body("v1/secrets", "team-a", "late") is not None:
            break
        await asyncio.sleep(0.01)
    assert emulator.body("v1/secrets", "team-a", "late") is not None
    assert not request.done()  # stored, with no response yet
    status, _ = await request
    assert status == 201


async def test_delayed_list(api) -> None:
    emulator, session = api
    emulator.delay_responses("LIST", plural="secrets", seconds=0.3)
    path = "/api/v1/namespaces/team-a/secrets"
    listing = asyncio.ensure_future(call(session, "GET", path))
    await asyncio.sleep(0.1)
    assert not listing.done()
    status, body = await listing
    assert status == 200
    assert body["items"] == []
    status, _ = await call(session, "GET", f"{path}/absent")  # reads by name are not delayed
    assert status == 404
