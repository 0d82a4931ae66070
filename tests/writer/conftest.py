"""Fixtures for the writer tests: an output directory on tmpfs, as the agent's volume is."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_MEMORY = Path("/dev/shm")


@pytest.fixture
def tmpfs_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory on /dev/shm (tmpfs) when present, else pytest's tmp_path.

    Its mode is 0755 so that a reader running with another uid can traverse it.
    """
    if not SHARED_MEMORY.is_dir():
        tmp_path.chmod(0o755)
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix="writer-test-", dir=SHARED_MEMORY))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def output_dir(tmpfs_dir: Path) -> Path:
    """The writer's output directory inside `tmpfs_dir`, not created yet."""
    return tmpfs_dir / "out"


@pytest.fixture
def outside_dir(tmpfs_dir: Path) -> Path:
    """A directory next to the output directory that no projection may touch."""
    directory = tmpfs_dir / "outside"
    directory.mkdir()
    os.chmod(directory, 0o755)
    return directory
