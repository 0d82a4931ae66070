"""Measure an idle `secrets-agent run`: memory and CPU, the figures behind the chart's resources.

Starts moto's server and the Vault API emulator on loopback, seeds the demo's fake values, and
then starts these processes at the same time, each left idle once it has started:
- `run` with the demo's Vault KV target alone (Kubernetes auth, whose 10-minute token the agent
  renews during the idle time), and `run` with the demo's SSM target and Vault KV target;
- with `--baseline-revision REV`, the same two from the agent as it was at git revision REV;
- three baselines, all sleeping: a bare interpreter, an interpreter that has imported boto3,
  hvac and pydantic, and one that has imported only what a Vault-only agent cannot do without,
  pydantic-settings and hvac.

From 10 s after the /readyz of every `run` returned 200, it samples /proc/<pid> of each process
every 5 s for `--idle` seconds (default 600; `--quick` is 30) and prints VmRSS at the end and its
maximum, VmHWM, the anonymous and file-backed parts of VmRSS, the CPU time (utime + stime) used
over the idle time in millicores, and voluntary context switches per minute of the threads alive
at the first and last sample: a thread that polls shows up there even when its CPU time rounds
to zero. Like the chart's liveness probe, the benchmark sends GET /livez to each `run` every
`--probe-period` seconds (default 10; 0 sends none). The SSM target's refreshInterval is
`--refresh` (default 1h, so no refresh falls into the idle time). Processes are started with
exec, so each VmHWM is the process's own and not this benchmark's. Every process reads cached
bytecode, as in the image; short runs of each `run`, not counted, write that cache first.

Run it with `.venv/bin/python bench/bench_run_rss.py [--idle SECONDS | --quick]
[--probe-period SECONDS] [--refresh INTERVAL] [--baseline-revision REV]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from processes import ProcessSample, bytecode_environment, extract_revision

from agent.testing import demo

SAMPLE_SECONDS = 5.0
# Each `run` still starts its config watcher after /readyz returns 200, and all of them start at
# once on the same cores, so sampling begins this long after the last one became ready.
SETTLE_SECONDS = 10.0
QUICK_IDLE_SECONDS = 30.0
# The idle sidecar's targets, in MiB of VmRSS and in millicores.
RSS_TARGETS = {"Vault only": 40.0, "SSM + Vault": 64.0}
CPU_TARGET = 1.0


@dataclass
class Subject:
    """One process started for the measurement and the samples read from it."""

    label: str
    command: list[str]
    directory: Path
    port: int | None = None
    output: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    samples: list[ProcessSample] = field(default_factory=list)

    def start(self, environment: dict[str, str]) -> None:
        environment = dict(environment)
        if self.output is not None:
            self.output.mkdir(parents=True, exist_ok=True)
            environment["SECRETS_AGENT_OUTPUT_DIR"] = str(self.output)
        self.process = subprocess.Popen(
            self.command,
            cwd=self.directory,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> int | None:
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--idle", type=float, default=600.0, help="seconds to sample for, default 600"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"sample for {QUICK_IDLE_SECONDS:.0f} s only"
    )
    parser.add_argument(
        "--probe-period",
        type=float,
        default=10.0,
        help="seconds between GET /livez to each run, as the chart's liveness probe; 0: none",
    )
    parser.add_argument(
        "--refresh", default="1h", help="refreshInterval of the SSM target (Go duration)"
    )
    parser.add_argument(
        "--baseline-revision",
        metavar="REV",
        help="also run the agent at this git revision, e.g. the commit before a change",
    )
    arguments = parser.parse_args()
    idle = QUICK_IDLE_SECONDS if arguments.quick else arguments.idle

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
        environment = bytecode_environment(environment, workdir / "bytecode")
        demo._seed_aws(environment)
        demo._seed_vault(vault)
        configs = _write_configs(workdir, vault.url, arguments.refresh)
        subjects = _subjects(workdir, configs, arguments.baseline_revision)
        if not _warm_up(subjects, environment):
            return 1
        _measure(subjects, environment, idle, arguments.probe_period)
    finally:
        vault.stop()
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    _report(subjects, idle, arguments.refresh, arguments.probe_period)
    return 0


def _write_configs(workdir: Path, vault_url: str, refresh: str) -> dict[str, Path]:
    """Write the demo's declarations and a copy without the SSM store and target."""
    full = demo._write_inputs(workdir, vault_url)
    text = full.read_text().replace("refreshInterval: 2s", f"refreshInterval: {refresh}")
    full.write_text(text)
    documents = text.split("\n---\n")
    vault_only = [doc for doc in documents if "aws-ssm" not in doc and "aws:" not in doc]
    config = workdir / "declarations-vault.yaml"
    config.write_text("\n---\n".join(vault_only))
    return {"Vault only": config, "SSM + Vault": full}


def _subjects(workdir: Path, configs: dict[str, Path], revision: str | None) -> list[Subject]:
    """Return the baselines, then `run` of this tree (and of `revision`) per declaration set.

    Each `run` writes into a directory of its own, because they run at the same time.
    """
    python = sys.executable
    sleep = "import time; time.sleep(86400)"
    subjects = [
        Subject("python, sleeping", [python, "-c", sleep], workdir),
        Subject(
            "python: import boto3, hvac, pydantic",
            [python, "-c", f"import boto3, hvac, pydantic; {sleep}"],
            workdir,
        ),
        Subject(
            "python: import pydantic_settings, hvac",
            [python, "-c", f"import pydantic_settings, hvac; {sleep}"],
            workdir,
        ),
    ]
    trees = [("", Path(__file__).resolve().parent.parent)]
    if revision is not None:
        trees.append((f" at {revision}", extract_revision(revision, workdir / "revision")))
    for suffix, tree in trees:
        for name, config in configs.items():
            port = demo._free_port()
            command = [python, "-m", "agent", "run", "--config", str(config)]
            command += ["--listen", f"127.0.0.1:{port}"]
            label = f"run, {name}{suffix}"
            output = workdir / "outputs" / label.replace(" ", "-").replace(",", "")
            subjects.append(Subject(label, command, tree, port, output))
    return subjects


def _warm_up(subjects: list[Subject], environment: dict[str, str]) -> bool:
    """Start and stop each `run` once, so that the measured ones read cached bytecode."""
    for subject in subjects:
        if subject.port is None:
            continue
        subject.start(environment)
        try:
            demo._wait_ready(subject.port)
        except OSError:
            print(f"{subject.label}: /readyz did not return 200 within 30 s")
            subject.stop()
            return False
        subject.stop()
        subject.process = None
    return True


def _measure(
    subjects: list[Subject], environment: dict[str, str], idle: float, probe_period: float
) -> None:
    for subject in subjects:
        subject.start(environment)
    try:
        for subject in subjects:
            if subject.port is not None:
                demo._wait_ready(subject.port)
        time.sleep(SETTLE_SECONDS)
        started = time.monotonic()
        end = started + idle
        next_sample = started
        next_probe = started + probe_period if probe_period > 0 else float("inf")
        while True:
            now = time.monotonic()
            if now >= next_probe:
                _probe(subjects)
                next_probe += probe_period
            if now >= next_sample or now >= end:
                for subject in subjects:
                    assert subject.process is not None
                    subject.samples.append(ProcessSample.read(subject.process.pid))
                next_sample += SAMPLE_SECONDS
            if now >= end:
                break
            time.sleep(max(0.0, min(next_sample, next_probe, end) - time.monotonic()))
    finally:
        for subject in subjects:
            subject.stop()


def _probe(subjects: list[Subject]) -> None:
    """Send GET /livez to every `run`, as the kubelet's liveness probe does."""
    for subject in subjects:
        if subject.port is not None:
            url = f"http://127.0.0.1:{subject.port}/livez"
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()


def _report(subjects: list[Subject], idle: float, refresh: str, probe_period: float) -> None:
    probes = f"GET /livez every {probe_period:g} s" if probe_period > 0 else "no probes"
    print(
        f"idle processes, {idle:.0f} s from {SETTLE_SECONDS:.0f} s after every `run` was ready, "
        f"sampled every {SAMPLE_SECONDS:.0f} s; {probes}; SSM refreshInterval {refresh}"
    )
    print(f"  {'':40}{'VmRSS MiB':>14}{'VmHWM':>7}{'anon':>6}{'file':>6}{'CPU':>8}{'wake-ups':>10}")
    print(
        f"  {'':40}{'end':>7}{'max':>7}{'MiB':>7}{'MiB':>6}{'MiB':>6}{'mcores':>8}{'per min':>10}"
    )
    for subject in subjects:
        first, last = subject.samples[0], subject.samples[-1]
        millicores = (last.cpu_seconds - first.cpu_seconds) / idle * 1000
        wakeups = max(0, last.switches - first.switches) / idle * 60
        peak = max(sample.rss for sample in subject.samples)
        print(
            f"  {subject.label:40}{last.rss:>7.1f}{peak:>7.1f}{last.hwm:>7.1f}"
            f"{last.anonymous:>6.1f}{last.file_backed:>6.1f}{millicores:>8.2f}{wakeups:>10.1f}"
        )
    targets = ", ".join(f"{name} <= {mib:.0f} MiB" for name, mib in RSS_TARGETS.items())
    print(f"  targets for run: VmRSS {targets}; CPU <= {CPU_TARGET:.0f} millicore")
    print(
        "  CPU is utime + stime over the idle time, in clock ticks of "
        f"{1000 / os.sysconf('SC_CLK_TCK'):.0f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
