"""A reader in another process never sees a mixed or partial snapshot across 10,000 switches.

The writer switches generations as fast as it can while a reader process (real concurrency, not
a thread under the GIL) reads the target the two ways an application does:
(a) resolve `..data` once and read every file through that generation, and
(b) open a visible name, which resolves `..data` on each open.

Every file of generation N contains `gen-N`, so a read that mixes generations is detected. A
file is padded to a fixed size and carries its secret key, so a partial or misplaced file is
detected too. Failures report counts only, never file contents.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from collections import Counter
from pathlib import Path

from agent.writer import DATA_LINK, Writer

GENERATIONS = 10_000
STABLE_KEYS = ("stable-database-password", "stable-api-token")
FILE_SIZE = 200
MIN_READS = 100


def keys_of_generation(number: int) -> list[str]:
    """Secret keys of generation `number`: two in every one, one rotating, one now and then."""
    keys = [*STABLE_KEYS, f"rotating-{number % 3}"]
    if number % 5 == 0:
        keys.append("every-fifth")
    return keys


def fake_content(number: int, key: str) -> bytes:
    return f"gen-{number:08d}:{key}:".encode().ljust(FILE_SIZE, b".")


def snapshot(number: int) -> dict[str, bytes]:
    return {key: fake_content(number, key) for key in keys_of_generation(number)}


def parse_number(content: bytes, key: str) -> int | None:
    """Return the generation number in `content`, or None when it is not a whole file of `key`."""
    if len(content) != FILE_SIZE or not content.startswith(b"gen-"):
        return None
    try:
        number = int(content[4:12])
    except ValueError:
        return None
    if content != fake_content(number, key):
        return None
    return number


def read_through_generation(target_dir: str, counts: Counter[str]) -> int | None:
    """Read every file of the generation `..data` points to now; return its number or None.

    Returns None, after counting why, when the generation was removed during the read (the
    caller retries) or when the read was wrong (mixed, partial, wrong keys).
    """
    try:
        generation = os.readlink(os.path.join(target_dir, DATA_LINK))
        directory = os.path.join(target_dir, generation)
        with open(os.path.join(directory, STABLE_KEYS[0]), "rb") as file:
            first = parse_number(file.read(), STABLE_KEYS[0])
        if first is None:
            counts["consistent_partial"] += 1
            return None
        for key in keys_of_generation(first)[1:]:
            with open(os.path.join(directory, key), "rb") as file:
                number = parse_number(file.read(), key)
            if number is None:
                counts["consistent_partial"] += 1
                return None
            if number != first:
                counts["consistent_mixed"] += 1
                return None
        names = set(os.listdir(directory))
        still_current = os.readlink(os.path.join(target_dir, DATA_LINK)) == generation
    except FileNotFoundError:
        counts["consistent_retries_enoent"] += 1
        return None

    # A generation being removed loses files one by one, so its listing is only meaningful
    # while `..data` still points to it.
    if still_current and names != set(keys_of_generation(first)):
        counts["consistent_wrong_keys"] += 1
    return first


def reader_process(target_dir: str, stop, ready, results) -> None:
    """Read the target both ways until `stop` is set; put the counts on `results`."""
    counts: Counter[str] = Counter()
    seen_generations: set[int] = set()
    last_consistent = -1
    last_visible = dict.fromkeys(STABLE_KEYS, -1)
    ready.set()
    while not stop.is_set():
        number = read_through_generation(target_dir, counts)
        if number is not None:
            counts["consistent_reads"] += 1
            seen_generations.add(number)
            if number < last_consistent:
                counts["consistent_went_back"] += 1
            last_consistent = number

        for key in STABLE_KEYS:
            try:
                with open(os.path.join(target_dir, key), "rb") as file:
                    content = file.read()
            except FileNotFoundError:
                counts["visible_missing"] += 1
                continue
            number = parse_number(content, key)
            if number is None:
                counts["visible_partial"] += 1
                continue
            counts["visible_reads"] += 1
            if number < last_visible[key]:
                counts["visible_went_back"] += 1
            last_visible[key] = number
    counts["distinct_generations_seen"] = len(seen_generations)
    results.put(dict(counts))


def test_reader_never_sees_mix(output_dir: Path) -> None:
    writer = Writer(output_dir)
    writer.project("payment", snapshot(0))
    target_dir = str(output_dir / "payment")

    context = multiprocessing.get_context("spawn")
    stop, ready, results = context.Event(), context.Event(), context.Queue()
    reader = context.Process(target=reader_process, args=(target_dir, stop, ready, results))
    reader.start()
    try:
        assert ready.wait(timeout=60), "reader process did not start"
        switched = sum(writer.project("payment", snapshot(n)) for n in range(1, GENERATIONS + 1))
    finally:
        stop.set()
        try:
            counts = results.get(timeout=60)
        except queue.Empty:
            counts = None
        reader.join(timeout=30)
        if reader.is_alive():
            reader.kill()

    assert counts is not None, "reader process returned no counts"
    summary = f"switched={switched} reader counts={sorted(counts.items())}"
    assert switched == GENERATIONS, summary
    assert counts.get("consistent_mixed", 0) == 0, summary
    assert counts.get("consistent_partial", 0) == 0, summary
    assert counts.get("consistent_wrong_keys", 0) == 0, summary
    assert counts.get("consistent_went_back", 0) == 0, summary
    assert counts.get("visible_missing", 0) == 0, summary
    assert counts.get("visible_partial", 0) == 0, summary
    assert counts.get("visible_went_back", 0) == 0, summary
    # The reader must really have run during the switches, not only before or after them.
    assert counts.get("consistent_reads", 0) >= MIN_READS, summary
    assert counts.get("visible_reads", 0) >= MIN_READS, summary
    assert counts.get("distinct_generations_seen", 0) >= 10, summary

    final = writer.read("payment")
    assert final is not None
    assert dict(final) == snapshot(GENERATIONS)

    # Superseded generations stay for the grace period; the next projection after it removes them.
    time.sleep(writer.old_generation_grace_seconds)
    assert writer.project("payment", snapshot(GENERATIONS)) is False
    generations = [name for name in os.listdir(target_dir) if name.startswith("..2")]
    assert generations == [writer.generation("payment")]
