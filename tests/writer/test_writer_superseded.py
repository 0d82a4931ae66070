"""Removal of superseded generations after their grace period, without a later projection."""

from __future__ import annotations

import time
from pathlib import Path

from agent.writer import Writer


def generations(target: Path) -> set[str]:
    return {
        entry.name
        for entry in target.iterdir()
        if entry.name.startswith("..") and entry.name[2:3].isdigit()
    }


def test_superseded_generation_kept_then_removed(output_dir: Path):
    writer = Writer(output_dir, old_generation_grace_seconds=0.3)
    writer.project("app", {"password": b"fake-old"})
    first = writer.generation("app")
    writer.project("app", {"password": b"fake-new"})
    current = writer.generation("app")

    assert generations(output_dir / "app") == {first, current}
    delay = writer.remove_superseded()
    assert delay is not None
    assert 0 < delay <= 0.3
    assert generations(output_dir / "app") == {first, current}

    time.sleep(delay + 0.05)
    assert writer.remove_superseded() is None
    assert generations(output_dir / "app") == {current}
    assert (output_dir / "app" / "password").read_bytes() == b"fake-new"


def test_remove_superseded_without_switches_is_a_no_op(output_dir: Path):
    writer = Writer(output_dir, old_generation_grace_seconds=0.3)
    assert writer.remove_superseded() is None
    writer.project("app", {"password": b"fake-one"})
    assert writer.remove_superseded() is None
    assert len(generations(output_dir / "app")) == 1
