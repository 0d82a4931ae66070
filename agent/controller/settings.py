"""Settings of `secrets-agent controller`, from flags and `SECRETS_AGENT_CONTROLLER_*` variables.

A flag wins over its variable, and the variable over the default, as for the agent's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent.settings import build_settings, check_listen, split_listen

DEFAULT_LISTEN = "0.0.0.0:8080"


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
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    # The controller's own service account token, used by stores without a serviceAccountRef.
    pod_token: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        return check_listen(value, example="0.0.0.0:8080")

    @property
    def listen_address(self) -> tuple[str, int]:
        return split_listen(self.listen)


def load_controller_settings(**overrides: object) -> ControllerSettings:
    """Build the settings from flags (`overrides`, None meaning not given) and the environment.

    Raises SettingsError naming the flag and its variable.
    """
    return build_settings(
        ControllerSettings,
        overrides,
        prefix="SECRETS_AGENT_CONTROLLER_",
        what="controller settings",
    )
