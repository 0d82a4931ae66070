"""Time per generation switch of the atomic writer against a naive per-file writer, on tmpfs.

Usage: python bench/bench_writer.py [--generations N] [--directory DIR]

For 10 and 100 secret keys of 1 KiB each, it measures:
- `writer`: Writer.project with new content each time (compare with the current generation,
  build and fsync a generation directory, switch `..data`, fsync, remove the old generation).
  The Writer runs with a grace of 0, so each switch also pays for removing the generation it
  superseded. With the default 1 s grace, a short run would defer that removal past its end.
- `unchanged`: Writer.project with the same content (read and compare only, no switch).
- `naive`: each file written to a temporary name, fsynced and renamed over its final name, then
  one fsync of the directory. Each file is atomic, the set is not, so readers can see a mix.

The table shows the median and 95th percentile in milliseconds and the writer/naive ratio of
medians. The values are fake and generated here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.writer import Writer

KEY_COUNTS = (10, 100)
VALUE_SIZE = 1024


def make_snapshot(key_count: int, number: int) -> dict[str, bytes]:
    return {
        f"secret-key-{index:03d}": f"fake-value-{number}-{index}:".encode().ljust(VALUE_SIZE, b".")
        for index in range(key_count)
    }


def write_naive(directory: Path, files: Mapping[str, bytes]) -> None:
    """Write each file through a temporary name and rename(2), without a generation directory."""
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for key, content in files.items():
            temporary = f".{key}.tmp"
            fd = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400, dir_fd=directory_fd
            )
            try:
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, key, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def time_runs(generations: int, run: Callable[[int], object]) -> list[float]:
    """Call run(number) for each generation number; return the durations in milliseconds."""
    durations = []
    for number in range(1, generations + 1):
        started = time.perf_counter_ns()
        run(number)
        durations.append((time.perf_counter_ns() - started) / 1e6)
    return durations


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(base: Path, key_count: int, generations: int) -> dict[str, list[float]]:
    snapshots = [make_snapshot(key_count, number) for number in range(generations + 1)]
    writer = Writer(base / f"writer-{key_count}", old_generation_grace_seconds=0)
    target = f"bench-{key_count}"
    writer.project(target, snapshots[0])

    def switch(number: int) -> None:
        assert writer.project(target, snapshots[number]) is True

    def unchanged(number: int) -> None:
        assert writer.project(target, snapshots[generations]) is False

    naive_dir = base / f"naive-{key_count}"
    naive_dir.mkdir()

    def naive(number: int) -> None:
        write_naive(naive_dir, snapshots[number])

    return {
        "writer": time_runs(generations, switch),
        "unchanged": time_runs(generations, unchanged),
        "naive": time_runs(generations, naive),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=500, help="switches per case")
    parser.add_argument(
        "--directory",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where to write (default /dev/shm, a tmpfs)",
    )
    arguments = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-writer-", dir=arguments.directory))
    try:
        print(
            f"directory {base}, {arguments.generations} generations per case, "
            f"values of {VALUE_SIZE} bytes, {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.2f}"
        )
        print()
        header = (
            f"{'keys':>5} {'writer p50':>11} {'p95':>7} {'unchanged p50':>14} {'p95':>7} "
            f"{'naive p50':>10} {'p95':>7} {'writer/naive':>13}"
        )
        print(header + "   (times in ms)")
        for key_count in KEY_COUNTS:
            results = measure(base, key_count, arguments.generations)
            medians = {name: statistics.median(values) for name, values in results.items()}
            p95 = {name: percentile(values, 0.95) for name, values in results.items()}
            print(
                f"{key_count:>5} {medians['writer']:>11.3f} {p95['writer']:>7.3f} "
                f"{medians['unchanged']:>14.3f} {p95['unchanged']:>7.3f} "
                f"{medians['naive']:>10.3f} {p95['naive']:>7.3f} "
                f"{medians['writer'] / medians['naive']:>13.2f}"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
