"""A file group the agent may not set: the error names group membership as the fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Run by an unprivileged process (uid and gid 65534 when the tests run as root), which requests
# group 1000 without being a member of it.
CHILD = """
import os, sys
from agent.writer import FileOwnership, ProjectionError, Writer
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
writer = Writer(sys.argv[1], ownership=FileOwnership(mode=0o440, gid=1000))
try:
    writer.project("app", {"password": b"fake-db-password-1"})
except ProjectionError as error:
    print(error)
"""


def test_foreign_group_names_fs_group() -> None:
    assert 1000 not in os.getgroups() or os.geteuid() == 0
    # Not under pytest's tmp_path: its parent is private to the user running the tests.
    output = Path(tempfile.mkdtemp(prefix="secrets-agent-group-"))
    try:
        os.chmod(output, 0o777)
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(output)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        shutil.rmtree(output, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    message = done.stdout
    assert "set owner of" in message
    assert "fsGroup" in message
    assert "CAP_CHOWN" in message
    assert "fake-db-password-1" not in message + done.stderr
