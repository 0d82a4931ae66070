"""Exception types shared by every mechanism of the agent.

Every message is written for the person who has to fix the problem: it names the declaration,
store, field or remote key involved and gives the fix. No message ever contains a secret value,
so any of these exceptions may be logged or printed as it is.
"""

from __future__ import annotations

# Characters of a name (remote key, secret key) that a message quotes. A name built by a
# rewrite or listed by a store can be megabytes long, and one log line must stay short.
MAX_NAME_SHOWN = 100


def shorten_name(name: str, *, limit: int = MAX_NAME_SHOWN) -> str:
    """Return `name`, or when it is longer than `limit`, its first `limit` characters, "…" and
    its length."""
    if len(name) <= limit:
        return name
    return f"{name[:limit]}… ({len(name)} characters)"


class AgentError(Exception):
    """Base of every error the agent reports to a user instead of a traceback."""


class SettingsError(AgentError):
    """An agent-wide setting (flag or SECRETS_AGENT_* variable) is invalid."""


class DeclarationError(AgentError):
    """One problem in one declaration document.

    `source` is the file, `document` the 1-based position of the document in that file, `kind`
    and `name` identify the object when they could be read, `field` is the dotted field path
    (`spec.data[0].remoteRef.key`), `problem` is what is wrong and `fix` the remedy.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str = "",
        document: int | None = None,
        kind: str = "",
        name: str = "",
        field: str = "",
        fix: str = "",
    ) -> None:
        self.problem = problem
        self.source = source
        self.document = document
        self.kind = kind
        self.name = name
        self.field = field
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        where = []
        if self.source:
            where.append(self.source)
        if self.document is not None:
            where.append(f"document {self.document}")
        if self.kind or self.name:
            where.append(f"{self.kind or 'object'} {self.name or '(unnamed)'}".strip())
        text = ", ".join(where)
        if self.field:
            text = f"{text}: {self.field}" if text else self.field
        text = f"{text}: {self.problem}" if text else self.problem
        if self.fix:
            text = f"{text}; {self.fix}"
        return text


class DeclarationErrors(AgentError):
    """Every problem found while loading the declarations, reported together."""

    def __init__(self, errors: list[DeclarationError]) -> None:
        self.errors = errors
        lines = [f"{len(errors)} invalid declaration(s):"] + [f"  - {e}" for e in errors]
        super().__init__("\n".join(lines))


class StoreError(AgentError):
    """A store could not deliver a remote key.

    `transient` errors (connection refused, 5xx, throttling, a sealed Vault) are worth retrying
    with backoff; the others (access denied, not found, invalid response) need a person to act.
    """

    transient = False

    def __init__(self, message: str, *, store: str, remote_key: str = "", fix: str = "") -> None:
        self.message = message
        self.store = store
        self.remote_key = remote_key
        self.fix = fix
        text = f"store {store}: "
        if remote_key:
            text += f"{shorten_name(remote_key)}: "
        text += message
        if fix:
            text += f"; {fix}"
        super().__init__(text)


class StoreUnavailableError(StoreError):
    """The store gave no usable response now; a later attempt may succeed."""

    transient = True


class AccessDeniedError(StoreError):
    """The store rejected the agent's identity or its permission to read a remote key."""


class RemoteKeyNotFoundError(StoreError):
    """The remote key, version or property does not exist in the store."""


class InvalidValueError(StoreError):
    """The remote value cannot be used as declared (not JSON where a property is asked, ...)."""
