"""When notify targets are notified: once per burst of changes, never for an unchanged refresh
or the initial fill, only for the targets they watch, and with the notify targets of the
current declarations."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from notify_helpers import (
    make_syncer,
    metric,
    notify_target,
    refresh_now,
    running,
    start_recorder,
    wait_for,
    write_config,
)

from agent.declarations import load_declarations
from agent.notify import Notifier, build_notifier
from agent.refs import Refs
from agent.settings import load_settings
from agent.sync import Change

DUMP_CHANGES = (
    "import os, sys; open(sys.argv[1], 'a').write(os.environ['SECRETS_AGENT_CHANGES'] + '\\n')"
)


def dump_spec(path: Path, *, targets: str = "") -> str:
    argv = json.dumps([sys.executable, "-c", DUMP_CHANGES, str(path)])
    return f"{targets}  command:\n    argv: {argv}\n"


def deliveries(path: Path) -> list[dict[str, list[str]]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def recorder(tmp_path: Path):
    started = start_recorder(tmp_path)
    yield started
    started.stop()


def test_one_signal_per_burst_of_changes(vault, tmp_path: Path, recorder):
    vault.kv_put("secret", "app", {"password": "fake-db-password-1"})
    spec = f"  signal: {{pidFile: {recorder.pid_file}, signal: SIGHUP}}\n"
    config = write_config(
        tmp_path, vault_url=vault.url, notify_targets=notify_target("app-reload", spec)
    )
    syncer = make_syncer(tmp_path, config)
    notifier = Notifier(refs=Refs(tmp_path / "refs"), metrics=syncer.metrics, delay=1.0)
    notifier.attach(syncer)
    password = tmp_path / "out" / "app" / "password"
    try:
        with running(syncer):
            assert wait_for(password.exists)
            # The initial fill and refreshes that find the same values: nothing to tell.
            for _ in range(3):
                refresh_now(syncer)
            time.sleep(1.3)  # longer than the window
            assert recorder.signals() == []
            refreshes = metric(syncer, "secrets_agent_sync_total", target="app", result="unchanged")
            assert refreshes == 3

            # Two changes, each found by a round of its own, within one window.
            vault.kv_put("secret", "app", {"password": "fake-db-password-2"})
            refresh_now(syncer)
            vault.kv_put("secret", "app", {"password": "fake-db-password-3"})
            refresh_now(syncer)
            assert password.read_bytes() == b"fake-db-password-3"
            changes = metric(syncer, "secrets_agent_sync_total", target="app", result="success")
            assert changes == 3, "the first write and two changes"
            assert wait_for(recorder.signals), "no signal after the changes"
            time.sleep(1.3)  # longer than the window: a second signal would have come by now
            assert recorder.signals() == [f"{recorder.process.pid} SIGHUP"]
    finally:
        notifier.close()
    assert metric(syncer, "secrets_agent_notify_total", target="app-reload", result="success") == 1


def test_changes_within_window_coalesce(vault, tmp_path: Path):
    dump = tmp_path / "changes.jsonl"
    config = write_config(
        tmp_path,
        vault_url=vault.url,
        targets=("app", "other"),
        notify_targets=notify_target("dump", dump_spec(dump)),
    )
    syncer = make_syncer(tmp_path, config)
    notifier = Notifier(refs=Refs(tmp_path / "refs"), metrics=syncer.metrics, delay=0.5)
    notifier.attach(syncer)
    try:
        notifier.notify([Change("app", changed=("password",))])
        notifier.notify([Change("other", added=("token",))])
        notifier.notify([Change("app", removed=("old-key",))])
        assert wait_for(lambda: deliveries(dump))
        assert wait_for(notifier.idle)
    finally:
        notifier.close()
    assert deliveries(dump) == [{"app": ["old-key", "password"], "other": ["token"]}]


def test_only_watched_targets_notify(vault, tmp_path: Path):
    dump = tmp_path / "changes.jsonl"
    config = write_config(
        tmp_path,
        vault_url=vault.url,
        targets=("app", "other"),
        notify_targets=notify_target("dump", dump_spec(dump, targets="  targets: [other]\n")),
    )
    syncer = make_syncer(tmp_path, config)
    notifier = Notifier(refs=Refs(tmp_path / "refs"), metrics=syncer.metrics, delay=0.0)
    notifier.attach(syncer)
    try:
        notifier.notify([Change("app", changed=("password",))])
        assert wait_for(notifier.idle)
        assert deliveries(dump) == []
        notifier.notify([Change("app", changed=("password",)), Change("other", changed=("a",))])
        assert wait_for(lambda: deliveries(dump))
    finally:
        notifier.close()
    assert deliveries(dump) == [{"other": ["a"]}]


def test_initial_fill_is_not_notified(vault, tmp_path: Path):
    """The initial fill is skipped; a target's first generation after that is notified."""
    vault.kv_put("secret", "app", {"password": "fake-db-password-1"})
    dump = tmp_path / "changes.jsonl"
    config = write_config(
        tmp_path, vault_url=vault.url, notify_targets=notify_target("dump", dump_spec(dump))
    )
    syncer = make_syncer(tmp_path, config)
    notifier = Notifier(refs=Refs(tmp_path / "refs"), metrics=syncer.metrics, delay=0.0)
    notifier.attach(syncer)
    try:
        with running(syncer):
            assert wait_for(lambda: syncer.readiness()[0])
            time.sleep(0.3)
            assert notifier.idle()
            assert deliveries(dump) == [], "the initial fill must not be notified"
            # As when a reload adds a target while the application runs.
            notifier.notify([Change("new-target", added=("token",), first=True)])
            assert wait_for(lambda: deliveries(dump))
    finally:
        notifier.close()
    assert deliveries(dump) == [{"new-target": ["token"]}]


def test_change_of_adopted_target_is_notified(vault, tmp_path: Path):
    """Files an init container wrote may have been read already: their change is notified even
    before the sidecar's first readiness check."""
    vault.kv_put("secret", "app", {"password": "fake-db-password-1"})
    dump = tmp_path / "changes.jsonl"
    config = write_config(
        tmp_path, vault_url=vault.url, notify_targets=notify_target("dump", dump_spec(dump))
    )
    init = make_syncer(tmp_path, config)
    assert not init.run_once(timeout=10).failed
    init.stores.close()
    vault.kv_put("secret", "app", {"password": "fake-db-password-2"})

    sidecar = make_syncer(tmp_path, config)
    notifier = Notifier(refs=Refs(tmp_path / "refs"), metrics=sidecar.metrics, delay=0.0)
    notifier.attach(sidecar)
    try:
        with running(sidecar):
            assert wait_for(lambda: deliveries(dump))
    finally:
        notifier.close()
    assert deliveries(dump) == [{"app": ["password"]}]


def test_reload_replaces_notify_targets(vault, tmp_path: Path):
    vault.kv_put("secret", "app", {"password": "fake-db-password-1"})
    first_dump = tmp_path / "first.jsonl"
    second_dump = tmp_path / "second.jsonl"
    config = write_config(
        tmp_path, vault_url=vault.url, notify_targets=notify_target("dump", dump_spec(first_dump))
    )
    syncer = make_syncer(tmp_path, config)
    notifier = Notifier(refs=Refs(tmp_path / "refs"), metrics=syncer.metrics, delay=0.0)
    notifier.attach(syncer)
    password = tmp_path / "out" / "app" / "password"
    try:
        assert notifier.notify_targets == ["dump"]
        with running(syncer):
            assert wait_for(password.exists)
            reloaded = write_config(
                tmp_path,
                vault_url=vault.url,
                notify_targets=notify_target("dump-v2", dump_spec(second_dump)),
            )
            syncer.replace_declarations(load_declarations([reloaded]))
            vault.kv_put("secret", "app", {"password": "fake-db-password-2"})
            refresh_now(syncer)
            assert wait_for(lambda: deliveries(second_dump))
        assert notifier.notify_targets == ["dump-v2"]
    finally:
        notifier.close()
    assert deliveries(first_dump) == []
    assert deliveries(second_dump) == [{"app": ["password"]}]


def test_notify_signal_setting(vault, tmp_path: Path, recorder):
    vault.kv_put("secret", "app", {"password": "fake-db-password-1"})
    config = write_config(tmp_path, vault_url=vault.url)
    syncer = make_syncer(tmp_path, config)
    settings = load_settings(
        config=[str(config)],
        refs_dir=str(tmp_path / "refs"),
        notify_signal=f"{recorder.name}:SIGUSR1",
        notify_delay=0.1,
    )
    notifier = build_notifier(settings, syncer)
    try:
        assert notifier.notify_targets == ["notify-signal"]
        notifier.notify([Change("app", changed=("password",))])
        assert wait_for(recorder.signals)
    finally:
        notifier.close()
    assert recorder.signals() == [f"{recorder.process.pid} SIGUSR1"]
