"""Settings of `secrets-agent controller`, from flags and `SECRETS_AGENT_CONTROLLER_*` variables.

A flag wins over its variable, and the variable over the default, as for the agent's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent.errors import SettingsError

DEFAULT_LISTEN = "0.0.0.0:8080"


class ControllerSettings(BaseSettings):
    """Every controller setting; docs/controller.md describes each one."""

    model_config = SettingsConfigDict(
        env_prefix="SECRETS_AGENT_CONTROLLER_", extra="forbid", frozen=True
    )

    listen: str = DEFAULT_LISTEN
    # Namespaces to watch; empty watches the whole cluster.
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The ClusterKopfPeering object the replicas share for leader election.
    peering: str = "secrets-agent"
    standalone: bool = False
    # How long a backend read is shared between ExternalSecrets, in seconds.
    cache_seconds: float = Field(default=10.0, ge=0)
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
        host, separator, port = value.rpartition(":")
        if not separator or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 0.0.0.0:8080 or 127.0.0.1:0")
        return value

    @property
    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)


def load_controller_settings(**overrides: object) -> ControllerSettings:
    """Build the settings from flags (`overrides`, None meaning not given) and the environment.

    Raises SettingsError naming the flag and its variable.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return ControllerSettings(**given)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False, include_input=False):
            name = str(item["loc"][0]) if item["loc"] else "settings"
            flag = "--" + name.replace("_", "-")
            variable = "SECRETS_AGENT_CONTROLLER_" + name.upper()
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{flag} ({variable}): {message}")
        raise SettingsError("invalid controller settings: " + "; ".join(problems)) from None
