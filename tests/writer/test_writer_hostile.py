"""Entries planted by the application never make the writer write, read or remove outside.

Each test plants something in the target directory: links pointing outside, FIFOs, or
directories where links belong. It then checks that a directory next to the output directory
is untouched, byte for byte and mtime for mtime. Tests of failures also check that the
previous generation stays current and that no temporary entry remains.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.writer import DATA_LINK, DATA_TMP_LINK, FileOwnership, ProjectionError, Writer

SNAPSHOT = {"db-password": b"fake-db-password-1", "api-token": b"fake-api-token-1"}
CHANGED = {"db-password": b"fake-db-password-2", "api-token": b"fake-api-token-2"}
OUTSIDE_CONTENT = b"outside file that must stay as it is"


@pytest.fixture
def outside_state(outside_dir: Path) -> dict[str, tuple[bytes, int, int]]:
    """Fill `outside_dir` with files named like secret keys; return their state."""
    for name in [*SNAPSHOT, "marker"]:
        (outside_dir / name).write_bytes(OUTSIDE_CONTENT)
    return read_state(outside_dir)


def read_state(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    state = {}
    for name in sorted(os.listdir(directory)):
        status = os.lstat(directory / name)
        state[name] = ((directory / name).read_bytes(), status.st_mtime_ns, status.st_mode)
    return state


def temporary_entries(target_dir: Path, current: str | None) -> list[str]:
    """Entries a failed projection must not leave: temp links and non-current generations."""
    leftovers = []
    for name in os.listdir(target_dir):
        if name == DATA_TMP_LINK or name.startswith("..link_tmp."):
            leftovers.append(name)
        elif name.startswith("..2") and name != current:
            leftovers.append(name)
    return leftovers


def test_target_dir_link_rejected(
    output_dir: Path, outside_dir: Path, outside_state: dict[str, tuple[bytes, int, int]]
) -> None:
    writer = Writer(output_dir)
    os.symlink(outside_dir, output_dir / "payment")

    with pytest.raises(ProjectionError) as caught:
        writer.project("payment", SNAPSHOT)

    assert str(output_dir / "payment") in str(caught.value)
    assert "symbolic link" in str(caught.value)
    assert read_state(outside_dir) == outside_state
    with pytest.raises(ProjectionError):
        writer.read("payment")


def test_target_dir_file_rejected(output_dir: Path) -> None:
    writer = Writer(output_dir)
    (output_dir / "payment").write_bytes(b"planted")

    with pytest.raises(ProjectionError) as caught:
        writer.project("payment", SNAPSHOT)

    assert "not a directory" in str(caught.value)
    assert (output_dir / "payment").read_bytes() == b"planted"


def test_data_link_to_outside(
    output_dir: Path, outside_dir: Path, outside_state: dict[str, tuple[bytes, int, int]]
) -> None:
    writer = Writer(output_dir)
    (output_dir / "payment").mkdir()
    os.symlink(outside_dir, output_dir / "payment" / DATA_LINK)
    assert writer.read("payment") is None

    assert writer.project("payment", SNAPSHOT) is True

    assert read_state(outside_dir) == outside_state
    assert os.readlink(output_dir / "payment" / DATA_LINK) == writer.generation("payment")
    assert (output_dir / "payment" / "db-password").read_bytes() == SNAPSHOT["db-password"]


def test_generation_named_link_not_followed(
    output_dir: Path, outside_dir: Path, outside_state: dict[str, tuple[bytes, int, int]]
) -> None:
    writer = Writer(output_dir)
    target_dir = output_dir / "payment"
    target_dir.mkdir()
    planted = "..2020_01_01_00_00_00.planted"
    os.symlink(outside_dir, target_dir / planted)
    os.symlink(planted, target_dir / DATA_LINK)
    assert writer.generation("payment") is None
    assert writer.read("payment") is None

    assert writer.project("payment", SNAPSHOT) is True

    assert read_state(outside_dir) == outside_state
    assert os.readlink(target_dir / planted) == str(outside_dir)
    assert writer.generation("payment") != planted


def test_data_tmp_link_to_outside(
    output_dir: Path, outside_dir: Path, outside_state: dict[str, tuple[bytes, int, int]]
) -> None:
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)
    os.symlink(outside_dir, output_dir / "payment" / DATA_TMP_LINK)

    assert writer.project("payment", CHANGED) is True

    assert read_state(outside_dir) == outside_state
    assert not os.path.lexists(output_dir / "payment" / DATA_TMP_LINK)


@pytest.mark.parametrize("planted", ["absolute", "relative"])
def test_key_link_to_outside(
    output_dir: Path,
    outside_dir: Path,
    outside_state: dict[str, tuple[bytes, int, int]],
    planted: str,
) -> None:
    writer = Writer(output_dir)
    target_dir = output_dir / "payment"
    target_dir.mkdir()
    outside_file = outside_dir / "db-password"
    link = str(outside_file) if planted == "absolute" else f"../../outside/{outside_file.name}"
    os.symlink(link, target_dir / "db-password")

    writer.project("payment", SNAPSHOT)
    writer.project("payment", CHANGED)

    assert read_state(outside_dir) == outside_state
    assert os.readlink(target_dir / "db-password") == f"{DATA_LINK}/db-password"
    assert (target_dir / "db-password").read_bytes() == CHANGED["db-password"]


def test_link_inside_generation(
    output_dir: Path, outside_dir: Path, outside_state: dict[str, tuple[bytes, int, int]]
) -> None:
    writer = Writer(output_dir, old_generation_grace_seconds=0)
    writer.project("payment", SNAPSHOT)
    target_dir = output_dir / "payment"
    generation = writer.generation("payment")
    assert generation is not None
    planted_file = target_dir / generation / "db-password"
    os.unlink(planted_file)
    os.symlink(outside_dir / "db-password", planted_file)
    os.symlink(outside_dir, target_dir / generation / "extra-dir-link")

    assert writer.read("payment") is None
    assert writer.project("payment", SNAPSHOT) is True

    assert read_state(outside_dir) == outside_state
    assert writer.generation("payment") != generation
    assert not os.path.lexists(target_dir / generation)
    assert (target_dir / "db-password").read_bytes() == SNAPSHOT["db-password"]


def test_nested_directory_link_in_generation(
    output_dir: Path, outside_dir: Path, outside_state: dict[str, tuple[bytes, int, int]]
) -> None:
    writer = Writer(output_dir, allow_nested=True)
    files = {"tls/db-password": b"fake-nested-1"}
    writer.project("payment", files)
    target_dir = output_dir / "payment"
    generation = writer.generation("payment")
    assert generation is not None
    os.rename(target_dir / generation / "tls", target_dir / "moved-away")
    os.symlink(outside_dir, target_dir / generation / "tls")

    assert writer.read("payment") is None
    assert writer.project("payment", files) is True

    assert read_state(outside_dir) == outside_state
    assert (target_dir / "tls" / "db-password").read_bytes() == b"fake-nested-1"


def test_orphan_generation_with_link(
    output_dir: Path, outside_dir: Path, outside_state: dict[str, tuple[bytes, int, int]]
) -> None:
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)
    orphan = output_dir / "payment" / "..2020_01_01_00_00_00.orphan"
    orphan.mkdir()
    os.symlink(outside_dir, orphan / "to-outside")
    os.symlink(outside_dir / "marker", orphan / "marker")

    restarted = Writer(output_dir)
    restarted.project("payment", CHANGED)

    assert not os.path.lexists(orphan)
    assert read_state(outside_dir) == outside_state


def test_failed_projection_rescans_directory(output_dir: Path) -> None:
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)
    target_dir = output_dir / "payment"
    (target_dir / "new-key").mkdir()
    with pytest.raises(ProjectionError):
        writer.project("payment", {**SNAPSHOT, "new-key": b"fake-new-1"})
    os.rmdir(target_dir / "new-key")
    orphan = target_dir / "..2020_01_01_00_00_00.orphan"
    orphan.mkdir()

    assert writer.project("payment", SNAPSHOT) is False

    assert not os.path.lexists(orphan)


@pytest.mark.timeout(30)
def test_fifo_at_key_name(output_dir: Path) -> None:
    writer = Writer(output_dir)
    target_dir = output_dir / "payment"
    target_dir.mkdir()
    os.mkfifo(target_dir / "db-password")

    assert writer.project("payment", SNAPSHOT) is True

    assert os.readlink(target_dir / "db-password") == f"{DATA_LINK}/db-password"


@pytest.mark.timeout(30)
def test_fifo_inside_generation(output_dir: Path) -> None:
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)
    target_dir = output_dir / "payment"
    generation = writer.generation("payment")
    assert generation is not None
    os.unlink(target_dir / generation / "db-password")
    os.mkfifo(target_dir / generation / "db-password")

    assert writer.read("payment") is None
    assert writer.project("payment", SNAPSHOT) is True

    assert stat.S_ISREG(os.stat(target_dir / "db-password").st_mode)


def test_directory_at_new_key_keeps_previous(output_dir: Path) -> None:
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)
    target_dir = output_dir / "payment"
    previous = writer.generation("payment")
    (target_dir / "new-key").mkdir()

    with pytest.raises(ProjectionError) as caught:
        writer.project("payment", {**CHANGED, "new-key": b"fake-new-1"})

    message = str(caught.value)
    assert str(target_dir / "new-key") in message
    assert "directory" in message
    assert "fake-" not in message
    assert writer.generation("payment") == previous
    assert dict(writer.read("payment") or {}) == SNAPSHOT
    assert (target_dir / "db-password").read_bytes() == SNAPSHOT["db-password"]
    assert temporary_entries(target_dir, previous) == []


def test_directory_at_data_tmp_keeps_previous(output_dir: Path) -> None:
    writer = Writer(output_dir, ownership=FileOwnership(mode=0o440))
    writer.project("payment", SNAPSHOT)
    target_dir = output_dir / "payment"
    previous = writer.generation("payment")
    (target_dir / DATA_TMP_LINK).mkdir()

    with pytest.raises(ProjectionError) as caught:
        writer.project("payment", CHANGED)

    assert str(target_dir / DATA_TMP_LINK) in str(caught.value)
    assert caught.value.target == "payment"
    assert writer.generation("payment") == previous
    assert dict(writer.read("payment") or {}) == SNAPSHOT
    names = set(os.listdir(target_dir))
    assert names == {DATA_LINK, DATA_TMP_LINK, previous, *SNAPSHOT}

    os.rmdir(target_dir / DATA_TMP_LINK)
    assert writer.project("payment", CHANGED) is True


def test_directory_at_data_link(output_dir: Path) -> None:
    writer = Writer(output_dir)
    target_dir = output_dir / "payment"
    (target_dir / DATA_LINK).mkdir(parents=True)

    with pytest.raises(ProjectionError) as caught:
        writer.project("payment", SNAPSHOT)

    assert str(target_dir / DATA_LINK) in str(caught.value)
    assert temporary_entries(target_dir, None) == []
    assert sorted(os.listdir(target_dir)) == [DATA_LINK]
