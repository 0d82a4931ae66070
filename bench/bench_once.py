"""Benchmark `secrets-agent once` for 100 SSM keys and 20 Vault keys against the local stand-ins.

Prints, in one run on this machine:
- wall time and peak RSS of `secrets-agent once` in a subprocess (as an init container runs it);
- SSM calls the agent makes for N keys (counted by its own metrics, in process), next to a
  baseline in the same run that makes one `GetParameter` per key, as External Secrets Operator
  does, with the wall time of each.

Run it with `make bench` or `.venv/bin/python bench/bench_once.py [--ssm-keys N]`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SSM_STORE = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {name: aws-ssm}
spec:
  provider:
    aws: {service: ParameterStore, region: us-east-1}
---
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


def declarations(ssm_keys: int, vault_keys: int) -> str:
    lines = [SSM_STORE]
    lines.append(
        "---\napiVersion: secrets-agent.io/v1alpha1\nkind: ExternalSecret\n"
        "metadata: {name: bench-ssm}\nspec:\n  secretStoreRef: {name: aws-ssm}\n"
        "  data:\n"
    )
    for index in range(ssm_keys):
        lines.append(f"    - {{secretKey: key-{index}, remoteRef: {{key: /bench/key-{index}}}}}\n")
    if vault_keys:
        lines.append(
            "---\napiVersion: secrets-agent.io/v1alpha1\nkind: ExternalSecret\n"
            "metadata: {name: bench-vault}\nspec:\n  secretStoreRef: {name: vault-kv}\n"
            "  data:\n"
        )
        for index in range(vault_keys):
            lines.append(
                f"    - {{secretKey: key-{index}, remoteRef: {{key: app-{index}, "
                "property: value}}\n"
            )
    return "".join(lines)


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


# Starts the agent from a small interpreter and prints the agent's own peak RSS (KiB). Linux
# carries the parent's high-water mark into a forked child, so measuring a child of this
# benchmark process, which holds moto and boto3, would report this process's memory instead.
_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def run_once_subprocess(config: Path, output: Path, refs: Path) -> tuple[float, float]:
    """Return wall seconds and peak RSS in MiB of one `secrets-agent once` run."""
    output.mkdir(parents=True, exist_ok=True)
    environment = dict(
        os.environ, SECRETS_AGENT_OUTPUT_DIR=str(output), SECRETS_AGENT_REFS_DIR=str(refs)
    )
    command = [
        sys.executable,
        "-m",
        "agent",
        "once",
        "--config",
        str(config),
        "--log-level",
        "warning",
    ]
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-S", "-c", _LAUNCHER, *command],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    wall = time.perf_counter() - started
    code, peak_kib = (int(part) for part in result.stdout.split())
    if code != 0:
        raise SystemExit(f"once failed with {code}:\n{result.stderr}")
    return wall, peak_kib / 1024


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
            config = root / "declarations.yaml"
            config.write_text(
                declarations(arguments.ssm_keys, arguments.vault_keys).replace(
                    "VAULT_URL", vault.url
                )
            )
            wall, rss = run_once_subprocess(config, root / "out-subprocess", refs)
            agent_calls, agent_wall = count_agent_calls(config, root / "out-in-process", refs)
            base_calls, base_wall = baseline_calls(ssm, arguments.ssm_keys)
    finally:
        vault.stop()
        moto.stop()

    target = math.ceil(arguments.ssm_keys / 10)
    print(f"secrets-agent once, {arguments.ssm_keys} SSM keys + {arguments.vault_keys} Vault keys")
    print(f"  wall time (subprocess, incl. interpreter start): {wall:.3f} s   target < 1 s")
    print(f"  peak RSS:                                        {rss:.1f} MiB   target < 64 MiB")
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
