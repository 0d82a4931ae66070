"""The store interface: an authenticated, reusable connection to one backend.

A store turns remote keys into remote values. It knows nothing about secret keys, properties or
targets: `agent.snapshot` applies those to the values. Backends are imported only when a store
of that kind is opened, so an agent that only talks to Vault never imports boto3.

A store is used from one thread at a time (the sync loop serialises calls to it).
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.declarations import StoreDeclaration
    from agent.metrics import Metrics
    from agent.refs import ReferenceResolver

# requests silences urllib3's warning about missing SOCKS support when it is imported. Stores of
# different kinds open in parallel threads, and botocore's import, under warnings.catch_warnings,
# can restore the filters in one thread after requests changed them in another. This filter is
# set before any thread starts, so the restore keeps it.
warnings.filterwarnings("ignore", message="SOCKS support in urllib3", module="urllib3")

# A remote value: raw bytes (AWS parameters and secrets) or a decoded JSON object (Vault KV data).
RemoteValue = bytes | Mapping[str, Any]


@dataclass(frozen=True)
class RemoteKey:
    """A remote key and the optional version selector declared next to it."""

    key: str
    version: str | None = None

    def __str__(self) -> str:
        return self.key if self.version is None else f"{self.key} (version {self.version})"


class Store(abc.ABC):
    """An open connection to one declared store.

    `fetch` and `fetch_prefix` raise `StoreError` subclasses for failures that concern the whole
    call (connection refused, access denied for the identity, throttling after retries). A failure
    that concerns one remote key is returned in place of its value, so one missing parameter does
    not hide the others of the same batch.
    """

    def __init__(
        self, declaration: StoreDeclaration, *, refs: ReferenceResolver, metrics: Metrics
    ) -> None:
        self.declaration = declaration
        self.name = declaration.display_name
        self.refs = refs
        self.metrics = metrics

    @abc.abstractmethod
    def fetch(self, keys: Sequence[RemoteKey]) -> dict[RemoteKey, RemoteValue | Exception]:
        """Fetch the given remote keys, batched as the backend allows.

        Every requested key is in the result: its value, or a `StoreError` (usually
        `RemoteKeyNotFoundError`) for that key alone.
        """

    @abc.abstractmethod
    def fetch_prefix(self, path: str) -> dict[str, RemoteValue]:
        """Fetch every remote key beneath `path`, recursively, keyed by full remote key.

        Returns an empty dict when nothing exists beneath the path.
        """

    def close(self) -> None:  # noqa: B027 - stores without resources need not override it
        """Release the connection and any credentials the store created (e.g. revoke a token)."""


def open_store(
    declaration: StoreDeclaration, *, refs: ReferenceResolver, metrics: Metrics
) -> Store:
    """Create the store for a declaration, importing only the backend it needs."""
    provider = declaration.spec.provider
    if provider.vault is not None:
        from agent.stores.vault import VaultStore

        return VaultStore(declaration, refs=refs, metrics=metrics)
    assert provider.aws is not None
    if provider.aws.service == "ParameterStore":
        from agent.stores.ssm import ParameterStore

        return ParameterStore(declaration, refs=refs, metrics=metrics)
    from agent.stores.secretsmanager import SecretsManagerStore

    return SecretsManagerStore(declaration, refs=refs, metrics=metrics)
