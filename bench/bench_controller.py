"""Benchmark the controller: 1,000 ExternalSecrets over 100 distinct SSM keys.

Runs the whole controller (kopf, the shared read cache, the Secret writes) against the
Kubernetes API emulator and moto's server, both on loopback, and prints:
- the initial sync: wall time until every Secret exists, and reconciles per second;
- per refresh interval after that: GetParameters calls and parameter names read, next to the
  baseline of one GetParameter per ExternalSecret key per interval (External Secrets Operator's
  way), and reconciles per second;
- the wall time of that baseline's 1,000 GetParameter calls against the same moto server.

Names read are counted by wrapping each store's `fetch` (the names it is asked for); requests
are counted by the controller's own `secrets_agent_backend_requests_total`.

Run it with `make bench` or `.venv/bin/python bench/bench_controller.py [--external-secrets N]
[--keys N] [--interval SECONDS] [--intervals N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
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


def requests(controller: Controller) -> float:
    counter = controller.metrics.backend_requests
    return counter.labels("aws-ssm", "GetParameters", "success")._value.get()


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
        f"{requests(controller):.0f} GetParameters calls, {CountingStore.names_read} names read",
        flush=True,
    )
    print(
        f"\nper interval of {args.interval:g} s | GetParameters calls | names read | "
        "baseline GetParameter calls | reconciles/s"
    )
    for number in range(1, args.intervals + 1):
        calls, names, runs = requests(controller), CountingStore.names_read, reconciles(controller)
        begun = time.perf_counter()
        await asyncio.sleep(args.interval)
        elapsed = time.perf_counter() - begun
        print(
            f"interval {number} | {requests(controller) - calls:.0f} | "
            f"{CountingStore.names_read - names} | {args.external_secrets} | "
            f"{(reconciles(controller) - runs) / elapsed:.1f}",
            flush=True,
        )
    stop.set()
    await asyncio.to_thread(thread.join, 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--external-secrets", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--interval", type=float, default=20.0, help="refreshInterval, seconds")
    parser.add_argument("--intervals", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("kopf", "agent", "aiohttp", "botocore", "werkzeug"):
        logging.getLogger(name).setLevel(logging.ERROR)
    moto = start_moto()
    try:
        asyncio.run(run(args))
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
