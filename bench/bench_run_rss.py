"""Measure the memory of an idle `secrets-agent run`: the figure behind the chart's requests.

Starts moto's server and the Vault API emulator on loopback, seeds the demo's fake values, runs
`secrets-agent once` and then `secrets-agent run` with the demo's declarations (one SSM target,
one Vault KV target, so both boto3 and hvac are loaded), and reads VmRSS and VmHWM from
/proc/<pid>/status of the `run` process over `--seconds` (default 60). The `run` process is
started with exec, so its VmHWM is its own and not the launcher's.

Run it with `.venv/bin/python bench/bench_run_rss.py [--seconds N] [--refresh INTERVAL]`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.testing import demo


def memory_mib(pid: int) -> dict[str, float]:
    """Return VmRSS and VmHWM of `pid` in MiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = int(value.split()[0]) / 1024
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds to sample memory for")
    parser.add_argument(
        "--refresh", default="2s", help="refreshInterval of the SSM target (Go duration)"
    )
    arguments = parser.parse_args()

    from moto.server import ThreadedMotoServer

    from agent.testing.vault_emulator import VaultEmulator

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="secrets-agent-rss-"))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    vault = VaultEmulator(root_token="bench-root-token")
    vault.start()
    try:
        environment = demo._environment("http://{}:{}".format(*moto.get_host_and_port()), workdir)
        demo._seed_aws(environment)
        demo._seed_vault(vault)
        config = demo._write_inputs(workdir, vault.url)
        text = config.read_text().replace(
            "refreshInterval: 2s", f"refreshInterval: {arguments.refresh}"
        )
        config.write_text(text)
        return _measure(config, environment, arguments.seconds)
    finally:
        vault.stop()
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _measure(config: Path, environment: dict[str, str], seconds: float) -> int:
    agent = [sys.executable, "-m", "agent"]
    once = subprocess.run(
        [*agent, "once", "--config", str(config)], env=environment, capture_output=True, timeout=120
    )
    if once.returncode != 0:
        print(f"once failed with exit code {once.returncode}")
        return 1

    port = demo._free_port()
    listen = f"127.0.0.1:{port}"
    run = subprocess.Popen(
        [*agent, "run", "--config", str(config), "--listen", listen],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        demo._wait_ready(port)
        started = time.monotonic()
        samples = []
        while time.monotonic() - started < seconds:
            time.sleep(min(5.0, seconds))
            samples.append(memory_mib(run.pid))
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=10)

    rss = [sample["VmRSS"] for sample in samples]
    print(f"run, {len(samples)} samples over {seconds:.0f} s after /readyz answered:")
    print(f"  VmRSS min {min(rss):.1f} MiB, max {max(rss):.1f} MiB")
    print(f"  VmHWM {samples[-1]['VmHWM']:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
