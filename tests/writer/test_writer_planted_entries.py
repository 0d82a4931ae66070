"""Planted entries: structured warnings when they are replaced, and removal of old generations.

The application shares the volume, so it may plant links, files and FIFOs at the names the writer
uses or inside generation directories. Each replaced entry gets one `planted_entry_replaced`
warning, and a superseded generation is removed whatever was planted in it, even while entries
keep appearing in it during the removal.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from agent.writer import DATA_LINK, Writer

SNAPSHOT = {"db-password": b"fake-db-password-1", "api-token": b"fake-api-token-1"}
CHANGED = {"db-password": b"fake-db-password-2", "api-token": b"fake-api-token-2"}
PLANTER_ROUNDS = 400


def generation_dirs(target_dir: Path) -> list[str]:
    return sorted(name for name in os.listdir(target_dir) if name.startswith("..2"))


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    """Return the fields of every `agent.writer` record whose event is `name`."""
    return [
        dict(getattr(record, "event_fields", {}))
        for record in caplog.records
        if record.name == "agent.writer" and record.getMessage() == name
    ]


def test_switch_logged_as_structured_event(
    output_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.writer")
    writer = Writer(output_dir)

    writer.project("payment", SNAPSHOT)

    switched = events(caplog, "projection_switched")
    assert len(switched) == 1
    assert switched[0]["target"] == "payment"
    assert switched[0]["keys"] == 2
    assert switched[0]["generation"] == writer.generation("payment")
    assert "duration_ms" in switched[0]


def test_no_writer_message_embeds_fields(
    output_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.writer")
    writer = Writer(output_dir, old_generation_grace_seconds=0)
    target_dir = output_dir / "payment"
    target_dir.mkdir()
    (target_dir / "db-password").write_bytes(b"planted")
    os.symlink("elsewhere", target_dir / "..data_tmp")

    writer.project("payment", SNAPSHOT)
    writer.project("payment", CHANGED)

    messages = [record.getMessage() for record in caplog.records if record.name == "agent.writer"]
    assert messages
    for message in messages:
        assert "=" not in message, message
        assert " " not in message, message


@pytest.mark.parametrize("kind", ["symlink", "file", "fifo"])
def test_planted_entry_at_key_name_warned(
    output_dir: Path, outside_dir: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.writer")
    writer = Writer(output_dir)
    target_dir = output_dir / "payment"
    target_dir.mkdir()
    planted = target_dir / "db-password"
    if kind == "symlink":
        os.symlink(outside_dir / "db-password", planted)
    elif kind == "file":
        planted.write_bytes(b"planted")
    else:
        os.mkfifo(planted)

    writer.project("payment", SNAPSHOT)

    warnings = events(caplog, "planted_entry_replaced")
    assert warnings == [{"target": "payment", "entry": "db-password", "kind": kind}]
    assert os.readlink(planted) == f"{DATA_LINK}/db-password"


def test_planted_link_at_nested_directory_warned(
    output_dir: Path, outside_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.writer")
    writer = Writer(output_dir, allow_nested=True)
    target_dir = output_dir / "payment"
    target_dir.mkdir()
    os.symlink(outside_dir, target_dir / "tls")

    writer.project("payment", {"tls/key.pem": b"fake-key-1"})

    warnings = events(caplog, "planted_entry_replaced")
    assert warnings == [{"target": "payment", "entry": "tls", "kind": "symlink"}]
    assert (target_dir / "tls" / "key.pem").read_bytes() == b"fake-key-1"


def test_planted_data_link_to_outside_warned(
    output_dir: Path, outside_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.writer")
    writer = Writer(output_dir)
    target_dir = output_dir / "payment"
    target_dir.mkdir()
    os.symlink(outside_dir, target_dir / DATA_LINK)

    writer.project("payment", SNAPSHOT)

    warnings = events(caplog, "planted_entry_replaced")
    assert warnings == [{"target": "payment", "entry": DATA_LINK, "kind": "symlink"}]
    assert os.readlink(target_dir / DATA_LINK) == writer.generation("payment")


# A regular file with a plain name inside a generation looks like a removed secret key, so only
# entries the writer never creates there are reported.
@pytest.mark.parametrize(
    ("name", "kind"), [("extra-link", "symlink"), ("extra-fifo", "fifo"), ("..extra", "file")]
)
def test_planted_entry_in_generation_warned(
    output_dir: Path, caplog: pytest.LogCaptureFixture, name: str, kind: str
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.writer")
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)
    generation = writer.generation("payment")
    assert generation is not None
    planted = output_dir / "payment" / generation / name
    if kind == "symlink":
        os.symlink("/", planted)
    elif kind == "fifo":
        os.mkfifo(planted)
    else:
        planted.write_bytes(b"planted")

    assert writer.project("payment", SNAPSHOT) is True

    warnings = events(caplog, "planted_entry_replaced")
    assert warnings == [{"target": "payment", "entry": f"{generation}/{name}", "kind": kind}]


def test_generation_with_planted_entries_removed(output_dir: Path, outside_dir: Path) -> None:
    writer = Writer(output_dir, allow_nested=True, old_generation_grace_seconds=0)
    writer.project("payment", {"tls/key.pem": b"fake-key-1", "db-password": b"fake-1"})
    target_dir = output_dir / "payment"
    old = writer.generation("payment")
    assert old is not None
    generation_dir = target_dir / old
    (generation_dir / "planted-file").write_bytes(b"planted")
    os.mkfifo(generation_dir / "planted-fifo")
    os.symlink(outside_dir, generation_dir / "planted-link")
    (generation_dir / "planted-dir" / "deeper").mkdir(parents=True)
    os.mkfifo(generation_dir / "planted-dir" / "deeper" / "fifo")
    os.symlink(outside_dir / "marker", generation_dir / "tls" / "planted-link")
    (outside_dir / "marker").write_bytes(b"outside")

    writer.project("payment", {"tls/key.pem": b"fake-key-2", "db-password": b"fake-2"})
    writer.remove_superseded()

    assert generation_dirs(target_dir) == [writer.generation("payment")]
    assert (outside_dir / "marker").read_bytes() == b"outside"


@pytest.mark.timeout(60)
def test_generations_removed_despite_planting_race(output_dir: Path) -> None:
    writer = Writer(output_dir, old_generation_grace_seconds=0)
    writer.project("payment", SNAPSHOT)
    target_dir = output_dir / "payment"
    stop = threading.Event()

    def plant() -> None:
        # Keep creating files in every generation directory, as a hostile application might.
        count = 0
        while not stop.is_set():
            for name in generation_dirs(target_dir):
                try:
                    (target_dir / name / f"planted-{count}").write_bytes(b"x")
                except OSError:
                    pass  # the generation was removed in the meantime
                count += 1

    planter = threading.Thread(target=plant)
    planter.start()
    try:
        for number in range(PLANTER_ROUNDS):
            writer.project("payment", {"db-password": f"fake-{number}".encode()})
            writer.remove_superseded()
    finally:
        stop.set()
        planter.join()

    deadline = time.monotonic() + 30
    while (delay := writer.remove_superseded()) is not None and time.monotonic() < deadline:
        time.sleep(delay)

    assert generation_dirs(target_dir) == [writer.generation("payment")]
