"""HTTP notify targets against a listener on 127.0.0.1: method, headers, retries, metrics, logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from notify_helpers import (
    free_port,
    http_listener,
    make_syncer,
    metric,
    notify_target,
    refresh_now,
    running,
    wait_for,
    write_config,
)

from agent.models import NotifyHttp
from agent.notify import Notifier, retry_delay
from agent.notify_kinds import ChangedNames, HttpAction
from agent.refs import Refs
from agent.sync import Change, Syncer

FAKE_TOKEN = "fake-refresh-token-1"
FAKE_QUERY_TOKEN = "fake-query-token-1"
NAMES = ChangedNames({"app": ("password",)})
NOTIFY_TOTAL = "secrets_agent_notify_total"


def http_spec(url: str, *, retries: int = 3, extra: str = "") -> str:
    return (
        "  http:\n"
        f"    url: {url}\n"
        f"    retries: {retries}\n"
        "    timeoutSeconds: 5\n"
        "    headers:\n"
        "      - {name: Authorization, valueFrom: {secretKeyRef: {name: refresh, key: token}}}\n"
        "      - {name: X-Reason, value: secrets-changed}\n"
        f"{extra}"
    )


def notifier_for(
    tmp_path: Path, documents: str, *, delay: float = 0.0, retry=None
) -> tuple[Notifier, Syncer]:
    """A notifier attached to a sync loop that is never run: tests call `notify` themselves."""
    config = write_config(tmp_path, vault_url="http://127.0.0.1:9", notify_targets=documents)
    syncer = make_syncer(tmp_path, config)
    refs = tmp_path / "refs" / "refresh"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "token").write_text(f"Bearer {FAKE_TOKEN}\n")
    options = {} if retry is None else {"retry_delay": retry}
    notifier = Notifier(
        refs=Refs(tmp_path / "refs"), metrics=syncer.metrics, delay=delay, **options
    )
    notifier.attach(syncer)
    return notifier, syncer


@pytest.fixture
def close_after():
    notifiers: list[Notifier] = []
    yield notifiers.append
    for notifier in notifiers:
        notifier.close()


def test_http_request_method_and_headers(tmp_path: Path, close_after):
    with http_listener() as listener:
        notifier, syncer = notifier_for(
            tmp_path, notify_target("refresh", http_spec(f"{listener.url}/actuator/refresh"))
        )
        close_after(notifier)
        notifier.notify([Change("app", changed=("password",))])
        assert wait_for(lambda: listener.received), "no request arrived"
        assert wait_for(notifier.idle)

    [request] = listener.received
    assert request.method == "POST"
    assert request.path == "/actuator/refresh"
    assert request.headers["Authorization"] == f"Bearer {FAKE_TOKEN}"
    assert request.headers["X-Reason"] == "secrets-changed"
    assert request.headers["User-Agent"].startswith("secrets-agent/")
    assert request.headers["Content-Length"] == "0"
    assert metric(syncer, NOTIFY_TOTAL, target="refresh", result="success") == 1


def test_http_server_error_is_retried(tmp_path: Path, close_after):
    delays = [0.1, 0.2, 0.4]
    with http_listener(statuses=[500, 503, 500]) as listener:
        notifier, syncer = notifier_for(
            tmp_path,
            notify_target("refresh", http_spec(listener.url)),
            retry=lambda failures: delays[failures - 1],
        )
        close_after(notifier)
        notifier.notify([Change("app", changed=("password",))])
        assert wait_for(lambda: len(listener.received) == 4), "the retries did not arrive"
        assert wait_for(notifier.idle)

    times = [request.at for request in listener.received]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay, "a retry came before its backoff delay"
    assert metric(syncer, NOTIFY_TOTAL, target="refresh", result="retry") == 3
    assert metric(syncer, NOTIFY_TOTAL, target="refresh", result="success") == 1
    assert metric(syncer, NOTIFY_TOTAL, target="refresh", result="failed") == 0


def test_http_connection_refused_gives_up(tmp_path: Path, close_after):
    url = f"http://127.0.0.1:{free_port()}/refresh"  # nothing listens there
    notifier, syncer = notifier_for(
        tmp_path,
        notify_target("refresh", http_spec(url, retries=2)),
        retry=lambda failures: 0.05,
    )
    close_after(notifier)
    notifier.notify([Change("app", changed=("password",))])
    assert wait_for(lambda: metric(syncer, NOTIFY_TOTAL, target="refresh", result="failed") == 1)
    assert metric(syncer, NOTIFY_TOTAL, target="refresh", result="retry") == 2
    assert metric(syncer, NOTIFY_TOTAL, target="refresh", result="success") == 0


def test_newer_change_supersedes_pending_retry(tmp_path: Path, close_after):
    with http_listener(statuses=[500]) as listener:
        notifier, syncer = notifier_for(
            tmp_path,
            notify_target("refresh", http_spec(listener.url)),
            delay=0.1,
            retry=lambda failures: 60.0,  # a retry that would come far too late for this test
        )
        close_after(notifier)
        notifier.notify([Change("app", changed=("password",))])
        retrying = lambda: metric(syncer, NOTIFY_TOTAL, target="refresh", result="retry") == 1  # noqa: E731
        assert wait_for(retrying)
        notifier.notify([Change("app", changed=("api-key",))])
        assert wait_for(lambda: len(listener.received) == 2), "the newer change was not delivered"
        assert wait_for(notifier.idle)

    assert metric(syncer, NOTIFY_TOTAL, target="refresh", result="superseded") == 1
    assert metric(syncer, NOTIFY_TOTAL, target="refresh", result="success") == 1


def test_http_logs_carry_no_credentials(tmp_path: Path, close_after, caplog):
    with http_listener(statuses=[500]) as listener:
        url = f"{listener.url}/refresh?token={FAKE_QUERY_TOKEN}"
        notifier, syncer = notifier_for(
            tmp_path, notify_target("refresh", http_spec(url)), retry=lambda failures: 0.05
        )
        close_after(notifier)
        with caplog.at_level(logging.DEBUG):
            notifier.notify([Change("app", changed=("password",))])
            assert wait_for(lambda: len(listener.received) == 2)
            assert wait_for(notifier.idle)

    assert listener.received[0].path == f"/refresh?token={FAKE_QUERY_TOKEN}"
    logged = caplog.text + "".join(str(vars(record)) for record in caplog.records)
    assert "notify_retrying" in logged
    assert "notify_sent" in logged
    assert FAKE_TOKEN not in logged
    assert FAKE_QUERY_TOKEN not in logged
    assert listener.url in logged, "the endpoint (scheme, host, port) is logged"


def test_http_missing_header_secret_is_reported(tmp_path: Path):
    with http_listener() as listener:
        spec = NotifyHttp.model_validate(
            {
                "url": listener.url,
                "headers": [
                    {
                        "name": "Authorization",
                        "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}},
                    }
                ],
            }
        )
        action = HttpAction(spec, refs=Refs(tmp_path / "refs"), notify_target="refresh")
        attempt = action.deliver(NAMES)

    assert attempt.result == "error"
    assert attempt.retryable
    assert "spec.http.headers[0].valueFrom.secretKeyRef" in attempt.error
    assert "not found" in attempt.error
    assert "mount Secret x" in attempt.error
    assert listener.received == [], "no request goes out without its headers"


def test_http_header_secret_with_line_break_is_rejected(tmp_path: Path):
    refs = tmp_path / "refs" / "refresh"
    refs.mkdir(parents=True)
    (refs / "token").write_text(f"Bearer {FAKE_TOKEN}\nX-Injected: 1")
    with http_listener() as listener:
        spec = NotifyHttp.model_validate(
            {
                "url": listener.url,
                "headers": [
                    {
                        "name": "Authorization",
                        "valueFrom": {"secretKeyRef": {"name": "refresh", "key": "token"}},
                    }
                ],
            }
        )
        attempt = HttpAction(spec, refs=Refs(tmp_path / "refs"), notify_target="r").deliver(NAMES)

    assert attempt.result == "error"
    assert "line break" in attempt.error
    assert FAKE_TOKEN not in attempt.error
    assert listener.received == []


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_http_method_is_used(method: str, tmp_path: Path):
    with http_listener() as listener:
        spec = NotifyHttp(url=f"{listener.url}/reload", method=method)
        attempt = HttpAction(spec, refs=Refs(tmp_path), notify_target="r").deliver(NAMES)

    assert attempt.result == "success", attempt.error
    assert attempt.fields["status"] == 200
    assert [request.method for request in listener.received] == [method]


def test_http_redirect_is_a_failure(tmp_path: Path):
    with http_listener(statuses=[302]) as listener:
        attempt = HttpAction(
            NotifyHttp(url=listener.url), refs=Refs(tmp_path), notify_target="r"
        ).deliver(NAMES)

    assert attempt.result == "error"
    assert attempt.error == "HTTP status 302, expected 2xx"


def test_http_timeout(tmp_path: Path):
    with http_listener(delay=2.0) as listener:
        spec = NotifyHttp(url=listener.url, timeout_seconds=0.2)
        attempt = HttpAction(spec, refs=Refs(tmp_path), notify_target="r").deliver(NAMES)

    assert attempt.result == "error"
    assert attempt.error == "request timed out after 0.2 s"


def test_retry_delay_doubles_up_to_cap():
    lowest = [retry_delay(n, minimum=1, maximum=30, rng=lambda: 0.0) for n in range(1, 8)]
    highest = [retry_delay(n, minimum=1, maximum=30, rng=lambda: 1.0) for n in range(1, 8)]
    assert lowest == [1, 2, 4, 8, 15, 15, 15]
    assert highest == [2, 4, 8, 16, 30, 30, 30]


def test_slow_listener_blocks_neither_writing_nor_others(vault, tmp_path: Path):
    """While one notify target waits for a slow application, files change and the other notify
    target is delivered."""
    vault.kv_put("secret", "app", {"password": "fake-db-password-1"})
    marker = tmp_path / "command-ran"
    with http_listener(delay=2.0) as listener:
        documents = (
            notify_target("slow", http_spec(listener.url, retries=0))
            + "---\n"
            + notify_target("fast", f"  command:\n    argv: [touch, {marker}]\n")
        )
        config = write_config(tmp_path, vault_url=vault.url, notify_targets=documents)
        refs = tmp_path / "refs" / "refresh"
        refs.mkdir(parents=True, exist_ok=True)
        (refs / "token").write_text(f"Bearer {FAKE_TOKEN}")
        syncer = make_syncer(tmp_path, config)
        notifier = Notifier(refs=Refs(tmp_path / "refs"), metrics=syncer.metrics, delay=0.1)
        notifier.attach(syncer)
        password = tmp_path / "out" / "app" / "password"
        try:
            with running(syncer):
                assert wait_for(password.exists)
                vault.kv_put("secret", "app", {"password": "fake-db-password-2"})
                refresh_now(syncer)
                assert wait_for(lambda: listener.received), "the slow request was not sent"
                assert wait_for(marker.exists), "the other notify target waited for the slow one"

                vault.kv_put("secret", "app", {"password": "fake-db-password-3"})
                refresh_now(syncer)
                written = wait_for(lambda: password.read_bytes() == b"fake-db-password-3")
                assert written, "writing waited for the slow notify target"
                pending = metric(syncer, NOTIFY_TOTAL, target="slow", result="success") == 0
                assert pending, "the slow request finished too early to show anything"
                assert wait_for(lambda: len(listener.received) == 2, seconds=15)
        finally:
            notifier.close()
