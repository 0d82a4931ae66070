"""Dynamic secrets in the controller: the agent's `LeaseManager`, one per namespace, on asyncio.

`DynamicSecrets` serves the `dataFrom[].sourceRef.generatorRef` entries of ExternalSecrets with
the agent's own lease rules (see agent.leases and docs/leases.md). What it adds for a cluster:

- Generators are `VaultDynamicSecret` objects of `secrets-agent.io/v1alpha1`, found in the
  ExternalSecret's own namespace. A generatorRef with External Secrets Operator's apiVersion
  (`generators.external-secrets.io/v1alpha1`) names the same object. Each namespace has its own
  manager, so a generator logs in with references of its own namespace only, as a SecretStore.
- The lease owner is the ExternalSecret (`namespace/name`), not the target Secret, so two
  ExternalSecrets naming one generator get separate credentials, as in External Secrets Operator.
- Managers run their blocking Vault requests in one daemon thread per namespace; everything they
  call back (`reschedule_task`, `sync_soon`, the state store) is handed to the event loop.
- Lease records are saved in the annotation `secrets-agent.io/leases` of the managed Secret,
  keyed by ExternalSecret name. They contain lease ids, times and secret key names, never a
  value or a token. The reconcile writes them together with the data they describe. After a
  renewal the lease loop asks the ExternalSecret's daemon to update the annotation alone
  (`lease_records_changed`).
  After a restart, the first reconcile of an ExternalSecret offers its records back to the
  manager, which recovers the values from the Secret's data and renews or looks up each lease
  with Vault instead of requesting new credentials.
- A record is adopted only when it names a generator of the namespace and, when it has a lease
  id, that id lies under the generator's path, so an edited annotation cannot make the
  controller renew or revoke leases of another path.

When an ExternalSecret is deleted or its generator entry goes away, its lease is released and
revoked after `--lease-revoke-grace`, as the agent does. When its daemon stops for any other
reason (the replica pauses for another leader, or exits), its leases are handed over: they are
neither renewed nor revoked here any more, and the next leader adopts them from the annotation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from agent.controller import LEASES_ANNOTATION
from agent.controller.cache import DaemonThreadExecutor, ExecutorClosedError
from agent.controller.kube import KubeApiError, KubeClient, resource_path
from agent.declarations import ExternalSecretDeclaration, load_manifest
from agent.errors import DeclarationErrors, StoreError
from agent.generators import GeneratorDeclaration
from agent.lease_state import LeaseRecord
from agent.leases import LeaseManager, LeaseMetrics, LeaseSettings
from agent.logs import log_event
from agent.metrics import Metrics
from agent.refs import ReferenceResolver
from agent.snapshot import GeneratedValue, LeaseUse

logger = logging.getLogger("agent.controller.leases")

GENERATOR_PLURAL = "vaultdynamicsecrets"
# The loop looks at its managers at least this often, so that a step of the clock is noticed.
MAX_IDLE_SECONDS = 60.0
# How long stopping waits for the managers to let go; a hung Vault request is abandoned.
CLOSE_TIMEOUT_SECONDS = 1.0
_RECORDS = TypeAdapter(list[LeaseRecord])
_KEPT_MEANWHILE = (
    "meanwhile the Secret keeps its data, and a lease it holds is renewed but not replaced, so "
    "the credentials end at the lease's max TTL"
)

GeneratorKey = tuple[str, str]  # (namespace, name)
_Result = TypeVar("_Result")
Resolver = Callable[[str], ReferenceResolver]
Waker = Callable[[tuple[str, str], str], None]


def lease_target(namespace: str, name: str) -> str:
    """Return the lease owner of an ExternalSecret: `namespace/name`."""
    return f"{namespace}/{name}"


def uses_generators(declaration: ExternalSecretDeclaration) -> bool:
    return any(item.source_ref is not None for item in declaration.spec.data_from)


def encode_records(records: Sequence[LeaseRecord]) -> list[dict[str, Any]]:
    """Return records as JSON-ready objects, in a stable order."""
    ordered = sorted(records, key=lambda r: (r.entry, r.superseded, r.issued_at, r.lease_id))
    return [dataclasses.asdict(record) for record in ordered]


def decode_records(secret: Mapping[str, Any] | None, owner: str) -> list[LeaseRecord]:
    """Return the records one ExternalSecret saved on a Secret; [] when none or unreadable."""
    text = (((secret or {}).get("metadata") or {}).get("annotations") or {}).get(LEASES_ANNOTATION)
    if not text:
        return []
    try:
        saved = json.loads(text)
        return _RECORDS.validate_python(saved.get(owner) or [])
    except (json.JSONDecodeError, AttributeError, ValidationError):
        log_event(logger, logging.WARNING, "lease_records_ignored", owner=owner, reason="invalid")
        return []


def significant(records: list[dict[str, Any]]) -> str:
    """Return the part of encoded records whose change is worth a write of the annotation.

    A renewal of the generator's own Vault token moves every record's `token_expires_at`, and
    writing every Secret of the namespace for that alone would be a burst of writes. The saved
    value is earlier than the real one, so it errs on the safe side (an adopted lease is replaced
    sooner), and the next write for another reason brings it up to date.
    """
    trimmed = [{k: v for k, v in record.items() if k != "token_expires_at"} for record in records]
    return json.dumps(trimmed, sort_keys=True)


class GeneratorIndex:
    """VaultDynamicSecret objects seen by the watch or read on demand, by (namespace, name)."""

    def __init__(self) -> None:
        self.generators: dict[GeneratorKey, GeneratorDeclaration] = {}
        self.invalid: dict[GeneratorKey, str] = {}

    def update(self, body: Mapping[str, Any]) -> GeneratorKey:
        """Record a generator object; return its key. An invalid one is kept with its problems."""
        from agent.controller.reconcile import declaration_problems

        metadata = body.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        try:
            declaration = load_manifest(body, source=f"VaultDynamicSecret {key[0]}/{key[1]}")
        except DeclarationErrors as error:
            self.generators.pop(key, None)
            self.invalid[key] = declaration_problems(error)
            return key
        assert isinstance(declaration, GeneratorDeclaration)
        self.invalid.pop(key, None)
        self.generators[key] = dataclasses.replace(declaration, namespace=key[0])
        return key

    def remove(self, key: GeneratorKey) -> None:
        self.generators.pop(key, None)
        self.invalid.pop(key, None)


@dataclass
class _State:
    """The declaration a LeaseManager reads as `syncer.states[target]`."""

    declaration: ExternalSecretDeclaration


@dataclass
class _Declarations:
    """The generators of one namespace, which a LeaseManager reads as `syncer.declarations`.

    The event loop replaces the dict instead of changing it, because managers iterate it in
    worker threads.
    """

    generators: dict[tuple[str, str], GeneratorDeclaration] = field(default_factory=dict)


class _SecretContents:
    """The data of each owner's Secret, from which a LeaseManager recovers the values of
    adopted leases. The manager reads it as `syncer.writer`."""

    output_dir = None

    def __init__(self) -> None:
        self.contents: dict[str, Mapping[str, bytes]] = {}

    def read(self, target: str) -> Mapping[str, bytes] | None:
        return self.contents.get(target)


class _AnnotationState:
    """The LeaseStateStore of a controller manager: records live on the managed Secrets.

    `read` returns nothing, because records are offered per ExternalSecret when it is first
    reconciled. `write` passes the records of every owner to the event loop.
    """

    def __init__(self, namespace: str, saved: Callable[[str, dict[str, list[LeaseRecord]]], None]):
        self.namespace = namespace
        self._saved = saved

    def __str__(self) -> str:
        return f"Secret annotations in namespace {self.namespace}"

    def read(self) -> list[LeaseRecord]:
        return []

    def write(self, records: Sequence[LeaseRecord], *, now: float) -> None:
        grouped: dict[str, list[LeaseRecord]] = {}
        for record in records:
            grouped.setdefault(record.target, []).append(record)
        self._saved(self.namespace, grouped)


class _Namespace:
    """One namespace's manager, the `syncer` it reads, and its tick schedule (manager clock)."""

    def __init__(self, namespace: str, owner: DynamicSecrets) -> None:
        self.namespace = namespace
        self.owner = owner
        self.declarations = _Declarations()
        self.states: dict[str, _State] = {}
        self.writer = _SecretContents()
        self.metrics: Metrics = owner.metrics
        self.due = 0.0
        # Owners whose saved records were offered to the manager since it last held them.
        self.offered: set[str] = set()
        # One daemon thread per namespace: the manager's lock lets one call run at a time
        # anyway, and a Vault request that never returns cannot delay the process's exit.
        self.executor = DaemonThreadExecutor(f"leases-{namespace}")
        self.manager = LeaseManager(
            self,  # type: ignore[arg-type]  # the part of a Syncer that a manager reads
            settings=owner.settings,
            clock=owner.clock,
            rng=owner.rng,
            refs=owner.resolver(namespace),
            metrics=owner.lease_metrics,
            state=_AnnotationState(namespace, owner.records_saved),
            keep_without_generator=True,
        )

    async def run(self, function: Callable[..., _Result], *args: Any, **kwargs: Any) -> _Result:
        """Run a manager call on this namespace's worker thread."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, partial(function, *args, **kwargs))
        except ExecutorClosedError:
            raise StoreError(
                "the controller is stopping",
                store="VaultDynamicSecret",
                fix="none needed; the next leader serves this ExternalSecret",
            ) from None

    # Called by the manager on its syncer, from a worker thread.

    def reschedule_task(self, task: Any, delay: float = 0.0) -> None:
        self.owner.call_soon(self._schedule, delay)

    def sync_soon(self, target: str) -> None:
        self.owner.call_soon(self.owner.wake_owner, target, "lease_rotated")

    def _schedule(self, delay: float) -> None:
        self.due = min(self.due, self.owner.clock() + delay)
        self.owner.wake()


class DynamicSecrets:
    """Every namespace's LeaseManager and the loop that runs their ticks."""

    def __init__(
        self,
        *,
        client: KubeClient,
        settings: LeaseSettings,
        metrics: Metrics,
        resolver: Resolver,
        wake_owner: Waker,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.resolver = resolver
        self.clock = clock
        self.rng = rng
        self.lease_metrics = LeaseMetrics(metrics.registry)
        self.index = GeneratorIndex()
        self._wake_owner = wake_owner
        self._namespaces: dict[str, _Namespace] = {}
        # The records annotation of each owner as this process last wrote or read it, in the
        # form `significant` returns.
        self.saved: dict[str, str] = {}
        # ExternalSecrets (as (namespace, name)) whose last reconcile found a generator missing
        # or invalid, by that generator; they are woken when it becomes valid.
        self._waiting: dict[GeneratorKey, set[tuple[str, str]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    # -- the reconcile's side ------------------------------------------------------------------

    async def values_for(
        self,
        declaration: ExternalSecretDeclaration,
        *,
        secret: Mapping[str, Any] | None,
        data: Mapping[str, bytes],
    ) -> dict[int, GeneratedValue | StoreError]:
        """Return each generator entry's response (or failure) by its `dataFrom` index.

        `secret` and `data` are the target Secret as it is now: the first call for an
        ExternalSecret offers the lease records saved on it, whose values come from `data`.
        """
        assert declaration.namespace is not None
        target = lease_target(declaration.namespace, declaration.name)
        space = self._namespace(declaration.namespace)
        missing = await self._load_generators(declaration)
        self._declare(space, target, declaration)
        if target not in space.offered:
            space.offered.add(target)
            saved = decode_records(secret, declaration.name)
            await self._load_record_generators(declaration.namespace, saved)
            records = self._trusted(space, target, saved)
            self.saved[target] = significant(encode_records(records))
            if records:
                space.writer.contents = {**space.writer.contents, target: dict(data)}
                await space.run(space.manager.adopt_records, records)
        values = await space.run(space.manager.values_for, declaration, target=target)
        space.writer.contents = {k: v for k, v in space.writer.contents.items() if k != target}
        values.update(missing)
        return values

    def declared(self, declaration: ExternalSecretDeclaration) -> None:
        """Tell the manager about an ExternalSecret that has no generator entry now, so a lease
        it held for a removed entry is released."""
        assert declaration.namespace is not None
        space = self._namespaces.get(declaration.namespace)
        target = lease_target(declaration.namespace, declaration.name)
        if space is not None and target in space.states:
            self._declare(space, target, declaration)
            space._schedule(0.0)

    async def records(
        self, declaration: ExternalSecretDeclaration, leases: Sequence[LeaseUse] = ()
    ) -> list[dict[str, Any]]:
        """Return the records to save for an ExternalSecret, given the leases a snapshot holds."""
        assert declaration.namespace is not None
        space = self._namespaces.get(declaration.namespace)
        if space is None:
            return []
        target = lease_target(declaration.namespace, declaration.name)
        records = await space.run(space.manager.records_for, target, tuple(leases))
        return encode_records(records)

    def written(
        self, declaration: ExternalSecretDeclaration, records: list[dict[str, Any]]
    ) -> None:
        """Remember which records the annotation contains now."""
        assert declaration.namespace is not None
        target = lease_target(declaration.namespace, declaration.name)
        self.saved[target] = significant(records)

    async def committed(
        self, declaration: ExternalSecretDeclaration, leases: Sequence[LeaseUse]
    ) -> None:
        """Tell the manager that the Secret now contains these leases, which starts the grace
        of the leases they replaced."""
        assert declaration.namespace is not None
        space = self._namespaces.get(declaration.namespace)
        if space is not None and leases:
            target = lease_target(declaration.namespace, declaration.name)
            await space.run(space.manager.committed, target, tuple(leases))

    async def not_written(
        self, declaration: ExternalSecretDeclaration, leases: Sequence[LeaseUse]
    ) -> None:
        """Tell the manager that the Secret write carrying these leases failed."""
        assert declaration.namespace is not None
        space = self._namespaces.get(declaration.namespace)
        if space is not None and leases:
            await space.run(space.manager.not_written, tuple(leases))

    async def removed(self, namespace: str, name: str, *, deleted: bool) -> None:
        """Stop serving an ExternalSecret: revoke its leases after the grace when it was
        deleted, else hand them over to whichever replica reconciles it next."""
        space = self._namespaces.get(namespace)
        target = lease_target(namespace, name)
        self.saved.pop(target, None)
        for waiting in self._waiting.values():
            waiting.discard((namespace, name))
        if space is None or target not in space.states:
            return
        if not deleted:
            await space.run(space.manager.forget, target)
        space.states = {k: v for k, v in space.states.items() if k != target}
        space.offered.discard(target)
        space._schedule(0.0)

    # -- generators ----------------------------------------------------------------------------

    def generator_changed(self, key: GeneratorKey) -> None:
        """Pass a created, changed or deleted generator to its namespace's manager, and wake
        the ExternalSecrets that waited for it when it is valid now."""
        if key in self.index.generators:
            for owner in sorted(self._waiting.pop(key, ())):
                # The reason "store" also wakes an ExternalSecret with refreshInterval 0.
                self._wake_owner(owner, "store")
        space = self._namespaces.get(key[0])
        if space is None:
            return
        current = space.declarations.generators
        previous = next((g for g in current.values() if g.name == key[1]), None)
        declaration = self.index.generators.get(key)
        if previous is declaration:
            return
        generators = {ref: g for ref, g in current.items() if g.name != key[1]}
        if declaration is not None:
            generators[declaration.ref] = declaration
        space.declarations.generators = generators
        space._schedule(0.0)

    async def _load_generators(
        self, declaration: ExternalSecretDeclaration
    ) -> dict[int, StoreError]:
        """Find every generator the declaration names; return the failure of each that is
        missing or invalid, by `dataFrom` index."""
        assert declaration.namespace is not None
        owner = (declaration.namespace, declaration.name)
        for waiting in self._waiting.values():
            waiting.discard(owner)
        failures: dict[int, StoreError] = {}
        for index, item in enumerate(declaration.spec.data_from):
            if item.source_ref is None:
                continue
            name = item.source_ref.generator_ref.name
            key = (declaration.namespace, name)
            description = f"VaultDynamicSecret {declaration.namespace}/{name}"
            if key not in self.index.generators and key not in self.index.invalid:
                await self._read_generator(key, description)
            if key in self.index.generators:
                self.generator_changed(key)
                continue
            self._waiting.setdefault(key, set()).add(owner)
            if key in self.index.invalid:
                failures[index] = StoreError(
                    f"{description} is invalid: {self.index.invalid[key]}",
                    store=f"VaultDynamicSecret/{declaration.namespace}/{name}",
                    fix=f"fix the generator; {_KEPT_MEANWHILE}",
                )
            else:
                failures[index] = StoreError(
                    f"{description} not found",
                    store=f"VaultDynamicSecret/{declaration.namespace}/{name}",
                    fix="create it in the ExternalSecret's namespace, or fix generatorRef.name; "
                    f"{_KEPT_MEANWHILE}",
                )
        self._waiting = {key: owners for key, owners in self._waiting.items() if owners}
        return failures

    async def _read_generator(self, key: GeneratorKey, description: str) -> None:
        path = resource_path(GENERATOR_PLURAL, name=key[1], namespace=key[0])
        try:
            body = await self.client.get(path)
        except KubeApiError as error:
            raise StoreError(
                f"reading {description} failed: {error}",
                store=f"VaultDynamicSecret/{key[0]}/{key[1]}",
            ) from None
        if body is not None:
            self.index.update(body)

    # -- the lease loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the managers' ticks when due, until cancelled."""
        self._loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            for space in list(self._namespaces.values()):
                if space.due <= self.clock():
                    await self._tick(space)
            dues = [space.due for space in self._namespaces.values() if math.isfinite(space.due)]
            delay = MAX_IDLE_SECONDS
            if dues:
                delay = min(delay, max(0.0, min(dues) - self.clock()))
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                except TimeoutError:
                    pass

    def wake(self) -> None:
        """Make the loop look at every manager's schedule now; call it on the event loop."""
        self._wake.set()

    async def close(self, *, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Let go of every manager, keeping leases and tokens for the next controller.

        A manager still busy after `timeout` seconds is abandoned; its leases stay valid too.
        """
        spaces = list(self._namespaces.values())
        self._namespaces.clear()
        if not spaces:
            return
        closing = {
            asyncio.ensure_future(space.run(space.manager.close, revoke=False)): space
            for space in spaces
        }
        done, pending = await asyncio.wait(closing, timeout=timeout)
        for task in done:
            if task.exception() is not None:
                log_event(
                    logger,
                    logging.WARNING,
                    "lease_close_failed",
                    namespace=closing[task].namespace,
                    error=str(task.exception()),
                )
        for task in pending:
            task.cancel()
            log_event(
                logger,
                logging.WARNING,
                "lease_close_abandoned",
                namespace=closing[task].namespace,
                timeout_s=timeout,
            )
        for space in spaces:
            space.executor.shutdown(wait=False, cancel_futures=True)

    async def _tick(self, space: _Namespace) -> None:
        space.due = math.inf  # a reschedule during the tick lowers it again
        # The tick's delay counts from a moment during the tick; counting it from the start
        # errs early, never late, should the clock move meanwhile.
        started = self.clock()
        try:
            delay = await space.run(space.manager.tick)
        except Exception as error:  # one namespace's defect must not stop the others
            log_event(
                logger,
                logging.ERROR,
                "lease_tick_failed",
                namespace=space.namespace,
                error=f"{type(error).__name__}: {error}",
            )
            delay = MAX_IDLE_SECONDS
        if delay is not None:
            space.due = min(space.due, started + delay)

    # -- called back from managers -------------------------------------------------------------

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback` on the event loop; safe from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)

    def wake_owner(self, target: str, reason: str) -> None:
        namespace, _, name = target.partition("/")
        self._wake_owner((namespace, name), reason)

    def records_saved(self, namespace: str, grouped: dict[str, list[LeaseRecord]]) -> None:
        """Receive a manager's records (worker thread); wake each owner whose records changed."""
        encoded = {target: encode_records(records) for target, records in grouped.items()}
        self.call_soon(self._compare_saved, namespace, encoded)

    def _compare_saved(self, namespace: str, encoded: dict[str, list[dict[str, Any]]]) -> None:
        space = self._namespaces.get(namespace)
        if space is None:
            return
        for target in space.states:
            if self.saved.get(target) != significant(encoded.get(target, [])):
                self.wake_owner(target, "lease_records_changed")

    # -- helpers -------------------------------------------------------------------------------

    def _namespace(self, namespace: str) -> _Namespace:
        space = self._namespaces.get(namespace)
        if space is None:
            space = self._namespaces[namespace] = _Namespace(namespace, self)
            # Every generator of the namespace, also those no ExternalSecret names any more, so
            # that a saved record naming one is still adopted and its lease revoked.
            space.declarations.generators = {
                generator.ref: generator
                for key, generator in self.index.generators.items()
                if key[0] == namespace
            }
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
        return space

    def _declare(
        self, space: _Namespace, target: str, declaration: ExternalSecretDeclaration
    ) -> None:
        space.states = {**space.states, target: _State(declaration)}

    async def _load_record_generators(self, namespace: str, records: list[LeaseRecord]) -> None:
        """Read the generators that saved records name and the watch has not delivered yet.

        Right after a start, the ExternalSecret can be reconciled before the watch of
        VaultDynamicSecrets lists the generator that its old records name, for example after a
        generatorRef changed while no controller ran. Without that generator the records would
        be dropped, and their leases left to their TTL.
        """
        for name in sorted({record.generator for record in records}):
            key = (namespace, name)
            if key in self.index.generators or key in self.index.invalid:
                continue
            try:
                await self._read_generator(key, f"VaultDynamicSecret {namespace}/{name}")
            except StoreError as error:
                # The records of this generator are dropped, as for a deleted generator.
                log_event(
                    logger,
                    logging.WARNING,
                    "lease_records_ignored",
                    namespace=namespace,
                    generator=name,
                    reason="generator_unreadable",
                    error=str(error),
                )
                continue
            if key in self.index.generators:
                self.generator_changed(key)

    def _trusted(
        self, space: _Namespace, target: str, records: list[LeaseRecord]
    ) -> list[LeaseRecord]:
        """Keep the records of `target` that name a generator of the namespace and, if they
        carry a lease id, one under that generator's path."""
        generators = {g.name: g for g in space.declarations.generators.values()}
        kept = []
        for record in records:
            generator = generators.get(record.generator)
            if record.target != target or generator is None:
                continue
            if record.lease_id and not record.lease_id.startswith(generator.spec.path + "/"):
                log_event(
                    logger,
                    logging.WARNING,
                    "lease_records_ignored",
                    owner=record.target,
                    path=generator.spec.path,
                    reason="lease_outside_generator_path",
                )
                continue
            kept.append(record)
        return kept
