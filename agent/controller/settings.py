"""Settings of `secrets-agent controller`, from flags and `SECRETS_AGENT_CONTROLLER_*` variables.

A flag wins over its variable, and the variable over the default, as for the agent's settings.
Namespace names are checked here, so a typo fails at start instead of watching nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent.errors import SettingsError
from agent.settings import build_settings, check_listen, split_listen

DEFAULT_LISTEN = "0.0.0.0:8080"
# A namespace name is an RFC 1123 label, as the API server validates it.
NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
MAX_NAMESPACE_LENGTH = 63


class ControllerSettings(BaseSettings):
    """Every controller setting; docs/controller.md describes each one."""

    model_config = SettingsConfigDict(
        env_prefix="SECRETS_AGENT_CONTROLLER_", extra="forbid", frozen=True
    )

    listen: str = DEFAULT_LISTEN
    # Namespaces to watch; empty watches the whole cluster.
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The ClusterKopfPeering object the replicas share for leader election; with `namespaces`,
    # the KopfPeering object of this name in each of them.
    peering: str = "secrets-agent"
    standalone: bool = False
    # How long a backend read is shared between ExternalSecrets, in seconds.
    cache_seconds: float = Field(default=10.0, ge=0)
    # Dynamic secrets, as for the agent (docs/leases.md): seconds replaced credentials stay
    # valid after the new ones are written, and the share of a non-renewable lease's TTL after
    # which it is fetched again.
    lease_revoke_grace: float = Field(default=60.0, ge=0, le=3600)
    lease_renewal_threshold: float = Field(default=0.9, gt=0, lt=1)
    # Seconds to wait at start for the Kubernetes API server to respond before exiting 1.
    api_startup_timeout: float = Field(default=30.0, ge=0, le=3600, allow_inf_nan=False)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    # The controller's own service account token, used by stores without a serviceAccountRef.
    pod_token: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        """Split comma-separated names, from the variable or from each `--namespace` flag."""
        if isinstance(value, str):
            if not value.strip():
                return []  # an empty variable means the same as an unset one: the whole cluster
            value = [value]
        if not isinstance(value, list):
            return value
        return split_namespaces([str(item) for item in value])

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        return check_listen(value, example="0.0.0.0:8080")

    @property
    def listen_address(self) -> tuple[str, int]:
        return split_listen(self.listen)


def split_namespaces(values: list[str]) -> list[str]:
    """Return the namespace names in `values`, each of which may list several separated by
    commas. Blanks around names are stripped, and empty names and repeats are dropped.

    Raises ValueError naming every invalid name, or when `values` is not empty but names none.
    """
    names: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip()
            if name and name not in names:
                names.append(name)
    if values and not names:
        raise ValueError(
            "names no namespace; give names separated by commas (team-a,team-b), or leave the "
            "setting out to watch the whole cluster"
        )
    invalid = [name for name in names if not _valid_namespace(name)]
    if invalid:
        listed = ", ".join(repr(name) for name in invalid)
        raise ValueError(
            f"{listed}: not a valid namespace name (lowercase letters, digits and '-', starting "
            f"and ending with a letter or digit, at most {MAX_NAMESPACE_LENGTH} characters); "
            "separate several names with commas, e.g. team-a,team-b"
        )
    return names


def _valid_namespace(name: str) -> bool:
    return len(name) <= MAX_NAMESPACE_LENGTH and NAMESPACE_NAME.fullmatch(name) is not None


def load_controller_settings(**overrides: object) -> ControllerSettings:
    """Build the settings from flags (`overrides`, None meaning not given) and the environment.

    Raises SettingsError naming the flag and its variable.
    """
    try:
        return build_settings(
            ControllerSettings,
            overrides,
            prefix="SECRETS_AGENT_CONTROLLER_",
            what="controller settings",
        )
    except SettingsError as error:
        # build_settings derives a flag from the field name, but the namespaces flag is
        # singular because it may be repeated.
        raise SettingsError(str(error).replace("--namespaces (", "--namespace (")) from None
