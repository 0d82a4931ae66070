"""Benchmark the controller: 1,000 ExternalSecrets over 100 SSM keys, with and without noise.

`--mode refresh` (the default) runs the whole controller (kopf, the shared read cache, the Secret
writes) against the Kubernetes API emulator and moto's server, both on loopback, and prints:
- the initial sync: wall time until every Secret exists, and reconciles per second;
- per refresh interval after that: SSM requests and parameter names read, next to the
  baseline of one GetParameter per ExternalSecret key per interval (External Secrets Operator's
  way), and reconciles per second;
- the wall time of that baseline's 1,000 GetParameter calls against the same moto server.

Names read are counted by wrapping each store's `fetch` (the names it is asked for); requests
are counted by the controller's own `secrets_agent_backend_requests_total`.

`--mode unrelated` measures what unrelated Secrets (service-account tokens and other
applications' Secrets, without the managed label) cost the controller. It runs three scenarios
one after another, each with a fresh API emulator and the controller in a process of its own:
- baseline: the ExternalSecrets alone;
- unrelated: the same after `--unrelated-secrets` (default 5,000) Secrets of 1 to 50 KiB were
  created across 10 other namespaces, with `--churn` of them modified during the refresh
  interval;
- no selector: as unrelated, but the controller's Secret watch has no label selector, which is
  what a controller without the server-side selector would receive and keep in memory.
For each it prints the initial sync (wall time from /healthz answering until every Secret exists,
reconciles per second, CPU seconds per wall second of the controller and of the emulator),
VmRSS and VmHWM of the controller process after the initial sync and after one refresh
interval, the SSM requests, and the Secret objects and bytes that the emulator's lists and
watches sent to the controller; then the ratios to the baseline.
`--quick` shrinks every size for a smoke run.

Run it with `make bench` or `.venv/bin/python bench/bench_controller.py [--mode MODE]
[--external-secrets N] [--keys N] [--interval SECONDS] [--intervals N] [--unrelated-secrets N]
[--churn N] [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import kopf

from agent.controller.handlers import Controller
from agent.controller.settings import ControllerSettings
from agent.stores import open_store

API = "/apis/secrets-agent.io/v1alpha1/namespaces/bench"


class CountingStore:
    """Wraps a store to count the remote keys its `fetch` is asked for."""

    names_read = 0

    def __init__(self, store: Any) -> None:
        self._store = store

    def fetch(self, keys: Any) -> Any:
        CountingStore.names_read += len(keys)
        return self._store.fetch(keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def opener(declaration: Any, *, refs: Any, metrics: Any) -> Any:
    return CountingStore(open_store(declaration, refs=refs, metrics=metrics))


def start_moto() -> Any:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing-fake-key-id",
            "AWS_SECRET_ACCESS_KEY": "testing-fake-secret-key",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return server


def requests(controller: Controller) -> dict[str, float]:
    """Return the controller's SSM requests so far by operation, whatever their result."""
    return requests_by_operation(
        sample
        for family in controller.metrics.backend_requests.collect()
        for sample in family.samples
    )


def requests_by_operation(samples: Any) -> dict[str, float]:
    """Sum `secrets_agent_backend_requests_total` samples by operation."""
    counts: dict[str, float] = {}
    for sample in samples:
        if sample.name == "secrets_agent_backend_requests_total":
            operation = sample.labels["operation"]
            counts[operation] = counts.get(operation, 0.0) + sample.value
    return counts


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: count - before.get(name, 0.0) for name, count in after.items()}


def describe(counts: dict[str, float]) -> str:
    """Render request counts as `12 SSM requests (2 DescribeParameters, 10 GetParameters)`."""
    parts = ", ".join(f"{counts[name]:.0f} {name}" for name in sorted(counts))
    return f"{sum(counts.values()):.0f} SSM requests ({parts or 'none'})"


def reconciles(controller: Controller) -> float:
    counter = controller.metrics.reconcile_total
    return sum(counter.labels(result)._value.get() for result in ("success", "unchanged", "error"))


async def create_objects(session: aiohttp.ClientSession, args: argparse.Namespace) -> None:
    store = {
        "apiVersion": "secrets-agent.io/v1alpha1",
        "kind": "SecretStore",
        "metadata": {"name": "aws-ssm"},
        "spec": {"provider": {"aws": {"service": "ParameterStore", "region": "us-east-1"}}},
    }
    async with session.post(f"{API}/secretstores", json=store) as response:
        assert response.status == 201, response.status
    for index in range(args.external_secrets):
        body = {
            "apiVersion": "secrets-agent.io/v1alpha1",
            "kind": "ExternalSecret",
            "metadata": {"name": f"app-{index}"},
            "spec": {
                "refreshInterval": f"{args.interval}s",
                "secretStoreRef": {"name": "aws-ssm"},
                "data": [
                    {"secretKey": "value", "remoteRef": {"key": f"/bench/key-{index % args.keys}"}}
                ],
            },
        }
        async with session.post(f"{API}/externalsecrets", json=body) as response:
            assert response.status == 201, response.status


def baseline(args: argparse.Namespace) -> float:
    """Send one GetParameter per ExternalSecret key, as External Secrets Operator reads them."""
    client = boto3.client("ssm", region_name="us-east-1")
    started = time.perf_counter()
    for index in range(args.external_secrets):
        client.get_parameter(Name=f"/bench/key-{index % args.keys}", WithDecryption=True)
    return time.perf_counter() - started


async def run(args: argparse.Namespace) -> None:
    client = boto3.client("ssm", region_name="us-east-1")
    for index in range(args.keys):
        client.put_parameter(
            Name=f"/bench/key-{index}", Value=f"fake-bench-value-{index}", Type="SecureString"
        )
    # The emulator gets a process of its own, as an API server would, so that it does not share
    # the controller's interpreter lock.
    emulator = subprocess.Popen(
        [sys.executable, "-m", "agent.testing.kubernetes", "--namespace", "bench"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert emulator.stdout is not None
        url = emulator.stdout.readline().strip()
        async with aiohttp.ClientSession(base_url=url) as session:
            await create_objects(session, args)
            await measure(session, url, args)
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    seconds = baseline(args)
    print(
        f"\nbaseline: {args.external_secrets} GetParameter calls took {seconds:.1f} s "
        f"({args.external_secrets / seconds:.0f} calls/s) against the same moto server"
    )


async def managed_secrets(session: aiohttp.ClientSession) -> int:
    params = {"labelSelector": "secrets-agent.io/managed=true"}
    async with session.get("/api/v1/namespaces/bench/secrets", params=params) as response:
        return len((await response.json())["items"])


async def measure(session: aiohttp.ClientSession, url: str, args: argparse.Namespace) -> None:
    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    settings = ControllerSettings(
        listen="127.0.0.1:0", standalone=True, cache_seconds=args.interval / 2
    )
    controller = Controller(settings, login=login, opener=opener)
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=asyncio.run, args=(controller.run(stop_flag=stop, ready_flag=ready),)
    )
    started = time.perf_counter()
    thread.start()
    await asyncio.to_thread(ready.wait, 30)
    reported = time.perf_counter()
    while (synced := await managed_secrets(session)) < args.external_secrets:
        if time.perf_counter() - reported > 30:
            reported = time.perf_counter()
            waited = reported - started
            print(f"  {synced} Secrets after {waited:.0f} s", flush=True)
        await asyncio.sleep(0.5)
    initial = time.perf_counter() - started
    print(f"ExternalSecrets: {args.external_secrets}, distinct SSM keys: {args.keys}")
    print(
        f"initial sync: {initial:.1f} s, {reconciles(controller) / initial:.1f} reconciles/s, "
        f"{describe(requests(controller))}, {CountingStore.names_read} names read",
        flush=True,
    )
    print(
        f"\nper interval of {args.interval:g} s | SSM requests | names read | "
        "baseline GetParameter calls | reconciles/s"
    )
    for number in range(1, args.intervals + 1):
        calls, names, runs = requests(controller), CountingStore.names_read, reconciles(controller)
        begun = time.perf_counter()
        await asyncio.sleep(args.interval)
        elapsed = time.perf_counter() - begun
        print(
            f"interval {number} | {describe(difference(requests(controller), calls))} | "
            f"{CountingStore.names_read - names} | {args.external_secrets} | "
            f"{(reconciles(controller) - runs) / elapsed:.1f}",
            flush=True,
        )
    stop.set()
    await asyncio.to_thread(thread.join, 60)


MANAGED_SELECTOR = "secrets-agent.io/managed=true"
# The benchmark counts Secrets with this spelling of the same selector, so that the emulator's
# traffic counts keep its own polling apart from the controller's lists and watches.
POLL_SELECTOR = "secrets-agent.io/managed in (true)"
UNRELATED_NAMESPACES = [f"team-{index}" for index in range(10)]

# Runs the controller in a fresh interpreter, so that its memory figures are its own, because
# the benchmark process also runs moto's server. Logging is off, as in the refresh mode.
CONTROLLER_LAUNCHER = """
import asyncio, logging, sys
import kopf
from agent.controller.handlers import Controller
from agent.controller.settings import ControllerSettings

url, listen, cache_seconds, selector = sys.argv[1:5]
logging.basicConfig(level=logging.ERROR)

async def login():
    return kopf.ConnectionInfo(server=url, insecure=True)

settings = ControllerSettings(listen=listen, standalone=True, cache_seconds=float(cache_seconds))
controller = Controller(settings, login=login)
if selector == "none":
    controller.kopf_settings.watching.label_selectors.clear()
asyncio.run(controller.run())
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    unrelated: int
    selector: bool


@dataclass
class Sample:
    """Figures read at one moment: the controller's metrics, its memory, the emulator's traffic."""

    reconciles: float
    requests: dict[str, float]
    rss_mib: float
    hwm_mib: float
    listed: int
    listed_bytes: int
    watched: int
    watched_bytes: int
    # CPU seconds used so far by the controller and by the emulator.
    controller_cpu: float = 0.0
    emulator_cpu: float = 0.0


@dataclass
class Outcome:
    scenario: Scenario
    started: Sample
    sync_seconds: float
    synced: Sample
    interval_seconds: float
    refreshed: Sample


def unrelated_secret(index: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """Return (namespace, body) of one unrelated Secret: a token, a small or a large Secret.

    Six in ten look like service-account tokens (about 2 KiB), two in ten are small Opaque
    Secrets (1 KiB), and two in ten carry 5 to 50 KiB (certificate bundles, config files).
    """
    namespace = UNRELATED_NAMESPACES[index % len(UNRELATED_NAMESPACES)]
    kind = index % 10
    if kind < 6:
        secret_type = "kubernetes.io/service-account-token"
        data = {"token": rng.randbytes(900), "ca.crt": rng.randbytes(1100), "namespace": b"x"}
    elif kind < 8:
        secret_type, data = "Opaque", {"config": rng.randbytes(1024)}
    else:
        secret_type, data = "Opaque", {"bundle": rng.randbytes(rng.randint(5, 50) * 1024)}
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"other-{index}", "labels": {"app": f"app-{index % 50}"}},
        "type": secret_type,
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }
    return namespace, body


async def create_unrelated(session: aiohttp.ClientSession, count: int) -> int:
    """Create `count` unrelated Secrets, 16 requests at a time; return their total data bytes."""
    rng = random.Random(1)
    secrets = [unrelated_secret(index, rng) for index in range(count)]
    total = sum(len(value) for _, body in secrets for value in body["data"].values())
    queue = iter(secrets)

    async def worker() -> None:
        for namespace, body in queue:
            path = f"/api/v1/namespaces/{namespace}/secrets"
            async with session.post(path, json=body) as response:
                assert response.status == 201, response.status

    await asyncio.gather(*(worker() for _ in range(16)))
    return total


async def churn_unrelated(session: aiohttp.ClientSession, count: int, seconds: float) -> None:
    """Modify `count` unrelated Secrets, spread over `seconds`, as other applications would."""
    for index in range(count):
        namespace = UNRELATED_NAMESPACES[index % len(UNRELATED_NAMESPACES)]
        path = f"/api/v1/namespaces/{namespace}/secrets/other-{index}"
        patch = {"metadata": {"annotations": {"rotated": str(time.time())}}}
        headers = {"Content-Type": "application/merge-patch+json"}
        async with session.patch(path, json=patch, headers=headers) as response:
            assert response.status == 200, response.status
        await asyncio.sleep(seconds / count)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """Return the user and system CPU time of `pid` so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> tuple[float, float]:
    """Return VmRSS and VmHWM of `pid` in MiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


async def controller_metrics(
    session: aiohttp.ClientSession, url: str
) -> tuple[float, dict[str, float]]:
    """Return reconciles and SSM requests by operation from the controller's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    samples = [
        sample for family in text_string_to_metric_families(text) for sample in family.samples
    ]
    reconciles = sum(
        sample.value
        for sample in samples
        if sample.name == "secrets_agent_controller_reconcile_total"
    )
    return reconciles, requests_by_operation(samples)


async def secret_traffic(session: aiohttp.ClientSession) -> tuple[int, int, int, int]:
    """Return Secret objects and bytes the emulator listed and watched for the controller."""
    async with session.get("/_emulator/traffic") as response:
        rows = await response.json()
    totals = {"list": [0, 0], "watch": [0, 0]}
    for row in rows:
        if row["resource"] == "v1/secrets" and row["labelSelector"] != POLL_SELECTOR:
            totals[row["verb"]][0] += row["objects"]
            totals[row["verb"]][1] += row["bytes"]
    return (*totals["list"], *totals["watch"])


async def sample(
    emulator: aiohttp.ClientSession,
    plain: aiohttp.ClientSession,
    processes: tuple[subprocess.Popen[bytes], subprocess.Popen[str]],
    metrics_url: str,
) -> Sample:
    controller, server = processes
    reconciles, counts = await controller_metrics(plain, metrics_url)
    rss, hwm = memory_mib(controller.pid)
    figures = Sample(reconciles, counts, rss, hwm, *await secret_traffic(emulator))
    figures.controller_cpu = cpu_seconds(controller.pid)
    figures.emulator_cpu = cpu_seconds(server.pid)
    return figures


async def wait_healthy(session: aiohttp.ClientSession, url: str, process: Any) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the controller exited with {process.returncode}")
        try:
            async with session.get(f"{url}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the controller's /healthz did not return 200 within 60 s")


async def wait_synced(session: aiohttp.ClientSession, expected: int, started: float) -> None:
    reported = time.perf_counter()
    params = {"labelSelector": POLL_SELECTOR}
    while True:
        async with session.get("/api/v1/namespaces/bench/secrets", params=params) as response:
            synced = len((await response.json())["items"])
        if synced >= expected:
            return
        if time.perf_counter() - reported > 30:
            reported = time.perf_counter()
            print(f"  {synced} Secrets after {reported - started:.0f} s", flush=True)
        await asyncio.sleep(1.0)


def stop(process: subprocess.Popen[Any]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


async def run_scenario(scenario: Scenario, args: argparse.Namespace) -> Outcome:
    namespaces = ["bench", *UNRELATED_NAMESPACES]
    command = [sys.executable, "-m", "agent.testing.kubernetes"]
    for namespace in namespaces:
        command += ["--namespace", namespace]
    emulator = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    controller: subprocess.Popen[bytes] | None = None
    try:
        assert emulator.stdout is not None
        url = emulator.stdout.readline().strip()
        async with aiohttp.ClientSession(base_url=url) as session, aiohttp.ClientSession() as plain:
            if scenario.unrelated:
                total = await create_unrelated(session, scenario.unrelated)
                print(f"  {scenario.unrelated} unrelated Secrets, {total / 2**20:.1f} MiB of data")
            await create_objects(session, args)
            listen = f"127.0.0.1:{free_port()}"
            metrics_url = f"http://{listen}"
            selector = "managed" if scenario.selector else "none"
            controller = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CONTROLLER_LAUNCHER,
                    url,
                    listen,
                    str(args.interval / 2),
                    selector,
                ],
            )
            await wait_healthy(plain, metrics_url, controller)
            start = await sample(session, plain, (controller, emulator), metrics_url)
            started = time.perf_counter()
            await wait_synced(session, args.external_secrets, started)
            sync_seconds = time.perf_counter() - started
            synced = await sample(session, plain, (controller, emulator), metrics_url)
            begun = time.perf_counter()
            churn = args.churn if scenario.unrelated else 0
            await asyncio.gather(
                asyncio.sleep(args.interval), churn_unrelated(session, churn, args.interval * 0.9)
            )
            interval_seconds = time.perf_counter() - begun
            refreshed = await sample(session, plain, (controller, emulator), metrics_url)
        return Outcome(scenario, start, sync_seconds, synced, interval_seconds, refreshed)
    finally:
        if controller is not None:
            stop(controller)
        emulator.terminate()
        emulator.wait(timeout=10)


def report(outcomes: list[Outcome], args: argparse.Namespace) -> None:
    """Print one row per figure and one column per scenario, with ratios to the baseline."""
    header = ["figure", *(outcome.scenario.name for outcome in outcomes)]
    header += [f"{outcome.scenario.name} / baseline" for outcome in outcomes[1:]]
    rows: list[tuple[str, list[float]]] = []

    def row(name: str, pick: Any) -> None:
        rows.append((name, [float(pick(outcome)) for outcome in outcomes]))

    row("initial sync, wall (s)", lambda o: o.sync_seconds)
    row("initial sync, reconciles/s", lambda o: o.synced.reconciles / o.sync_seconds)
    row(
        "controller CPU / wall, sync",
        lambda o: (o.synced.controller_cpu - o.started.controller_cpu) / o.sync_seconds,
    )
    row(
        "emulator CPU / wall, sync",
        lambda o: (o.synced.emulator_cpu - o.started.emulator_cpu) / o.sync_seconds,
    )
    row("VmRSS after sync (MiB)", lambda o: o.synced.rss_mib)
    row("VmHWM after sync (MiB)", lambda o: o.synced.hwm_mib)
    row("Secrets listed to the controller, sync", lambda o: o.synced.listed)
    row("Secret watch events to the controller, sync", lambda o: o.synced.watched)
    row(
        "Secret list + watch KiB to the controller, sync",
        lambda o: (o.synced.listed_bytes + o.synced.watched_bytes) / 1024,
    )
    row("SSM requests, sync", lambda o: sum(o.synced.requests.values()))
    row(
        "reconciles/s over the interval",
        lambda o: (o.refreshed.reconciles - o.synced.reconciles) / o.interval_seconds,
    )
    row(
        "SSM requests in the interval",
        lambda o: sum(difference(o.refreshed.requests, o.synced.requests).values()),
    )
    row("Secret watch events in the interval", lambda o: o.refreshed.watched - o.synced.watched)
    row(
        "controller CPU / wall, interval",
        lambda o: (o.refreshed.controller_cpu - o.synced.controller_cpu) / o.interval_seconds,
    )
    row("VmRSS after the interval (MiB)", lambda o: o.refreshed.rss_mib)
    row("VmHWM after the interval (MiB)", lambda o: o.refreshed.hwm_mib)
    print(
        f"\n{args.external_secrets} ExternalSecrets over {args.keys} SSM keys, refreshInterval "
        f"{args.interval:g} s, {args.unrelated_secrets} unrelated Secrets ({args.churn} modified "
        "during the interval)"
    )
    print(" | ".join(header))
    for name, values in rows:
        cells = [f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" for value in values]
        cells += [f"{value / values[0]:.2f}" if values[0] else "-" for value in values[1:]]
        print(" | ".join([name, *cells]))
    for outcome in outcomes:
        interval = difference(outcome.refreshed.requests, outcome.synced.requests)
        print(
            f"{outcome.scenario.name}: sync {describe(outcome.synced.requests)}; "
            f"interval {describe(interval)}"
        )


async def run_unrelated(args: argparse.Namespace) -> None:
    client = boto3.client("ssm", region_name="us-east-1")
    for index in range(args.keys):
        client.put_parameter(
            Name=f"/bench/key-{index}", Value=f"fake-bench-value-{index}", Type="SecureString"
        )
    scenarios = [
        Scenario("baseline", 0, True),
        Scenario("unrelated", args.unrelated_secrets, True),
        Scenario("no selector", args.unrelated_secrets, False),
    ]
    outcomes = []
    for scenario in scenarios:
        print(f"scenario {scenario.name}", flush=True)
        outcomes.append(await run_scenario(scenario, args))
    report(outcomes, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["refresh", "unrelated"], default="refresh")
    parser.add_argument("--external-secrets", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument(
        "--interval", type=float, help="refreshInterval in seconds; default 20, unrelated mode 40"
    )
    parser.add_argument("--intervals", type=int, default=3, help="refresh mode only")
    parser.add_argument("--unrelated-secrets", type=int, default=5000)
    parser.add_argument(
        "--churn", type=int, default=500, help="unrelated Secrets modified during the interval"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 100 ExternalSecrets, 500 unrelated"
    )
    args = parser.parse_args()
    if args.quick:
        args.external_secrets, args.keys = 100, 10
        args.unrelated_secrets, args.churn = 500, 50
        args.interval = args.interval or 5.0
        args.intervals = 1
    if args.interval is None:
        args.interval = 40.0 if args.mode == "unrelated" else 20.0
    logging.basicConfig(level=logging.WARNING)
    for name in ("kopf", "agent", "aiohttp", "botocore", "werkzeug"):
        logging.getLogger(name).setLevel(logging.ERROR)
    moto = start_moto()
    try:
        asyncio.run(run(args) if args.mode == "refresh" else run_unrelated(args))
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
