"""Agent-wide settings, from command-line flags and `SECRETS_AGENT_*` environment variables.

A flag wins over its variable, and the variable over the default, so a Helm chart or a pod spec
sets the agent up without a second file format. Standard variables (`AWS_*`, `VAULT_*`) are not
read here: boto3 and the Vault store read them with their usual meaning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent.errors import SettingsError
from agent.models import signal_from_name
from agent.writer import FileOwnership

DEFAULT_LISTEN = "0.0.0.0:8741"
SettingsModel = TypeVar("SettingsModel", bound=BaseSettings)
MAX_ID = 2**32 - 2  # the largest uid or gid Linux accepts; 2**32 - 1 means "no change"


class Settings(BaseSettings):
    """Every agent-wide setting; see the README's settings table for each one's meaning."""

    model_config = SettingsConfigDict(env_prefix="SECRETS_AGENT_", extra="forbid", frozen=True)

    config: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    output_dir: Path = Path("/var/run/secrets-agent/secrets")
    refs_dir: Path = Path("/var/run/secrets-agent/refs")
    listen: str = DEFAULT_LISTEN
    file_mode: Annotated[int, NoDecode] = 0o400
    file_uid: int | None = Field(default=None, ge=0, le=MAX_ID)
    file_gid: int | None = Field(default=None, ge=0, le=MAX_ID)
    nested_keys: bool = False
    timeout: float = Field(default=60.0, gt=0, le=86400, allow_inf_nan=False)
    # Dynamic secrets; docs/leases.md gives the reasons for the defaults.
    # allow_inf_nan=False on every float: NaN fails no comparison, so the range checks alone
    # would report "nan" with a misleading bound instead of "must be a finite number".
    lease_revoke_grace: float = Field(default=60.0, ge=0, le=3600, allow_inf_nan=False)
    lease_renewal_threshold: float = Field(default=0.9, gt=0, lt=1, allow_inf_nan=False)
    revoke_on_exit: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    pod_token: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    # Notify targets and exec mode; docs/notify.md and docs/exec.md give the reasons for the
    # defaults.
    notify_delay: float = Field(default=2.0, ge=0, le=300, allow_inf_nan=False)
    notify_signal: str | None = None
    exec_on_change: Literal["restart", "signal", "none"] = "restart"
    exec_signal: str = "SIGHUP"
    exec_stop_timeout: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)
    # Run mode: reload the declarations when their files change; docs/config-reload.md.
    watch_config: bool = True

    @field_validator("config", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        # Both the variable and each repeated flag may hold a comma-separated list.
        parts = [value] if isinstance(value, str | Path) else value
        if not isinstance(parts, list):
            return value
        paths = []
        for part in parts:
            for item in str(part).split(","):
                if not item.strip():
                    raise ValueError("contains an empty path; remove the extra comma")
                paths.append(Path(item.strip()))
        return paths

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        # SECRETS_AGENT_LOG_LEVEL=DEBUG means what debug means, as it does for most programs.
        return value.lower() if isinstance(value, str) else value

    @field_validator("output_dir", "refs_dir", "pod_token", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        # Path("") is the current directory: an empty variable must not send secrets there.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty; give an absolute path")
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
        if isinstance(value, int) and value & 0o111:
            raise ValueError("must not set execute bits; secrets are data, e.g. use 0400 or 0440")
        if isinstance(value, int) and value & 0o022:
            raise ValueError("must not let the group or others write; e.g. use 0400 or 0440")
        if isinstance(value, int) and not value & 0o444:
            raise ValueError("must let someone read the files; e.g. use 0400 or 0440")
        return value

    @field_validator("exec_signal")
    @classmethod
    def _signal_name(cls, value: str) -> str:
        return signal_from_name(value).name

    @field_validator("notify_signal")
    @classmethod
    def _process_and_signal(cls, value: str | None) -> str | None:
        if value is None:
            return None
        process_name, _, signal_name = value.partition(":")
        if not process_name or "/" in process_name or not process_name.isprintable():
            raise ValueError("must be PROCESS_NAME or PROCESS_NAME:SIGNAL, e.g. nginx:SIGHUP")
        signal_from_name(signal_name or "SIGHUP")
        return value

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        return check_listen(value, example="0.0.0.0:8741")

    @property
    def listen_address(self) -> tuple[str, int]:
        return split_listen(self.listen)

    @property
    def ownership(self) -> FileOwnership:
        return FileOwnership(mode=self.file_mode, uid=self.file_uid, gid=self.file_gid)


def load_settings(**overrides: object) -> Settings:
    """Build the settings from flags (`overrides`, None meaning not given) and the environment.

    Raises SettingsError naming the flag and its variable.
    """
    return build_settings(Settings, overrides, prefix="SECRETS_AGENT_", what="settings")


def build_settings(
    model: type[SettingsModel], overrides: dict[str, object], *, prefix: str, what: str
) -> SettingsModel:
    """Build `model` from the flags given (None meaning not given) and the environment; raise
    SettingsError naming each invalid flag and its variable, in plain words."""
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return model(**given)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False, include_input=False):
            name = str(item["loc"][0]) if item["loc"] else "settings"
            flag = "--" + name.replace("_", "-")
            variable = prefix + name.upper()
            problems.append(f"{flag} ({variable}): {_describe(item)}")
        raise SettingsError(f"invalid {what}: " + "; ".join(problems)) from None


def check_listen(value: str, *, example: str) -> str:
    """Validate a `host:port` listen address; raise ValueError with an example."""
    host, separator, port = value.rpartition(":")
    if not separator or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port, e.g. {example} or 127.0.0.1:0")
    return value


def split_listen(listen: str) -> tuple[str, int]:
    """Split a validated listen address into host and port; an empty host means all."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def unknown_variables() -> list[str]:
    """Return the SECRETS_AGENT_* environment variables that match no setting (likely typos)."""
    known = {"SECRETS_AGENT_" + name.upper() for name in Settings.model_fields}
    # Variables the agent sets for notify commands, which may run secrets-agent themselves.
    known |= {
        "SECRETS_AGENT_CHANGED_TARGETS",
        "SECRETS_AGENT_CHANGED_KEYS",
        "SECRETS_AGENT_CHANGES",
        "SECRETS_AGENT_NOTIFY_TARGET",
    }
    return sorted(
        name for name in os.environ if name.startswith("SECRETS_AGENT_") and name not in known
    )


def _describe(item: Any) -> str:
    """Say what pydantic found wrong with a setting in plain words, without the value."""
    context = item.get("ctx", {})
    kind = item["type"]
    if kind == "value_error":
        return str(context.get("error", item["msg"]))
    plain = {
        "greater_than_equal": f"must be at least {context.get('ge')}",
        "greater_than": f"must be greater than {context.get('gt')}",
        "less_than_equal": f"must be at most {context.get('le')}",
        "less_than": f"must be less than {context.get('lt')}",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number of seconds, e.g. 60",
        "finite_number": "must be a finite number",
        "literal_error": f"must be one of {context.get('expected', '')}",
        "extra_forbidden": "is not a setting",
    }
    return plain.get(kind, item["msg"])
