"""Projection layout, file mode and owner, unchanged content, key changes, link repair, adoption."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from agent.writer import DATA_LINK, DATA_TMP_LINK, FileOwnership, Writer

SNAPSHOT = {"db-password": b"fake-db-password-1", "api-token": b"fake-api-token-1"}


def generation_dirs(target_dir: Path) -> list[str]:
    return sorted(name for name in os.listdir(target_dir) if name.startswith("..2"))


def lstat_times(path: Path) -> tuple[int, int]:
    status = os.lstat(path)
    return status.st_mtime_ns, status.st_ctime_ns


def test_projection_layout(output_dir: Path) -> None:
    writer = Writer(output_dir)
    assert writer.project("payment", SNAPSHOT) is True

    target_dir = output_dir / "payment"
    generation = writer.generation("payment")
    assert generation is not None
    assert generation_dirs(target_dir) == [generation]
    assert os.readlink(target_dir / DATA_LINK) == generation
    assert sorted(os.listdir(target_dir)) == sorted([DATA_LINK, generation, *SNAPSHOT])
    for key, value in SNAPSHOT.items():
        assert os.readlink(target_dir / key) == f"{DATA_LINK}/{key}"
        assert (target_dir / key).read_bytes() == value
    assert stat.S_IMODE(os.stat(target_dir / generation).st_mode) == 0o755


def test_default_mode_and_owner(output_dir: Path) -> None:
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)

    status = os.stat(output_dir / "payment" / "db-password")
    assert stat.S_IMODE(status.st_mode) == 0o400
    assert status.st_uid == os.geteuid()
    assert status.st_gid == os.getegid()


def test_umask_does_not_change_modes(tmpfs_dir: Path) -> None:
    previous = os.umask(0o077)
    try:
        writer = Writer(tmpfs_dir / "new" / "out", ownership=FileOwnership(mode=0o444))
        writer.project("payment", SNAPSHOT)
    finally:
        os.umask(previous)

    target_dir = tmpfs_dir / "new" / "out" / "payment"
    assert stat.S_IMODE(os.stat(target_dir.parent).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target_dir).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target_dir / DATA_LINK).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target_dir / "api-token").st_mode) == 0o444


def test_uid_gid_applied(output_dir: Path) -> None:
    assert os.geteuid() == 0, "this test sets file owners and must run as root"
    writer = Writer(output_dir, ownership=FileOwnership(mode=0o440, uid=1234, gid=5678))
    writer.project("payment", SNAPSHOT)

    for key in SNAPSHOT:
        status = os.stat(output_dir / "payment" / key)
        assert stat.S_IMODE(status.st_mode) == 0o440
        assert status.st_uid == 1234
        assert status.st_gid == 5678
    contents = writer.read("payment")
    assert contents is not None
    assert contents.ownership == FileOwnership(mode=0o440, uid=1234, gid=5678)


def can_read_as(path: Path, *, uid: int, gid: int) -> bool:
    """Return whether `cat` running as uid:gid, with no supplementary groups, can read `path`."""
    cat = shutil.which("cat")
    assert cat is not None
    completed = subprocess.run(
        [cat, str(path)],
        user=uid,
        group=gid,
        extra_groups=[],
        stdout=subprocess.DEVNULL,  # the file's fake value is not needed
        stderr=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    return completed.returncode == 0


def test_group_can_read_others_cannot(output_dir: Path) -> None:
    assert os.geteuid() == 0, "this test switches uid for its readers and must run as root"
    writer = Writer(output_dir, ownership=FileOwnership(mode=0o440, gid=4321))
    writer.project("payment", SNAPSHOT)
    visible = output_dir / "payment" / "db-password"

    assert can_read_as(visible, uid=9999, gid=4321)
    assert not can_read_as(visible, uid=9999, gid=9999)


def test_unchanged_makes_no_generation(output_dir: Path) -> None:
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)
    target_dir = output_dir / "payment"
    generation = writer.generation("payment")
    assert generation is not None
    watched = [target_dir, target_dir / DATA_LINK, target_dir / generation]
    watched += [target_dir / key for key in SNAPSHOT]
    watched += [target_dir / generation / key for key in SNAPSHOT]
    before = {path: lstat_times(path) for path in watched}

    assert writer.project("payment", dict(SNAPSHOT)) is False

    assert writer.generation("payment") == generation
    assert generation_dirs(target_dir) == [generation]
    for path in watched:
        assert lstat_times(path) == before[path], path.name


@pytest.mark.parametrize(
    "changed",
    [FileOwnership(mode=0o440), FileOwnership(uid=1234), FileOwnership(gid=5678)],
)
def test_ownership_change_is_change(output_dir: Path, changed: FileOwnership) -> None:
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)
    first = writer.generation("payment")

    assert writer.project("payment", SNAPSHOT, ownership=changed) is True
    assert writer.generation("payment") != first
    assert writer.project("payment", SNAPSHOT, ownership=changed) is False
    assert writer.project("payment", SNAPSHOT) is True


def test_value_change_switches(output_dir: Path) -> None:
    writer = Writer(output_dir, old_generation_grace_seconds=0)
    writer.project("payment", SNAPSHOT)
    first = writer.generation("payment")
    changed = {**SNAPSHOT, "db-password": b"fake-db-password-2"}

    assert writer.project("payment", changed) is True

    target_dir = output_dir / "payment"
    assert (target_dir / "db-password").read_bytes() == b"fake-db-password-2"
    assert writer.generation("payment") != first
    assert generation_dirs(target_dir) == [writer.generation("payment")]


def test_superseded_generation_kept_for_grace(output_dir: Path) -> None:
    writer = Writer(output_dir, old_generation_grace_seconds=0.3)
    writer.project("payment", SNAPSHOT)
    first = writer.generation("payment")
    assert first is not None
    target_dir = output_dir / "payment"
    changed = {**SNAPSHOT, "db-password": b"fake-db-password-2"}

    assert writer.project("payment", changed) is True
    assert writer.project("payment", changed) is False
    assert (target_dir / first / "db-password").read_bytes() == SNAPSHOT["db-password"]
    assert generation_dirs(target_dir) == sorted([first, writer.generation("payment")])

    time.sleep(0.35)
    assert writer.project("payment", changed) is False
    assert generation_dirs(target_dir) == [writer.generation("payment")]


def test_negative_grace_rejected(output_dir: Path) -> None:
    with pytest.raises(ValueError):
        Writer(output_dir, old_generation_grace_seconds=-1)


def test_removed_and_new_keys(output_dir: Path) -> None:
    writer = Writer(output_dir)
    writer.project("payment", {"old-key": b"fake-1", "kept-key": b"fake-2"})

    assert writer.project("payment", {"kept-key": b"fake-2", "new-key": b"fake-3"}) is True

    target_dir = output_dir / "payment"
    assert not os.path.lexists(target_dir / "old-key")
    assert (target_dir / "new-key").read_bytes() == b"fake-3"
    assert (target_dir / "kept-key").read_bytes() == b"fake-2"
    assert sorted(os.listdir(target_dir / DATA_LINK)) == ["kept-key", "new-key"]


def test_empty_snapshot(output_dir: Path) -> None:
    writer = Writer(output_dir, old_generation_grace_seconds=0)
    writer.project("payment", SNAPSHOT)

    assert writer.project("payment", {}) is True
    assert writer.project("payment", {}) is False

    target_dir = output_dir / "payment"
    assert sorted(os.listdir(target_dir)) == sorted([DATA_LINK, writer.generation("payment")])
    contents = writer.read("payment")
    assert contents is not None
    assert dict(contents) == {}


def test_missing_link_repaired(output_dir: Path) -> None:
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)
    generation = writer.generation("payment")
    target_dir = output_dir / "payment"
    os.unlink(target_dir / "db-password")

    assert writer.project("payment", SNAPSHOT) is False

    assert writer.generation("payment") == generation
    assert os.readlink(target_dir / "db-password") == f"{DATA_LINK}/db-password"


def test_wrong_link_repaired(output_dir: Path) -> None:
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)
    target_dir = output_dir / "payment"
    os.unlink(target_dir / "db-password")
    os.symlink(f"{DATA_LINK}/api-token", target_dir / "db-password")

    assert writer.project("payment", SNAPSHOT) is False

    assert (target_dir / "db-password").read_bytes() == SNAPSHOT["db-password"]


def test_planted_file_replaced_by_link(output_dir: Path) -> None:
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)
    target_dir = output_dir / "payment"
    os.unlink(target_dir / "db-password")
    (target_dir / "db-password").write_bytes(b"planted-by-application")

    assert writer.project("payment", SNAPSHOT) is False

    assert os.readlink(target_dir / "db-password") == f"{DATA_LINK}/db-password"
    assert (target_dir / "db-password").read_bytes() == SNAPSHOT["db-password"]


def test_nested_keys(output_dir: Path) -> None:
    writer = Writer(output_dir, allow_nested=True)
    files = {
        "tls/server.pem": b"fake-pem-1",
        "tls/ca/root.pem": b"fake-pem-2",
        "tls/ca/sub.pem": b"fake-pem-3",
        "db-password": b"fake-db-password-1",
    }
    assert writer.project("payment", files) is True

    target_dir = output_dir / "payment"
    assert os.readlink(target_dir / "tls") == f"{DATA_LINK}/tls"
    assert (target_dir / "tls" / "ca" / "sub.pem").read_bytes() == b"fake-pem-3"
    assert stat.S_IMODE(os.stat(target_dir / "tls" / "ca").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target_dir / "tls" / "ca" / "root.pem").st_mode) == 0o400
    assert dict(writer.read("payment") or {}) == files
    assert writer.project("payment", files) is False

    smaller = {"tls/server.pem": b"fake-pem-1"}
    assert writer.project("payment", smaller) is True
    assert not (target_dir / "tls" / "ca").exists()
    assert not os.path.lexists(target_dir / "db-password")


def test_setgid_directory_group_adopted(output_dir: Path) -> None:
    # An emptyDir with an fsGroup is set-group-ID: new entries take its group.
    target_dir = output_dir / "payment"
    target_dir.mkdir(parents=True)
    os.chown(target_dir, -1, 4321)
    os.chmod(target_dir, 0o2775)
    writer = Writer(output_dir)

    assert writer.project("payment", SNAPSHOT) is True

    assert os.stat(target_dir / "db-password").st_gid == 4321
    assert writer.project("payment", SNAPSHOT) is False


def test_key_becomes_directory(output_dir: Path) -> None:
    writer = Writer(output_dir, allow_nested=True)
    writer.project("payment", {"tls": b"fake-pem-bundle"})

    assert writer.project("payment", {"tls/server.pem": b"fake-pem-1"}) is True

    target_dir = output_dir / "payment"
    assert os.readlink(target_dir / "tls") == f"{DATA_LINK}/tls"
    assert (target_dir / "tls" / "server.pem").read_bytes() == b"fake-pem-1"


def test_new_writer_adopts_generation(output_dir: Path) -> None:
    init_writer = Writer(output_dir, ownership=FileOwnership(mode=0o440, gid=5678))
    init_writer.project("payment", SNAPSHOT)
    generation = init_writer.generation("payment")

    sidecar_writer = Writer(output_dir, ownership=FileOwnership(mode=0o440, gid=5678))
    contents = sidecar_writer.read("payment")

    assert contents is not None
    assert dict(contents) == SNAPSHOT
    assert contents.name == generation
    assert contents.ownership == FileOwnership(mode=0o440, uid=os.geteuid(), gid=5678)
    assert "fake-db-password-1" not in repr(contents)
    assert sidecar_writer.project("payment", SNAPSHOT) is False


def test_read_without_generation(output_dir: Path) -> None:
    writer = Writer(output_dir)
    assert writer.read("payment") is None
    assert writer.generation("payment") is None

    (output_dir / "payment").mkdir()
    assert writer.read("payment") is None

    os.symlink("not-a-generation", output_dir / "payment" / DATA_LINK)
    assert writer.read("payment") is None
    assert writer.generation("payment") is None


def test_crash_leftovers_removed(output_dir: Path) -> None:
    writer = Writer(output_dir)
    writer.project("payment", SNAPSHOT)
    target_dir = output_dir / "payment"
    orphan = target_dir / "..2020_01_01_00_00_00.0rphan"
    (orphan / "sub").mkdir(parents=True)
    (orphan / "sub" / "db-password").write_bytes(b"fake-old")
    os.symlink(orphan.name, target_dir / DATA_TMP_LINK)
    os.symlink("..data/x", target_dir / "..link_tmp.abc123")
    os.symlink(f"{DATA_LINK}/removed-key", target_dir / "removed-key")
    (target_dir / "application-notes.txt").write_bytes(b"not ours")
    os.symlink("elsewhere", target_dir / "application-link")
    (target_dir / "..application-reserved").mkdir()

    restarted = Writer(output_dir)  # leftovers of a crash meet a new process
    assert restarted.project("payment", SNAPSHOT) is False

    names = set(os.listdir(target_dir))
    assert orphan.name not in names
    assert DATA_TMP_LINK not in names
    assert "..link_tmp.abc123" not in names
    assert "removed-key" not in names
    assert "application-notes.txt" in names
    assert "application-link" in names
    assert "..application-reserved" in names


def test_output_dir_link_resolved_once(tmpfs_dir: Path) -> None:
    real = tmpfs_dir / "volume"
    real.mkdir()
    os.symlink(real, tmpfs_dir / "mount-link")

    writer = Writer(tmpfs_dir / "mount-link")

    assert writer.output_dir == real
    writer.project("payment", SNAPSHOT)
    assert (real / "payment" / "api-token").read_bytes() == SNAPSHOT["api-token"]


def test_large_value_round_trip(output_dir: Path) -> None:
    writer = Writer(output_dir)
    large = bytes(range(256)) * 4096  # 1 MiB of fake binary data

    writer.project("payment", {"bundle.bin": large})

    assert (output_dir / "payment" / "bundle.bin").read_bytes() == large
    assert writer.project("payment", {"bundle.bin": large}) is False
