"""Config reload with real files, real watchdog observers and a running Syncer against moto.

Every wait is bounded, and debounce windows are short, so each test takes about a second.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from watchdog.observers.inotify import InotifyObserver

from agent.declarations import MAX_FILE_BYTES, MAX_YAML_NODES_PER_DOCUMENT, load_declarations
from agent.metrics import Metrics
from agent.reload import ConfigReloader
from agent.settings import load_settings
from agent.sync import Syncer
from agent.writer import Writer

STORE = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {name: aws-ssm}
spec:
  provider:
    aws: {service: ParameterStore, region: us-east-1}
"""
WAIT_SECONDS = 10.0
DEBOUNCE = 0.05
POLL_INTERVAL = 0.05


def external_secret(name: str, keys: dict[str, str], interval: str = "1h") -> str:
    lines = [
        "apiVersion: secrets-agent.io/v1alpha1",
        "kind: ExternalSecret",
        f"metadata: {{name: {name}}}",
        "spec:",
        f"  refreshInterval: {interval}",
        "  secretStoreRef: {name: aws-ssm}",
        "  data:",
    ]
    for secret_key, remote_key in keys.items():
        lines.append(f"    - {{secretKey: {secret_key}, remoteRef: {{key: {remote_key}}}}}")
    return "\n".join(lines) + "\n"


def wait_for(condition: Callable[[], object], *, seconds: float = WAIT_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


class Agent:
    """A Syncer running in its thread and a ConfigReloader feeding it, like `secrets-agent run`."""

    def __init__(self, tmp_path: Path, config: list[Path], **reloader_options) -> None:
        self.output = tmp_path / "out"
        settings = load_settings(
            config=[str(path) for path in config],
            output_dir=str(self.output),
            refs_dir=str(tmp_path / "refs"),
        )
        declarations = load_declarations(settings.config)
        self.syncer = Syncer(
            declarations, settings=settings, writer=Writer(settings.output_dir), metrics=Metrics()
        )
        options = {"debounce": DEBOUNCE, "poll_interval": POLL_INTERVAL, **reloader_options}
        self.reloader = ConfigReloader(
            settings.config,
            apply=self.syncer.replace_declarations,
            current=declarations,
            **options,
        )
        self.thread = threading.Thread(target=self.syncer.run_forever, name="sync", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.reloader.start()
        # The reloader compares the files once after start; let that finish first.
        assert wait_for(lambda: self.reloader.loads >= 1)

    def stop(self) -> None:
        self.reloader.stop()
        self.syncer.request_stop()
        self.thread.join(5)
        self.syncer.stores.close()

    def file(self, target: str, key: str) -> bytes | None:
        return read_file(self.output / target / key)

    def targets(self) -> set[str]:
        with self.syncer.lock:
            return set(self.syncer.states)


@pytest.fixture
def ssm(aws):
    client = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    for name, value in {
        "/app/a/password": "fake-a-password-1",
        "/app/a/other": "fake-a-other-1",
        "/app/b/password": "fake-b-password-1",
    }.items():
        client.put_parameter(Name=name, Value=value, Type="SecureString")
    return client


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "stores.yaml").write_text(STORE)
    (directory / "a.yaml").write_text(external_secret("a", {"password": "/app/a/password"}))
    return directory


@pytest.fixture
def agent(ssm, tmp_path: Path, config_dir: Path) -> Iterator[Agent]:
    running = Agent(tmp_path, [config_dir])
    running.start()
    assert wait_for(lambda: running.file("a", "password") == b"fake-a-password-1")
    yield running
    running.stop()


def rejected_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [
        record.event_fields
        for record in caplog.records
        if record.getMessage() == "declarations_rejected"
    ]


# --- adding, changing, removing ------------------------------------------------------------------


def test_added_file_adds_target(agent: Agent, config_dir: Path) -> None:
    (config_dir / "b.yaml").write_text(external_secret("b", {"password": "/app/b/password"}))

    assert wait_for(lambda: agent.file("b", "password") == b"fake-b-password-1")
    assert agent.targets() == {"a", "b"}


def test_failing_added_target_stays_ready(agent: Agent, config_dir: Path) -> None:
    assert wait_for(lambda: agent.syncer.readiness()[0])
    (config_dir / "b.yaml").write_text(external_secret("b", {"password": "/app/b/missing"}))

    def failing() -> bool:
        return agent.syncer.readiness()[1]["targets"].get("b", {}).get("status") == "failing"

    assert wait_for(failing)
    ready, body = agent.syncer.readiness()
    # The application already runs with target a. A mistake in the new target shows in the
    # body and the logs, but does not take the pod out of its Service.
    assert ready
    assert body["targets"]["a"]["status"] == "ok"
    assert "/app/b/missing" in body["targets"]["b"]["error"]


def test_edited_key_changes_file(agent: Agent, config_dir: Path) -> None:
    (config_dir / "a.yaml").write_text(external_secret("a", {"password": "/app/a/other"}))

    assert wait_for(lambda: agent.file("a", "password") == b"fake-a-other-1")


def test_renamed_secret_key(agent: Agent, config_dir: Path) -> None:
    (config_dir / "a.yaml").write_text(external_secret("a", {"db-password": "/app/a/password"}))

    assert wait_for(lambda: agent.file("a", "db-password") == b"fake-a-password-1")
    assert wait_for(lambda: agent.file("a", "password") is None)


def test_removed_file_stops_refreshing(ssm, tmp_path: Path, config_dir: Path) -> None:
    (config_dir / "a.yaml").write_text(
        external_secret("a", {"password": "/app/a/password"}, interval="1s")
    )
    (config_dir / "b.yaml").write_text(
        external_secret("b", {"password": "/app/b/password"}, interval="1s")
    )
    agent = Agent(tmp_path, [config_dir])
    agent.start()
    try:
        assert wait_for(lambda: agent.file("b", "password") == b"fake-b-password-1")

        (config_dir / "b.yaml").unlink()
        assert wait_for(lambda: agent.targets() == {"a"})
        for name in ("/app/a/password", "/app/b/password"):
            ssm.put_parameter(Name=name, Value="fake-new-2", Type="SecureString", Overwrite=True)

        assert wait_for(lambda: agent.file("a", "password") == b"fake-new-2")
        # Target a was refreshed after the change; b, removed, keeps its last files.
        assert agent.file("b", "password") == b"fake-b-password-1"
        ready, body = agent.syncer.readiness()
        assert ready
        assert set(body["targets"]) == {"a"}
    finally:
        agent.stop()


def test_added_store_and_target(agent: Agent, config_dir: Path) -> None:
    second_store = STORE.replace("name: aws-ssm", "name: aws-ssm-2")
    document = external_secret("c", {"password": "/app/b/password"}).replace(
        "{name: aws-ssm}", "{name: aws-ssm-2}"
    )
    (config_dir / "c.yaml").write_text(second_store + "---\n" + document)

    assert wait_for(lambda: agent.file("c", "password") == b"fake-b-password-1")


# --- invalid versions ----------------------------------------------------------------------------


def test_invalid_edit_rejected_then_fixed(
    agent: Agent, config_dir: Path, caplog: pytest.LogCaptureFixture, ssm
) -> None:
    caplog.set_level(logging.INFO, logger="agent.reload")
    broken = external_secret("a", {"password": "/app/a/other"}).replace(
        "refreshInterval: 1h", "refreshInterval: soon"
    )
    (config_dir / "a.yaml").write_text(broken)
    (config_dir / "b.yaml").write_text("apiVersion: secrets-agent.io/v1alpha1\nkind: Secret\n")

    # The two writes may reach the reloader as one burst or as two; the second load has both.
    assert wait_for(lambda: any(line["errors"] == 2 for line in rejected_lines(caplog)))
    line = rejected_lines(caplog)[-1]
    assert line["errors"] == 2
    assert line["kept_targets"] == 1
    problems = line["problems"].splitlines()
    assert len(problems) == 2
    assert str(config_dir / "a.yaml") in problems[0]
    assert "spec.refreshInterval" in problems[0]
    assert "Go duration" in problems[0]
    assert str(config_dir / "b.yaml") in problems[1]
    assert "kind" in problems[1]
    # The running set is kept and still syncs.
    assert agent.targets() == {"a"}
    assert agent.file("a", "password") == b"fake-a-password-1"

    (config_dir / "b.yaml").unlink()
    (config_dir / "a.yaml").write_text(external_secret("a", {"password": "/app/a/other"}))

    assert wait_for(lambda: agent.file("a", "password") == b"fake-a-other-1")
    assert agent.reloader.applied >= 1


def test_rejected_log_has_no_value(
    agent: Agent, config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.reload")
    text = external_secret("a", {"password": "/app/a/password"})
    (config_dir / "a.yaml").write_text(text + "  token: fake-pasted-token-1\n")

    assert wait_for(lambda: agent.reloader.rejected >= 1)
    [line] = rejected_lines(caplog)[-1:]
    assert "spec.token" in line["problems"]
    assert "fake-pasted-token" not in str(line)


# --- how files change on disk --------------------------------------------------------------------


def test_emptied_directory_rejected(
    agent: Agent, config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.reload")
    (config_dir / "a.yaml").unlink()

    assert wait_for(lambda: agent.reloader.rejected >= 1)
    [line] = rejected_lines(caplog)[-1:]
    assert "no ExternalSecret is declared" in line["problems"]
    assert agent.targets() == {"a"}


def test_file_replaced_by_rename(agent: Agent, config_dir: Path) -> None:
    # Editors save by writing a temporary file and renaming it over the original.
    temporary = config_dir / ".a.yaml.swp"
    temporary.write_text(external_secret("a", {"password": "/app/a/other"}))
    os.rename(temporary, config_dir / "a.yaml")

    assert wait_for(lambda: agent.file("a", "password") == b"fake-a-other-1")


def test_directory_deleted_and_recreated(
    agent: Agent, config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.reload")
    shutil.rmtree(config_dir)
    # A load during the removal may also find an empty directory, but the last finds none.
    assert wait_for(lambda: any("not found" in line["problems"] for line in rejected_lines(caplog)))
    assert agent.targets() == {"a"}

    config_dir.mkdir()
    (config_dir / "stores.yaml").write_text(STORE)
    (config_dir / "b.yaml").write_text(external_secret("b", {"password": "/app/b/password"}))

    assert wait_for(lambda: agent.file("b", "password") == b"fake-b-password-1")
    assert agent.targets() == {"b"}

    # The new directory is watched too.
    (config_dir / "a.yaml").write_text(external_secret("a", {"password": "/app/a/other"}))
    assert wait_for(lambda: agent.file("a", "password") == b"fake-a-other-1")


def test_file_path_watched_through_parent(ssm, tmp_path: Path, config_dir: Path) -> None:
    agent = Agent(tmp_path, [config_dir / "stores.yaml", config_dir / "a.yaml"])
    agent.start()
    try:
        # An unrelated file next to a watched one does not cause a load.
        loads = agent.reloader.loads
        (config_dir / "unrelated.yaml").write_text("not: a declaration\n")
        time.sleep(0.3)
        assert agent.reloader.loads == loads

        (config_dir / "a.yaml").write_text(external_secret("a", {"password": "/app/a/other"}))
        assert wait_for(lambda: agent.file("a", "password") == b"fake-a-other-1")
    finally:
        agent.stop()


def test_idle_reloader_does_not_load(agent: Agent, config_dir: Path) -> None:
    loads = agent.reloader.loads

    # The sync loop keeps reading and writing meanwhile; none of it is a declaration change.
    time.sleep(1.0)
    (config_dir / "a.yaml").read_text()

    assert agent.reloader.loads == loads


# --- a mounted ConfigMap -------------------------------------------------------------------------


class ConfigMapVolume:
    """A directory laid out as the kubelet lays out a mounted ConfigMap, updated the same way."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.generation = 0
        directory.mkdir()

    def write(self, files: dict[str, str]) -> None:
        self.generation += 1
        name = f"..2026_12_04_16_00_0{self.generation}.{1000 + self.generation}"
        generation = self.directory / name
        generation.mkdir()
        for key, text in files.items():
            (generation / key).write_text(text)
        previous = self._current()
        os.symlink(name, self.directory / "..data_tmp")
        os.rename(self.directory / "..data_tmp", self.directory / "..data")
        for key in files:
            link = self.directory / key
            if not link.is_symlink():
                os.symlink(f"..data/{key}", link)
        for entry in self.directory.iterdir():
            if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in files:
                entry.unlink()
        if previous is not None:
            shutil.rmtree(self.directory / previous)

    def _current(self) -> str | None:
        try:
            return os.readlink(self.directory / "..data")
        except OSError:
            return None


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
@pytest.mark.parametrize("watch", ["directory", "files"])
def test_configmap_switch_detected(ssm, tmp_path: Path, polling: bool, watch: str) -> None:
    volume = ConfigMapVolume(tmp_path / "configmap")
    volume.write(
        {"stores.yaml": STORE, "a.yaml": external_secret("a", {"password": "/app/a/password"})}
    )
    if watch == "directory":
        paths = [volume.directory]
    else:
        paths = [volume.directory / "stores.yaml", volume.directory / "a.yaml"]
    agent = Agent(tmp_path, paths, use_polling=polling)
    agent.start()
    try:
        assert wait_for(lambda: agent.file("a", "password") == b"fake-a-password-1")

        second = external_secret("a", {"password": "/app/a/other", "b": "/app/b/password"})
        volume.write({"stores.yaml": STORE, "a.yaml": second})

        assert wait_for(lambda: agent.file("a", "password") == b"fake-a-other-1")
        # The link of a new key appears just after the `..data` switch, as the kubelet does it.
        assert wait_for(lambda: agent.file("a", "b") == b"fake-b-password-1")
        assert agent.reloader.rejected == 0, "a half-switched ConfigMap was read"
    finally:
        agent.stop()


def test_configmap_key_added(ssm, tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "configmap")
    volume.write(
        {"stores.yaml": STORE, "a.yaml": external_secret("a", {"password": "/app/a/password"})}
    )
    agent = Agent(tmp_path, [volume.directory])
    agent.start()
    try:
        volume.write(
            {
                "stores.yaml": STORE,
                "a.yaml": external_secret("a", {"password": "/app/a/password"}),
                "b.yaml": external_secret("b", {"password": "/app/b/password"}),
            }
        )

        assert wait_for(lambda: agent.file("b", "password") == b"fake-b-password-1")
    finally:
        agent.stop()


# --- without inotify -----------------------------------------------------------------------------


class ExhaustedInotify(InotifyObserver):
    """An inotify observer whose kernel has no watches left, as on a crowded node."""

    def schedule(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


def test_falls_back_to_polling(
    ssm, tmp_path: Path, config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.reload")
    agent = Agent(tmp_path, [config_dir], observer_class=ExhaustedInotify)
    agent.start()
    try:
        assert agent.reloader.polling
        [line] = [r for r in caplog.records if r.getMessage() == "config_watch_polling"]
        assert "inotify watch limit reached" in line.event_fields["reason"]
        assert line.event_fields["interval_s"] == POLL_INTERVAL

        (config_dir / "a.yaml").write_text(external_secret("a", {"password": "/app/a/other"}))
        assert wait_for(lambda: agent.file("a", "password") == b"fake-a-other-1")
    finally:
        agent.stop()


# --- relative paths, unrelated files, requested reloads ------------------------------------------


def test_relative_config_not_reloaded(
    ssm, tmp_path: Path, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    agent = Agent(tmp_path, [Path(config_dir.name)])
    agent.start()
    try:
        assert wait_for(lambda: agent.file("a", "password") == b"fake-a-password-1")
        # The comparison after start and any event during the first write found no change.
        time.sleep(0.5)
        assert agent.reloader.applied == 0
    finally:
        agent.stop()


def test_relative_config_file_not_reloaded(
    ssm, tmp_path: Path, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(config_dir)
    agent = Agent(tmp_path, [Path("stores.yaml"), Path("a.yaml")])
    agent.start()
    try:
        assert wait_for(lambda: agent.file("a", "password") == b"fake-a-password-1")
        time.sleep(0.5)
        assert agent.reloader.applied == 0
    finally:
        agent.stop()


@pytest.mark.parametrize("where", ["inside", "beside"])
def test_other_files_cause_no_load(ssm, tmp_path: Path, config_dir: Path, where: str) -> None:
    agent = Agent(tmp_path, [config_dir])
    agent.start()
    try:
        loads = agent.reloader.loads
        folder = config_dir if where == "inside" else config_dir.parent
        log = folder / "agent.log"
        for line in range(20):
            with log.open("a") as stream:
                stream.write(f"line {line}\n")
            time.sleep(0.01)
        (folder / "notes.txt").write_text("not a declaration\n")
        time.sleep(0.3)
        assert agent.reloader.loads == loads
    finally:
        agent.stop()


def test_unchanged_reload_logs_debug(
    ssm, tmp_path: Path, config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = Agent(tmp_path, [config_dir])
    with caplog.at_level(logging.DEBUG, logger="agent"):
        agent.start()
        try:
            loads = agent.reloader.loads
            (config_dir / "a.yaml").write_text((config_dir / "a.yaml").read_text())
            assert wait_for(lambda: agent.reloader.loads > loads)
        finally:
            agent.stop()
    events = [(record.getMessage(), record.levelno) for record in caplog.records]
    assert ("declarations_unchanged", logging.DEBUG) in events
    assert not any(message == "declarations_reloaded" for message, _ in events)
    assert agent.reloader.applied == 0


def test_requested_reload_without_watching(ssm, tmp_path: Path, config_dir: Path) -> None:
    agent = Agent(tmp_path, [config_dir], watch=False)
    agent.thread.start()
    agent.reloader.start()
    try:
        assert wait_for(lambda: agent.file("a", "password") == b"fake-a-password-1")
        (config_dir / "a.yaml").write_text(
            (config_dir / "a.yaml").read_text().replace("/app/a/password", "/app/a/other")
        )
        time.sleep(0.3)
        assert agent.reloader.loads == 0, "a reloader that watches nothing loaded after an edit"

        agent.reloader.request_reload()
        assert wait_for(lambda: agent.file("a", "password") == b"fake-a-other-1")
        assert agent.reloader.applied == 1
    finally:
        agent.stop()


@pytest.mark.parametrize("content", ["size", "nodes"])
def test_oversized_file_keeps_running_set(
    agent: Agent, config_dir: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    if content == "size":
        text = "# padding\n" * (MAX_FILE_BYTES // 10 + 1)
    else:
        text = "a: [" + ",".join(["1"] * (MAX_YAML_NODES_PER_DOCUMENT + 1)) + "]\n"
    rejected = agent.reloader.rejected
    with caplog.at_level(logging.ERROR, logger="agent.reload"):
        (config_dir / "huge.yaml").write_text(text)
        assert wait_for(lambda: agent.reloader.rejected > rejected)
    assert agent.targets() == {"a"}
    [record] = [r for r in caplog.records if r.getMessage() == "declarations_rejected"]
    problems = record.event_fields["problems"]  # type: ignore[attr-defined]
    assert str(config_dir / "huge.yaml") in problems
    assert "more than" in problems

    (config_dir / "huge.yaml").unlink()
    (config_dir / "b.yaml").write_text(external_secret("b", {"password": "/app/b/password"}))
    assert wait_for(lambda: agent.file("b", "password") == b"fake-b-password-1")
    assert agent.targets() == {"a", "b"}
