"""`run_forever` with one store that never responds: the other stores, the periodic tasks (lease
renewals) and reloads go on without it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_sync_loop import VAULT_STORE, external_secret, make_syncer

from agent.declarations import load_declarations
from agent.sync import Syncer

HUNG_STORE = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {{name: hung}}
spec:
  provider:
    vault:
      server: {url}
      path: secret
      auth:
        tokenSecretRef: {{name: vault-token, key: token}}
"""


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A loopback server that accepts connections and never responds."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    yield f"http://127.0.0.1:{silent.getsockname()[1]}"
    silent.close()


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def contains(path: Path, value: bytes) -> Callable[[], bool]:
    return lambda: path.exists() and value in path.read_bytes()


def start(syncer: Syncer) -> threading.Thread:
    loop = threading.Thread(target=syncer.run_forever, name="sync", daemon=True)
    loop.start()
    return loop


def documents(vault_url: str, silent_url: str) -> list[str]:
    return [
        VAULT_STORE.format(url=vault_url),
        HUNG_STORE.format(url=silent_url),
        external_secret("app", "vault-kv", ["app"], "1s"),
        external_secret("stuck", "hung", ["stuck"], "1s"),
    ]


def test_hung_store_delays_only_its_targets(vault, silent_url: str, tmp_path: Path) -> None:
    vault.kv_put("secret", "app", {"v": "fake-v-1"})
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True)
    (refs / "token").write_text(vault.root_token)
    syncer = make_syncer(tmp_path, documents(vault.url, silent_url))
    ticks: list[float] = []

    def task() -> float:
        ticks.append(time.monotonic())
        return 0.2

    syncer.add_task(task)
    loop = start(syncer)
    value = tmp_path / "out" / "app" / "app"
    try:
        assert wait_for(contains(value, b"fake-v-1"))
        assert wait_for(lambda: syncer.in_flight() == {"hung": "fetch"})
        vault.kv_put("secret", "app", {"v": "fake-v-2"})
        # Refreshed on its own 1 s interval, while the hung store's request is still open.
        assert wait_for(contains(value, b"fake-v-2"), timeout=5)
        assert syncer.in_flight() == {"hung": "fetch"}
        ticks_before = len(ticks)
        assert wait_for(lambda: len(ticks) >= ticks_before + 3, timeout=5)
    finally:
        syncer.request_stop()
        loop.join(timeout=1.0)
    # Stopping waits for the hung worker: the CLI abandons it after its stop budget.
    assert loop.is_alive()
    assert syncer.abandon_in_flight() == ["hung"]


def test_reload_goes_on_beside_hung_store(vault, silent_url: str, tmp_path: Path) -> None:
    vault.kv_put("secret", "app", {"v": "fake-v-1"})
    vault.kv_put("secret", "added", {"v": "fake-added-1"})
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True)
    (refs / "token").write_text(vault.root_token)
    syncer = make_syncer(tmp_path, documents(vault.url, silent_url))
    loop = start(syncer)
    try:
        assert wait_for(contains(tmp_path / "out" / "app" / "app", b"fake-v-1"))
        config = tmp_path / "declarations.yaml"
        added = external_secret("added", "vault-kv", ["added"], "1s")
        config.write_text("---\n".join([*documents(vault.url, silent_url), added]))
        syncer.replace_declarations(load_declarations([str(config)]))
        assert wait_for(contains(tmp_path / "out" / "added" / "added", b"fake-added-1"), 5)

        # A reload that changes the hung store's target waits for its worker, and is not lost.
        changed = external_secret("stuck", "hung", ["stuck", "other"], "1s")
        config.write_text("---\n".join([*documents(vault.url, silent_url)[:3], changed, added]))
        syncer.replace_declarations(load_declarations([str(config)]))
        time.sleep(0.3)
        assert "other" not in str(syncer.states["stuck"].declaration.spec)
        assert syncer.in_flight() == {"hung": "fetch"}
    finally:
        syncer.request_stop()
        loop.join(timeout=1.0)
