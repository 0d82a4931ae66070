"""Process helpers shared by the footprint benchmarks (`bench_once.py`, `bench_run_rss.py`).

- `bytecode_environment` makes every measured process read cached bytecode from one temporary
  directory, as the image does after its `compileall` step, instead of compiling the agent's
  modules at each start (this tree runs with PYTHONDONTWRITEBYTECODE=1).
- `extract_revision` writes the `agent` package of an earlier git revision into a directory, so
  a benchmark can run the previous code next to the current one in the same run.
- `ProcessSample` reads the memory, CPU time and context switches of a running process from
  /proc, as a kubelet's metrics and `ps` see them.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def bytecode_environment(environment: dict[str, str], cache: Path) -> dict[str, str]:
    """Return `environment` with Python's bytecode cache moved to `cache` and turned on.

    The first run of each program compiles and writes its bytecode there; later runs read it.
    The source tree is not touched.
    """
    changed = {key: value for key, value in environment.items() if key != "PYTHONDONTWRITEBYTECODE"}
    changed["PYTHONPYCACHEPREFIX"] = str(cache)
    return changed


def extract_revision(revision: str, directory: Path) -> Path:
    """Write the `agent` package at git `revision` into `directory`; return `directory`.

    Running `python -m agent` with `directory` as the working directory then imports that
    version, because the working directory comes first on sys.path.
    """
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", "--format=tar", revision, "agent"],
        check=True,
        capture_output=True,
    ).stdout
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return directory


@dataclass(frozen=True)
class ProcessSample:
    """Memory (MiB), CPU time (s) and voluntary context switches of a process at one moment."""

    rss: float
    hwm: float
    anonymous: float
    file_backed: float
    cpu_seconds: float
    switches: int

    @classmethod
    def read(cls, pid: int) -> ProcessSample:
        """Read /proc/<pid>/status and /proc/<pid>/stat, and sum switches over its threads."""
        status = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            status[name] = value.split()
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Fields after the command name, which is in parentheses and may contain spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])
        switches = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                text = (task / "status").read_text()
            except FileNotFoundError:  # the thread ended between listing and reading
                continue
            for line in text.splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    switches += int(line.split()[1])
        return cls(
            rss=int(status["VmRSS"][0]) / 1024,
            hwm=int(status["VmHWM"][0]) / 1024,
            anonymous=int(status["RssAnon"][0]) / 1024,
            file_backed=int(status["RssFile"][0]) / 1024,
            cpu_seconds=(utime + stime) / CLOCK_TICKS,
            switches=switches,
        )
