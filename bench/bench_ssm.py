"""Benchmark SSM refreshes that skip unchanged parameters, against moto's server on loopback.

For N parameters (default 10, 100 and 1,000 SecureStrings), one `ParameterStore` reads them all
once, then refreshes them several times. Each refresh is measured in calls (counted by the
store's own `secrets_agent_backend_requests_total`) and wall time, and so are, in the same run
and against the same moto server:
- ours, unchanged: nothing changed since the last refresh;
- ours, changed: C = N/10 parameters were overwritten before the refresh (not timed);
- GetParameters: every key read with GetParameters, 10 names per call, as the store read them
  before it remembered values;
- baseline: one GetParameter per key, as External Secrets Operator reads them.
Figures are medians over `--runs` refreshes (the first read is measured once); ratios are to
the baseline. moto's state is reset between sizes, so each N is measured with only its own
parameters stored.

Two properties of moto 5.2 shape the figures. It returns 10 DescribeParameters entries a page
whatever MaxResults is, so an unchanged refresh costs about N/10 calls here. The line "AWS, full
pages" gives ceil(N/50), the count when AWS fills each page of 50; it is computed, not measured,
because AWS documents its pages as best-effort. And moto scans every stored parameter for each
DescribeParameters page, so the wall time of a listing grows with N squared here: a cost of
moto, not a measure of AWS.

`make bench` runs it with `--runs 2` (about 100 s on 2 cores); alone, run
`.venv/bin/python bench/bench_ssm.py [--sizes 10,100,1000] [--runs N]`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3

from agent.declarations import Origin, StoreDeclaration
from agent.metrics import Metrics
from agent.models import StoreSpec
from agent.refs import Refs
from agent.stores import RemoteKey
from agent.stores.ssm import MAX_NAMES_PER_DESCRIBE, MAX_NAMES_PER_REQUEST, ParameterStore

STORE = "aws-ssm"
OPERATIONS = ("DescribeParameters", "GetParameters", "GetParameter")


@dataclass(frozen=True)
class Refresh:
    """Calls per operation and wall seconds of one refresh."""

    calls: dict[str, int]
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@dataclass(frozen=True)
class Row:
    """The median refresh of one way of reading, over several runs."""

    label: str
    calls: dict[str, int]
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @classmethod
    def median_of(cls, label: str, refreshes: list[Refresh]) -> Row:
        calls = {
            operation: round(statistics.median(r.calls.get(operation, 0) for r in refreshes))
            for operation in OPERATIONS
        }
        seconds = statistics.median(refresh.seconds for refresh in refreshes)
        return cls(label, {op: count for op, count in calls.items() if count}, seconds)


def start_moto() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing-fake-key-id",
            "AWS_SECRET_ACCESS_KEY": "testing-fake-secret-key",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return server, url


def reset_moto(url: str) -> None:
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST", data=b"")
    urllib.request.urlopen(request, timeout=10).close()


def open_parameter_store(metrics: Metrics, refs_dir: str) -> ParameterStore:
    spec = StoreSpec.model_validate(
        {"provider": {"aws": {"service": "ParameterStore", "region": "us-east-1"}}}
    )
    declaration = StoreDeclaration(
        kind="SecretStore", name=STORE, spec=spec, origin=Origin("bench_ssm.py", 1)
    )
    return ParameterStore(declaration, refs=Refs(refs_dir), metrics=metrics)


def counted(metrics: Metrics) -> dict[str, int]:
    """Requests the store sent so far, by operation."""
    totals: dict[str, int] = {}
    for family in metrics.registry.collect():
        if family.name != "secrets_agent_backend_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["store"] == STORE:
                operation = sample.labels["operation"]
                totals[operation] = totals.get(operation, 0) + int(sample.value)
    return totals


def measure_store(metrics: Metrics, action: Callable[[], object]) -> Refresh:
    before = counted(metrics)
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    after = counted(metrics)
    calls = {op: after.get(op, 0) - before.get(op, 0) for op in after}
    return Refresh({op: count for op, count in calls.items() if count}, seconds)


def measure_client(operation: str, calls: int, action: Callable[[], object]) -> Refresh:
    started = time.perf_counter()
    action()
    return Refresh({operation: calls}, time.perf_counter() - started)


def bench_size(size: int, *, runs: int, url: str, refs_dir: str) -> list[Row]:
    reset_moto(url)
    client = boto3.client("ssm")
    names = [f"/bench/n{size}/key-{index:04d}" for index in range(size)]
    for index, name in enumerate(names):
        client.put_parameter(Name=name, Value=f"fake-bench-{index}-0", Type="SecureString")
    keys = [RemoteKey(name) for name in names]
    metrics = Metrics()
    store = open_parameter_store(metrics, refs_dir)
    changes = max(1, size // 10)

    def read_every_key() -> None:
        for start in range(0, size, MAX_NAMES_PER_REQUEST):
            batch = names[start : start + MAX_NAMES_PER_REQUEST]
            client.get_parameters(Names=batch, WithDecryption=True)

    def read_each_key() -> None:
        for name in names:
            client.get_parameter(Name=name, WithDecryption=True)

    try:
        first = measure_store(metrics, lambda: store.fetch(keys))
        unchanged, changed, batched, baseline = [], [], [], []
        for run in range(1, runs + 1):
            unchanged.append(measure_store(metrics, lambda: store.fetch(keys)))
            # Overwrite C parameters spread over the whole range, then refresh.
            for name in names[run % 10 :: 10][:changes]:
                client.put_parameter(
                    Name=name, Value=f"fake-bench-{run}", Type="SecureString", Overwrite=True
                )
            changed.append(measure_store(metrics, lambda: store.fetch(keys)))
            batched.append(measure_client("GetParameters", math.ceil(size / 10), read_every_key))
            baseline.append(measure_client("GetParameter", size, read_each_key))
    finally:
        store.close()

    return [
        Row.median_of("ours, first read (creates the client)", [first]),
        Row.median_of("ours, unchanged", unchanged),
        Row.median_of(f"ours, {changes} changed", changed),
        Row("AWS, full pages, unchanged (computed)", _full_pages(size), math.nan),
        Row.median_of("GetParameters, every key", batched),
        Row.median_of("baseline, GetParameter per key", baseline),
    ]


def _full_pages(size: int) -> dict[str, int]:
    return {"DescribeParameters": math.ceil(size / MAX_NAMES_PER_DESCRIBE)}


def print_rows(size: int, rows: list[Row], runs: int) -> None:
    baseline = rows[-1]
    print(f"\nN = {size} parameters, per refresh after the first read (median of {runs})")
    print(f"{'':40} {'calls':>6} {'wall s':>8} {'calls/base':>11} {'wall/base':>10}  operations")
    for row in rows:
        wall = "" if math.isnan(row.seconds) else f"{row.seconds:8.3f}"
        wall_ratio = "" if math.isnan(row.seconds) else f"{row.seconds / baseline.seconds:10.3f}"
        operations = ", ".join(f"{count} {op}" for op, count in row.calls.items())
        print(
            f"{row.label:40} {row.total:6d} {wall:>8} {row.total / baseline.total:11.3f} "
            f"{wall_ratio:>10}  {operations}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="10,100,1000", help="comma-separated parameter counts to measure"
    )
    parser.add_argument("--runs", type=int, default=3, help="refreshes measured per size")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server, url = start_moto()
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as refs_dir:
            for size in (int(text) for text in args.sizes.split(",")):
                rows = bench_size(size, runs=args.runs, url=url, refs_dir=refs_dir)
                print_rows(size, rows, args.runs)
    finally:
        server.stop()
    print(f"\nbench_ssm.py took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
