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
def tmpfs_dir() -> Iterator[Path]:
    """A fresh directory on /dev/shm (tmpfs), or in the system temporary directory without it.

    Its mode is 0755 so that a reader running with another uid can traverse it. pytest's
    tmp_path would not do for that: its parent directories are 0700.
    """
    base = SHARED_MEMORY if SHARED_MEMORY.is_dir() else None
    directory = Path(tempfile.mkdtemp(prefix="writer-test-", dir=base))
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
