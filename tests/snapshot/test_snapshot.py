"""Snapshot building: property selection, decoding, extract, find, rewrite and merge order."""

from __future__ import annotations

import base64
import json

import pytest

from agent.declarations import ExternalSecretDeclaration, Origin
from agent.errors import InvalidValueError, RemoteKeyNotFoundError, StoreUnavailableError
from agent.models import ExternalSecretSpec, ObjectMeta
from agent.snapshot import (
    MAX_REWRITTEN_NAME_BYTES,
    GeneratedValue,
    SnapshotError,
    build_snapshot,
    decode,
    relative_key_name,
    remote_keys,
    select_property,
)
from agent.stores import RemoteKey


def declaration(spec: dict) -> ExternalSecretDeclaration:
    spec = {"secretStoreRef": {"name": "store"}, **spec}
    return ExternalSecretDeclaration(
        name="payment",
        namespace=None,
        spec=ExternalSecretSpec.model_validate(spec),
        metadata=ObjectMeta(name="payment"),
        origin=Origin("test.yaml", 1),
    )


def no_prefix(path: str) -> dict:
    return {}


def test_remote_keys_deduplicated_in_order():
    decl = declaration(
        {
            "data": [
                {"secretKey": "a", "remoteRef": {"key": "/app/a"}},
                {"secretKey": "b", "remoteRef": {"key": "/app/a", "property": "x"}},
                {"secretKey": "c", "remoteRef": {"key": "/app/c", "version": "3"}},
            ],
            "dataFrom": [{"extract": {"key": "/app/json"}}],
        }
    )
    assert remote_keys(decl) == [
        RemoteKey("/app/json"),
        RemoteKey("/app/a"),
        RemoteKey("/app/c", "3"),
    ]


def test_data_and_property_selection():
    decl = declaration(
        {
            "data": [
                {"secretKey": "raw", "remoteRef": {"key": "k1"}},
                {"secretKey": "user", "remoteRef": {"key": "k2", "property": "username"}},
                {"secretKey": "port", "remoteRef": {"key": "k2", "property": "db.port"}},
                {"secretKey": "host", "remoteRef": {"key": "k2", "property": "hosts.1"}},
            ]
        }
    )
    fetched = {
        RemoteKey("k1"): b"fake-raw-value",
        RemoteKey("k2"): json.dumps(
            {"username": "fake-user", "db": {"port": 5432}, "hosts": ["h0", "h1"]}
        ).encode(),
    }
    snapshot = build_snapshot(decl, store_name="s", fetched=fetched, read_prefix=no_prefix)
    assert snapshot.target == "payment"
    assert snapshot.data == {
        "raw": b"fake-raw-value",
        "user": b"fake-user",
        "port": b"5432",
        "host": b"h1",
    }


def test_property_exact_key_with_dot_wins():
    value = {"a.b": "exact", "a": {"b": "nested"}}
    assert select_property(value, "a.b", remote_key="k", store_name="s") == b"exact"


def test_vault_map_without_property_is_json():
    value = {"username": "fake-user", "password": "fake-password"}
    rendered = select_property(value, None, remote_key="k", store_name="s")
    assert json.loads(rendered) == value


def test_missing_property_counts_fields_without_names():
    value = {
        "username": "fake-user-value",
        "password": "fake-password-value",
        "fake-sensitive-field-name": "x",
    }
    with pytest.raises(RemoteKeyNotFoundError) as caught:
        select_property(value, "pasword", remote_key="secret/app", store_name="vault")
    message = str(caught.value)
    assert "pasword" in message
    assert "JSON object with 3 top-level fields" in message
    assert "username" not in message
    assert "fake-sensitive-field-name" not in message
    assert "fake-password-value" not in message
    assert "secret/app" in message


def test_missing_property_in_array_says_not_object():
    with pytest.raises(RemoteKeyNotFoundError) as caught:
        select_property(b'[{"fake-name": 1}]', "user", remote_key="/p", store_name="ssm")
    message = str(caught.value)
    assert "JSON array, not an object" in message
    assert "fake-name" not in message


def test_property_on_non_json_value_is_invalid():
    with pytest.raises(InvalidValueError) as caught:
        select_property(b"not-json-fake", "x", remote_key="/p", store_name="ssm")
    assert "not-json-fake" not in str(caught.value)
    assert "/p" in str(caught.value)


@pytest.mark.parametrize(
    ("strategy", "raw", "expected"),
    [
        ("None", b"aGVsbG8=", b"aGVsbG8="),
        ("Base64", b"aGVsbG8=", b"hello"),
        ("Base64", b"aGVsbG8", b"hello"),
        ("Base64URL", base64.urlsafe_b64encode(b"\xfb\xff"), b"\xfb\xff"),
        ("Auto", b"aGVsbG8=", b"hello"),
        ("Auto", base64.urlsafe_b64encode(b"\xfb\xff"), b"\xfb\xff"),
        ("Auto", b"plain text!", b"plain text!"),
    ],
)
def test_decoding_strategies(strategy, raw, expected):
    assert decode(raw, strategy, remote_key="k", store_name="s") == expected


def test_invalid_base64_names_key_not_value():
    with pytest.raises(InvalidValueError) as caught:
        decode(b"fake!!value", "Base64", remote_key="/k", store_name="s")
    assert "fake!!value" not in str(caught.value)
    assert "Base64" in str(caught.value)


def test_extract_json_object():
    decl = declaration({"dataFrom": [{"extract": {"key": "/app/config"}}]})
    fetched = {RemoteKey("/app/config"): b'{"user": "fake-u", "port": 5432, "tls": {"on": true}}'}
    snapshot = build_snapshot(decl, store_name="s", fetched=fetched, read_prefix=no_prefix)
    assert snapshot.data == {"user": b"fake-u", "port": b"5432", "tls": b'{"on":true}'}


def test_extract_prefix_when_key_not_found():
    decl = declaration({"dataFrom": [{"extract": {"key": "/production/payment"}}]})
    missing = RemoteKeyNotFoundError("not found", store="s", remote_key="/production/payment")
    fetched = {RemoteKey("/production/payment"): missing}

    def read_prefix(path: str) -> dict:
        assert path == "/production/payment"
        return {
            "/production/payment/db/password": b"fake-pw",
            "/production/payment/api-key": b"fake-key",
        }

    snapshot = build_snapshot(decl, store_name="s", fetched=fetched, read_prefix=read_prefix)
    assert snapshot.data == {"db_password": b"fake-pw", "api-key": b"fake-key"}


def test_extract_missing_everywhere_fails():
    decl = declaration({"dataFrom": [{"extract": {"key": "/nothing"}}]})
    missing = RemoteKeyNotFoundError("not found", store="s", remote_key="/nothing")
    with pytest.raises(SnapshotError) as caught:
        build_snapshot(
            decl, store_name="s", fetched={RemoteKey("/nothing"): missing}, read_prefix=no_prefix
        )
    assert caught.value.errors == [missing]
    assert not caught.value.transient


def test_find_with_name_filter_and_rewrite():
    decl = declaration(
        {
            "dataFrom": [
                {
                    "find": {"path": "/app", "name": {"regexp": "db"}},
                    "rewrite": [{"regexp": {"source": "^db_(.*)$", "target": "DB_${1}"}}],
                }
            ]
        }
    )

    def read_prefix(path: str) -> dict:
        return {"/app/db/user": b"fake-u", "/app/db/pass": b"fake-p", "/app/other": b"x"}

    snapshot = build_snapshot(decl, store_name="s", fetched={}, read_prefix=read_prefix)
    assert snapshot.data == {"DB_user": b"fake-u", "DB_pass": b"fake-p"}


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("(.*)", "x-$1", {"x-db": b"fake-d"}),
        ("^(d)(b)$", "$1x", {"": b"fake-d"}),
        ("^(d)(b)$", "${1}x", {"dx": b"fake-d"}),
        ("^(?<first>d)b$", "${first}-$$", {"d-$": b"fake-d"}),
    ],
)
def test_rewrite_follows_go_replace(source: str, target: str, expected: dict) -> None:
    rewrite = [{"regexp": {"source": source, "target": target}}]
    decl = declaration({"dataFrom": [{"extract": {"key": "/json"}, "rewrite": rewrite}]})
    fetched = {RemoteKey("/json"): b'{"db": "fake-d"}'}

    if "" in expected:  # an empty secret key is reported, not a traceback
        with pytest.raises(SnapshotError) as caught:
            build_snapshot(decl, store_name="s", fetched=fetched, read_prefix=no_prefix)
        assert "is empty" in str(caught.value)
        return
    snapshot = build_snapshot(decl, store_name="s", fetched=fetched, read_prefix=no_prefix)
    assert snapshot.data == expected


def empty_match_rewrites(count: int) -> list[dict]:
    # Each step inserts 1,000 characters between every two characters of the name.
    sources = ["x*", "a?", "y*"]
    return [{"regexp": {"source": sources[i], "target": "x" * 1000}} for i in range(count)]


@pytest.mark.parametrize("count", [2, 3])
def test_rewrite_matching_empty_text_is_bounded(count: int) -> None:
    rewrite = empty_match_rewrites(count)
    decl = declaration({"dataFrom": [{"find": {"path": "/t/re"}, "rewrite": rewrite}]})

    def read_prefix(path: str) -> dict:
        return {"/t/re/aaa": b"fake-value-1", "/t/re/bbb": b"fake-value-2"}

    with pytest.raises(SnapshotError) as caught:
        build_snapshot(decl, store_name="s", fetched={}, read_prefix=read_prefix)
    message = str(caught.value)
    assert len(caught.value.errors) == 1  # one error for the entry, not one per name
    assert "ExternalSecret payment" in message
    assert "spec.dataFrom[0].rewrite[1]" in message
    assert f"longer than {MAX_REWRITTEN_NAME_BYTES} bytes" in message
    assert "x+ instead of x*" in message
    assert len(message) < 1000


def test_rewrite_long_final_name_is_shortened():
    # 2,000 characters is under the rewrite bound but above the file-name limit.
    rewrite = [{"regexp": {"source": "^aaa$", "target": "y" * 2000}}]
    decl = declaration({"dataFrom": [{"find": {"path": "/t/re"}, "rewrite": rewrite}]})

    def read_prefix(path: str) -> dict:
        return {"/t/re/aaa": b"fake-value-1"}

    with pytest.raises(SnapshotError) as caught:
        build_snapshot(decl, store_name="s", fetched={}, read_prefix=read_prefix)
    message = str(caught.value)
    assert "not a safe file name" in message
    assert "y" * 100 + "… (2000 characters)" in message
    assert "y" * 101 not in message


def test_store_error_shortens_remote_key():
    error = RemoteKeyNotFoundError("not found", store="s", remote_key="/k" * 5000)
    assert len(str(error)) < 200
    assert "… (10000 characters)" in str(error)


def test_data_overrides_data_from():
    decl = declaration(
        {
            "dataFrom": [{"extract": {"key": "/json"}}],
            "data": [{"secretKey": "user", "remoteRef": {"key": "/user"}}],
        }
    )
    fetched = {RemoteKey("/json"): b'{"user": "from-extract"}', RemoteKey("/user"): b"from-data"}
    snapshot = build_snapshot(decl, store_name="s", fetched=fetched, read_prefix=no_prefix)
    assert snapshot.data == {"user": b"from-data"}


def test_unsafe_imported_key_is_an_error():
    decl = declaration({"dataFrom": [{"extract": {"key": "/json"}}]})
    fetched = {RemoteKey("/json"): b'{"../escape": "fake", "ok": "fine"}'}
    with pytest.raises(SnapshotError) as caught:
        build_snapshot(decl, store_name="s", fetched=fetched, read_prefix=no_prefix)
    assert "../escape" in str(caught.value)
    assert "rewrite" in str(caught.value)


def test_any_failed_key_fails_whole_target():
    decl = declaration(
        {
            "data": [
                {"secretKey": "a", "remoteRef": {"key": "/a"}},
                {"secretKey": "b", "remoteRef": {"key": "/b"}},
            ]
        }
    )
    outage = StoreUnavailableError("connection refused", store="s")
    with pytest.raises(SnapshotError) as caught:
        build_snapshot(
            decl,
            store_name="s",
            fetched={RemoteKey("/a"): b"x", RemoteKey("/b"): outage},
            read_prefix=no_prefix,
        )
    assert caught.value.transient


@pytest.mark.parametrize(
    ("prefix", "key", "name"),
    [
        ("/production/payment", "/production/payment/db/password", "db_password"),
        ("/production/payment/", "/production/payment/api", "api"),
        ("/", "/app/db/pass", "app_db_pass"),
    ],
)
def test_relative_key_name(prefix, key, name):
    assert relative_key_name(prefix, key) == name


def test_extract_reports_missing_key_when_listing_denied():
    from agent.errors import AccessDeniedError

    decl = declaration({"dataFrom": [{"extract": {"key": "app/config"}}]})
    missing = RemoteKeyNotFoundError("not found", store="s", remote_key="app/config")

    def read_prefix(path: str) -> dict:
        raise AccessDeniedError("list denied", store="s", remote_key=path)

    with pytest.raises(SnapshotError) as caught:
        build_snapshot(
            decl,
            store_name="s",
            fetched={RemoteKey("app/config"): missing},
            read_prefix=read_prefix,
        )
    assert caught.value.errors == [missing]


def test_extract_retries_when_listing_unavailable():
    decl = declaration({"dataFrom": [{"extract": {"key": "app/config"}}]})
    missing = RemoteKeyNotFoundError("not found", store="s", remote_key="app/config")
    outage = StoreUnavailableError("sealed", store="s")

    def read_prefix(path: str) -> dict:
        raise outage

    with pytest.raises(SnapshotError) as caught:
        build_snapshot(
            decl,
            store_name="s",
            fetched={RemoteKey("app/config"): missing},
            read_prefix=read_prefix,
        )
    assert caught.value.errors == [outage]
    assert caught.value.transient


def test_generator_rewrite_is_bounded():
    rewrite = empty_match_rewrites(2)
    source = {"generatorRef": {"kind": "VaultDynamicSecret", "name": "orders-db"}}
    decl = declaration({"dataFrom": [{"sourceRef": source, "rewrite": rewrite}]})
    generated = {
        0: GeneratedValue(data={"username": "fake-user-1"}, lease="lease-1", source="orders-db")
    }

    with pytest.raises(SnapshotError) as caught:
        build_snapshot(decl, store_name="s", fetched={}, read_prefix=no_prefix, generated=generated)
    message = str(caught.value)
    assert len(caught.value.errors) == 1
    # "username" has 9 places for an empty match, so the first step passes 4,096 bytes.
    assert "spec.dataFrom[0].rewrite[0]" in message
    assert len(message) < 1000


def test_shared_remote_key_error_once():
    decl = declaration(
        {
            "data": [
                {"secretKey": "user", "remoteRef": {"key": "app", "property": "user"}},
                {"secretKey": "password", "remoteRef": {"key": "app", "property": "password"}},
            ]
        }
    )
    denied = StoreUnavailableError("permission denied on secret/data/app", store="vault")
    with pytest.raises(SnapshotError) as caught:
        build_snapshot(
            decl, store_name="vault", fetched={RemoteKey("app"): denied}, read_prefix=no_prefix
        )
    assert str(caught.value).count("permission denied") == 1
