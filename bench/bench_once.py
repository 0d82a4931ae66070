"""Benchmark `secrets-agent once` for 100 SSM keys and 20 Vault keys against the local stand-ins.

Prints, in one run on this machine:
- wall time, CPU time and peak RSS of `secrets-agent once` in its own process (as an init
  container runs it), for the SSM + Vault declarations and for the Vault declaration alone,
  next to two baselines measured in the same run and interleaved with it: the bare interpreter
  (`python -c pass`) and a process that only imports boto3, hvac and pydantic; with
  `--baseline-revision REV`, also `once` of the agent as it was at git revision REV;
- SSM calls the agent makes for N keys (counted by its own metrics, in process), next to a
  baseline in the same run that makes one `GetParameter` per key, as External Secrets Operator
  does, with the wall time of each.

Every process reads cached bytecode, as in the image (see `processes.bytecode_environment`); a
first run of each, not counted, writes that cache.

Run it with `make bench` or
`.venv/bin/python bench/bench_once.py [--runs N] [--ssm-keys N] [--baseline-revision REV]`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from processes import bytecode_environment, extract_revision

SSM_STORE = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {name: aws-ssm}
spec:
  provider:
    aws: {service: ParameterStore, region: us-east-1}
"""
VAULT_STORE = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {name: vault-kv}
spec:
  provider:
    vault:
      server: VAULT_URL
      path: secret
      auth:
        tokenSecretRef: {name: vault-token, key: token}
"""
ONCE_WALL_TARGET = 0.8


def declarations(ssm_keys: int, vault_keys: int) -> str:
    documents = []
    if ssm_keys:
        lines = [
            SSM_STORE,
            "---\napiVersion: secrets-agent.io/v1alpha1\nkind: ExternalSecret\n"
            "metadata: {name: bench-ssm}\nspec:\n  secretStoreRef: {name: aws-ssm}\n"
            "  data:\n",
        ]
        for index in range(ssm_keys):
            lines.append(
                f"    - {{secretKey: key-{index}, remoteRef: {{key: /bench/key-{index}}}}}\n"
            )
        documents.append("".join(lines))
    if vault_keys:
        lines = [
            VAULT_STORE,
            "---\napiVersion: secrets-agent.io/v1alpha1\nkind: ExternalSecret\n"
            "metadata: {name: bench-vault}\nspec:\n  secretStoreRef: {name: vault-kv}\n"
            "  data:\n",
        ]
        for index in range(vault_keys):
            lines.append(
                f"    - {{secretKey: key-{index}, remoteRef: {{key: app-{index}, "
                "property: value}}\n"
            )
        documents.append("".join(lines))
    return "---\n".join(documents)


def seed(ssm, vault, ssm_keys: int, vault_keys: int) -> None:
    for index in range(ssm_keys):
        ssm.put_parameter(
            Name=f"/bench/key-{index}",
            Value=f"fake-value-{index}",
            Type="SecureString",
            Overwrite=True,
        )
    for index in range(vault_keys):
        vault.kv_put("secret", f"app-{index}", {"value": f"fake-vault-value-{index}"})


# Starts a program from a small interpreter and prints its exit code, peak RSS (KiB), CPU
# seconds and wall seconds. Linux carries the parent's high-water mark into a forked child, so
# measuring a child of this benchmark process, which has moto and boto3 loaded, would report this
# process's memory instead.
_LAUNCHER = """
import os, subprocess, sys, time
started = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
wall = time.perf_counter() - started
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, usage.ru_utime + usage.ru_stime, wall)
"""


@dataclass
class Subject:
    """One program measured `--runs` times: `command` run in `directory` with `environment`.

    `output` is set for `once`: each run writes into a new directory beneath it, so that every
    run writes every target rather than finding the files of the previous run unchanged.
    """

    label: str
    command: list[str]
    directory: Path
    environment: dict[str, str]
    output: Path | None = None
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)

    def run(self, number: int, *, record: bool = True) -> None:
        environment = dict(self.environment)
        if self.output is not None:
            output = self.output / f"run-{number}"
            output.mkdir(parents=True)
            environment["SECRETS_AGENT_OUTPUT_DIR"] = str(output)
        result = subprocess.run(
            [sys.executable, "-S", "-c", _LAUNCHER, *self.command],
            cwd=self.directory,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
        code, peak_kib, cpu, wall = result.stdout.split()
        if int(code) != 0:
            raise SystemExit(f"{self.label} failed with {code}:\n{result.stderr}")
        if record:
            self.walls.append(float(wall))
            self.cpus.append(float(cpu))
            self.peaks.append(int(peak_kib) / 1024)


def once_subjects(
    root: Path, environment: dict[str, str], configs: dict[str, Path], revision: str | None
) -> list[Subject]:
    """Return the programs to compare: two baselines, then `once` of this tree and of `revision`."""
    python = sys.executable
    subjects = [
        Subject("python -c pass", [python, "-c", "pass"], root, environment),
        Subject(
            "python: import boto3, hvac, pydantic",
            [python, "-c", "import boto3, hvac, pydantic"],
            root,
            environment,
        ),
    ]
    trees = [("", Path(__file__).resolve().parent.parent)]
    if revision is not None:
        trees.append((f" at {revision}", extract_revision(revision, root / "revision")))
    for suffix, tree in trees:
        for name, config in configs.items():
            command = [python, "-m", "agent", "once", "--config", str(config)]
            command += ["--log-level", "warning"]
            output = root / "out" / f"{name}{suffix}".replace(" ", "-")
            subjects.append(Subject(f"once, {name}{suffix}", command, tree, environment, output))
    return subjects


def count_agent_calls(config: Path, output: Path, refs: Path) -> tuple[int, float]:
    """Run one sync in process and return SSM calls made and wall seconds."""
    from agent.declarations import load_declarations
    from agent.metrics import Metrics
    from agent.settings import load_settings
    from agent.sync import Syncer
    from agent.writer import Writer

    settings = load_settings(config=[str(config)], output_dir=str(output), refs_dir=str(refs))
    declarations_loaded = load_declarations(settings.config)
    only_ssm = [d for d in declarations_loaded.external_secrets if d.name == "bench-ssm"]
    declarations_loaded.external_secrets = only_ssm
    metrics = Metrics()
    syncer = Syncer(declarations_loaded, settings=settings, writer=Writer(output), metrics=metrics)
    started = time.perf_counter()
    result = syncer.run_once(timeout=30)
    wall = time.perf_counter() - started
    syncer.stores.close()
    if result.failed:
        raise SystemExit(f"in-process sync failed: {list(result.failed)}")
    calls = 0
    for metric in metrics.registry.collect():
        if metric.name == "secrets_agent_backend_requests":
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["store"] == "aws-ssm":
                    calls += int(sample.value)
    return calls, wall


def baseline_calls(ssm, keys: int) -> tuple[int, float]:
    """One GetParameter per key: what a fetcher without batching does."""
    started = time.perf_counter()
    for index in range(keys):
        ssm.get_parameter(Name=f"/bench/key-{index}", WithDecryption=True)
    return keys, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ssm-keys", type=int, default=100)
    parser.add_argument("--vault-keys", type=int, default=20)
    parser.add_argument(
        "--runs", type=int, default=5, help="measured runs of each program, default 5"
    )
    parser.add_argument(
        "--baseline-revision",
        metavar="REV",
        help="also run `once` of the agent at this git revision, e.g. the commit before a change",
    )
    arguments = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log

    from agent.testing.vault_emulator import VaultEmulator

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    moto_url = "http://{}:{}".format(*moto.get_host_and_port())
    os.environ.update(
        AWS_ENDPOINT_URL=moto_url,
        AWS_ACCESS_KEY_ID="bench-fake-key-id",
        AWS_SECRET_ACCESS_KEY="bench-fake-secret",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    vault = VaultEmulator(root_token="bench-root-token")
    vault.start()
    try:
        ssm = boto3.client("ssm", endpoint_url=moto_url, region_name="us-east-1")
        seed(ssm, vault, arguments.ssm_keys, arguments.vault_keys)
        with tempfile.TemporaryDirectory(prefix="bench-once-", dir=_tmpfs()) as workdir:
            root = Path(workdir)
            refs = root / "refs"
            (refs / "vault-token").mkdir(parents=True)
            (refs / "vault-token" / "token").write_text(vault.root_token)
            configs = {}
            for name, ssm_keys in (("SSM + Vault", arguments.ssm_keys), ("Vault only", 0)):
                config = root / f"declarations-{ssm_keys}.yaml"
                text = declarations(ssm_keys, arguments.vault_keys)
                config.write_text(text.replace("VAULT_URL", vault.url))
                configs[name] = config
            environment = bytecode_environment(dict(os.environ), root / "bytecode")
            environment["SECRETS_AGENT_REFS_DIR"] = str(refs)
            subjects = once_subjects(root, environment, configs, arguments.baseline_revision)
            for subject in subjects:  # writes the bytecode cache; not counted
                subject.run(0, record=False)
            # Interleaved, so that load from other programs on the machine spreads evenly.
            for number in range(1, arguments.runs + 1):
                for subject in subjects:
                    subject.run(number)
            full = configs["SSM + Vault"]
            agent_calls, agent_wall = count_agent_calls(full, root / "out-in-process", refs)
            base_calls, base_wall = baseline_calls(ssm, arguments.ssm_keys)
    finally:
        vault.stop()
        moto.stop()

    print(
        f"secrets-agent once, {arguments.ssm_keys} SSM keys + {arguments.vault_keys} Vault keys; "
        f"{arguments.runs} runs of each program, interleaved, with cached bytecode"
    )
    print(f"  {'':44}{'wall s':>14}{'CPU s':>8}{'peak RSS':>10}")
    print(f"  {'':44}{'median':>8}{'min':>6}{'median':>8}{'MiB':>10}")
    for subject in subjects:
        print(
            f"  {subject.label:44}{statistics.median(subject.walls):>8.3f}"
            f"{min(subject.walls):>6.2f}{statistics.median(subject.cpus):>8.3f}"
            f"{statistics.median(subject.peaks):>10.1f}"
        )
    print(f"  target for once, SSM + Vault: wall <= {ONCE_WALL_TARGET} s")

    target = math.ceil(arguments.ssm_keys / 10)
    print(f"SSM calls for {arguments.ssm_keys} keys (one sync, same moto server)")
    print(f"  {'':24}{'calls':>8}{'wall s':>10}")
    print(f"  {'secrets-agent':24}{agent_calls:>8}{agent_wall:>10.3f}   target <= {target}")
    print(f"  {'GetParameter per key':24}{base_calls:>8}{base_wall:>10.3f}")
    print(
        f"  ratio agent/baseline: calls {agent_calls / base_calls:.2f}, "
        f"wall {agent_wall / base_wall:.2f}"
    )


def _tmpfs() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


if __name__ == "__main__":
    main()
