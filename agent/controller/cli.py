"""The `controller` and `crds` commands of `secrets-agent`.

`agent.cli` calls `add_commands` when it builds its parser and `main` for these two commands.
Neither imports kopf until the controller really starts, so the agent's own commands stay light;
without kopf installed, `controller` exits 2 and names the `controller` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from agent.errors import SettingsError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
COMMANDS = ("controller", "crds")


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `controller` and `crds` subcommands to the `secrets-agent` parser."""
    help_text = "keep Kubernetes Secrets in sync with ExternalSecrets (runs in the cluster)"
    controller = commands.add_parser("controller", help=help_text, description=help_text)
    flag = controller.add_argument
    flag(
        "--listen",
        metavar="HOST:PORT",
        help="address of /healthz and /metrics, default 0.0.0.0:8080 "
        "(SECRETS_AGENT_CONTROLLER_LISTEN)",
    )
    flag(
        "--namespace",
        dest="namespaces",
        action="append",
        metavar="NAME",
        help="watch only these namespaces: repeat the flag or separate names with commas; "
        "default: the whole cluster (SECRETS_AGENT_CONTROLLER_NAMESPACES, comma-separated)",
    )
    flag(
        "--peering",
        metavar="NAME",
        help="ClusterKopfPeering object the replicas elect a leader through (with --namespace, "
        "the KopfPeering of that name in each namespace), default secrets-agent "
        "(SECRETS_AGENT_CONTROLLER_PEERING)",
    )
    flag(
        "--standalone",
        action="store_const",
        const=True,
        help="run without leader election, for a single replica "
        "(SECRETS_AGENT_CONTROLLER_STANDALONE)",
    )
    flag(
        "--cache-seconds",
        type=float,
        metavar="SECONDS",
        help="how long one backend read is shared between ExternalSecrets, default 10 "
        "(SECRETS_AGENT_CONTROLLER_CACHE_SECONDS)",
    )
    flag(
        "--lease-revoke-grace",
        type=float,
        metavar="SECONDS",
        help="seconds replaced dynamic credentials stay valid after the new ones are written, "
        "0-3600, default 60 (SECRETS_AGENT_CONTROLLER_LEASE_REVOKE_GRACE)",
    )
    flag(
        "--lease-renewal-threshold",
        type=float,
        metavar="FRACTION",
        help="share of a non-renewable lease's TTL after which it is fetched again, default 0.9 "
        "(SECRETS_AGENT_CONTROLLER_LEASE_RENEWAL_THRESHOLD)",
    )
    flag(
        "--api-startup-timeout",
        type=float,
        metavar="SECONDS",
        help="how long to wait at start for the Kubernetes API server to respond before exiting "
        "1, default 30 (SECRETS_AGENT_CONTROLLER_API_STARTUP_TIMEOUT)",
    )
    flag("--log-level", choices=["debug", "info", "warning", "error"])
    flag("--log-format", choices=["text", "json"])

    help_text = "print the CustomResourceDefinitions, or write them into a directory"
    crds = commands.add_parser("crds", help=help_text, description=help_text)
    crds.add_argument(
        "--output", metavar="DIR", help="write one YAML file per CRD into DIR instead of stdout"
    )


def main(arguments: argparse.Namespace) -> int:
    if arguments.command == "crds":
        return _crds(arguments.output)
    return _controller(arguments)


def _crds(output: str | None) -> int:
    from agent.controller.crds import render_crds

    documents = render_crds()
    if output is None:
        sys.stdout.write("---\n".join(documents.values()))
        return EXIT_OK
    directory = Path(output)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in documents.items():
        (directory / name).write_text(text)
    print(f"wrote {len(documents)} CRD(s) to {directory}")
    return EXIT_OK


def _controller(arguments: argparse.Namespace) -> int:
    from agent.controller.settings import load_controller_settings
    from agent.logs import configure_logging

    try:
        settings = load_controller_settings(
            listen=arguments.listen,
            namespaces=arguments.namespaces,
            peering=arguments.peering,
            standalone=arguments.standalone,
            cache_seconds=arguments.cache_seconds,
            lease_revoke_grace=arguments.lease_revoke_grace,
            lease_renewal_threshold=arguments.lease_renewal_threshold,
            api_startup_timeout=arguments.api_startup_timeout,
            log_level=arguments.log_level,
            log_format=arguments.log_format,
        )
    except SettingsError as error:
        print(f"secrets-agent: {error}", file=sys.stderr)
        return EXIT_INVALID
    configure_logging(level=settings.log_level, log_format=settings.log_format)
    if settings.log_level != "debug":
        # kopf logs "Handler ... succeeded." at info for every event of every object, which
        # would be most of the log; its warnings and errors stay.
        logging.getLogger("kopf.objects").setLevel(
            max(logging.WARNING, logging.getLevelName(settings.log_level.upper()))
        )
    try:
        from agent.controller.handlers import Controller, StartupError
    except ImportError as error:
        print(
            f"secrets-agent: the controller needs kopf ({error.name} is missing); install "
            "secrets-agent[controller]",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        asyncio.run(Controller(settings).run())
    except StartupError as error:
        print(f"secrets-agent: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        print(f"secrets-agent: controller failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
