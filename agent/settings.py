"""Agent-wide settings, from command-line flags and `SECRETS_AGENT_*` environment variables.

A flag wins over its variable, and the variable over the default, so a Helm chart or a pod spec
sets the agent up without a second file format. Standard variables (`AWS_*`, `VAULT_*`) are not
read here: boto3 and the Vault store read them with their usual meaning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent.errors import SettingsError
from agent.writer import FileOwnership

DEFAULT_LISTEN = "0.0.0.0:8741"


class Settings(BaseSettings):
    """Every agent-wide setting; see the README's settings table for each one's meaning."""

    model_config = SettingsConfigDict(env_prefix="SECRETS_AGENT_", extra="forbid", frozen=True)

    config: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    output_dir: Path = Path("/var/run/secrets-agent/secrets")
    refs_dir: Path = Path("/var/run/secrets-agent/refs")
    listen: str = DEFAULT_LISTEN
    file_mode: Annotated[int, NoDecode] = 0o400
    file_uid: int | None = Field(default=None, ge=0)
    file_gid: int | None = Field(default=None, ge=0)
    nested_keys: bool = False
    timeout: float = Field(default=60.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    pod_token: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")

    @field_validator("config", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(part.strip()) for part in value.split(",") if part.strip()]
        return value

    @field_validator("file_mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise ValueError("must be an octal mode such as 0400 or 0440") from None
        if isinstance(value, int) and not 0 <= value <= 0o777:
            raise ValueError("must be between 0000 and 0777")
        return value

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, separator, port = value.rpartition(":")
        if not separator or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 0.0.0.0:8741 or 127.0.0.1:0")
        return value

    @property
    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)

    @property
    def ownership(self) -> FileOwnership:
        return FileOwnership(mode=self.file_mode, uid=self.file_uid, gid=self.file_gid)


def load_settings(**overrides: object) -> Settings:
    """Build the settings from flags (`overrides`, None meaning not given) and the environment.

    Raises SettingsError naming the flag and its variable.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False, include_input=False):
            name = str(item["loc"][0]) if item["loc"] else "settings"
            flag = "--" + name.replace("_", "-")
            variable = "SECRETS_AGENT_" + name.upper()
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{flag} ({variable}): {message}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
