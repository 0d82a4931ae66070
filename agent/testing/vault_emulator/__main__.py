"""Command line: serve the Vault API emulator until SIGTERM or SIGINT.

    python -m agent.testing.vault_emulator --port 8200 --root-token TOKEN [--seed seed.json]

The first line on stdout is the base URL. The seed is a JSON object whose keys name
`VaultEmulator` helpers and hold lists of their keyword arguments (see `apply_seed`).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from .emulator import VaultEmulator
from .server import require_loopback


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.testing.vault_emulator",
        description="Serve an emulated HashiCorp Vault API on a loopback address.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=8200, help="TCP port; 0 picks a free one")
    parser.add_argument("--root-token", default="root-token-fake", help="the root token's ID")
    parser.add_argument("--seed", help="JSON file with mounts, secrets, policies and roles")
    parser.add_argument("--tls-cert", help="PEM certificate file; serve HTTPS with --tls-key")
    parser.add_argument("--tls-key", help="PEM private key file for --tls-cert")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=arguments.log_level.upper(), stream=sys.stderr)
    try:
        require_loopback(arguments.host)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if bool(arguments.tls_cert) != bool(arguments.tls_key):
        print("error: --tls-cert and --tls-key must be given together", file=sys.stderr)
        return 2

    emulator = VaultEmulator(root_token=arguments.root_token)
    if arguments.seed:
        try:
            with open(arguments.seed, encoding="utf-8") as seed_file:
                emulator.apply_seed(json.load(seed_file))
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"error: seed {arguments.seed}: {error}", file=sys.stderr)
            return 2

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    url = emulator.start(
        host=arguments.host,
        port=arguments.port,
        certfile=arguments.tls_cert,
        keyfile=arguments.tls_key,
    )
    print(url, flush=True)
    stop.wait()
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
