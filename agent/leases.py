"""Dynamic secrets and their leases: issued on first need, renewed, rotated, revoked after a grace.

`LeaseManager` serves the `dataFrom[].sourceRef.generatorRef` entries of the declarations. It
attaches itself to the `Syncer`. The sync round gets the values of each generator entry from it
(`values_for`) and reports which leases a written generation contains (`committed`). The loop
runs its `tick` as a periodic task.

Rules, with times on the manager's clock (Unix seconds):
- One lease per (target, `dataFrom` entry). Its response is read once and served from memory at
  every refresh of the ExternalSecret. It is not read again when the generator's own Vault token
  is renewed or replaced by a new login. All fields of one response come from one lease and are
  written in one generation.
- A lease ends at its own expiry, or earlier when the token that created it expires first and can
  no longer be extended, because Vault revokes a token's leases together with the token.
- Margin: new credentials are fetched no later than `margin` seconds before that end, with
  margin = min(grace + 30 s, TTL at issue / 4). The 30 s cover the request, the write and the
  notification. The grace (`--lease-revoke-grace`, default 60 s) keeps the old credentials valid
  while the application switches. For a lease shorter than 4 × (grace + 30 s) the margin is a
  quarter of its TTL, so the grace may then outlast the old lease.
- A renewable lease is renewed at 2/3 (±0.05) of its remaining time, asking for its first TTL
  again. A renewal that grants less has reached the max TTL: new credentials are fetched at 2/3
  of the granted remainder, or at the margin if that comes first. A renewal that Vault refuses
  for good (lease unknown or expired, not renewable, denied) fetches new credentials at once. A
  transient failure is retried with backoff (10 s doubling to 5 min) until the margin, and then
  new credentials are fetched.
- A lease that is not renewable (or a response with a TTL but no lease id) is replaced at
  threshold × TTL (`--lease-renewal-threshold`, default 0.9, ±0.05, set back to the threshold when
  the draw leaves (0, 1)), or at the margin if that comes first.
- Rotation: the new response replaces the old one at once, the target is synced at the next turn of
  the loop (so its change listeners fire), and the old lease is revoked `grace` seconds after a
  generation holding the new one was written. It is not revoked before that, even if the write
  keeps failing, because the files still hold it.
- A token that the generator's connection replaces by a new login is kept until no lease it
  created is held any more, and then revoked.
- After every change the state file (`agent.lease_state`) lists the leases, so that the next
  agent adopts them: it recovers the values from the target's current generation, renews (or
  looks up) the lease, and issues new credentials only when the lease is gone.
- A response with neither a lease nor a TTL is read again at every sync of its target, as External
  Secrets Operator does for every generator.

The controller runs one manager per namespace with a `syncer` of its own shape (see
`agent.controller.dynamic`): it passes the namespace's reference resolver, shared lease metrics
and a `LeaseStateStore` that keeps the records on the managed Secret instead of in a file, and
offers those records back with `adopt_records` after a restart.

Not guaranteed: a token from `tokenSecretRef` that someone else lets expire or revokes takes its
leases with it, and the manager cannot log in again with such a token.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.errors import StoreError
from agent.generators import GeneratorDeclaration, LeaseRefusedError, SecretKind
from agent.lease_state import (
    STATE_FILE_NAME,
    LeaseRecord,
    LeaseStateError,
    read_state,
    write_state,
)
from agent.logs import log_event
from agent.refs import ReferenceResolver, Refs
from agent.snapshot import GeneratedValue, LeaseUse
from agent.writer import ProjectionError

if TYPE_CHECKING:
    from agent.declarations import ExternalSecretDeclaration
    from agent.settings import Settings
    from agent.stores.vault_auth import VaultToken
    from agent.stores.vault_dynamic import VaultGenerator
    from agent.sync import Syncer

logger = logging.getLogger("agent.leases")

RENEW_FRACTION = 2 / 3
FRACTION_JITTER = 0.05
# Seconds kept for fetching new credentials, writing them and notifying, on top of the grace.
ROTATION_ALLOWANCE_SECONDS = 30.0
# A lease never needs more than this share of its TTL as margin; see the module docstring.
MAX_MARGIN_SHARE = 0.25
RETRY_MIN_SECONDS = 10.0
RETRY_MAX_SECONDS = 300.0
# A new lease is not issued under a login token that cannot be extended and has fewer than this
# many margins left. The connection logs in again first.
MIN_PARENT_MARGINS = 2
_REVOCABLE: tuple[SecretKind, ...] = ("lease", "token")
# Revocations retried after a transient failure; the others happen when the manager lets go.
_RETRIED_REVOCATIONS = ("superseded", "released")

LeaseKey = tuple[str, int]


@dataclass(eq=False)
class HeldLease:
    """One generator response the manager holds: its values, its lease and its schedule."""

    target: str
    entry: int
    generator: str
    fingerprint: str
    path: str
    client: VaultGenerator | None = field(repr=False)
    kind: SecretKind
    lease_id: str = field(repr=False)
    data: Mapping[str, Any] = field(repr=False)
    issued_at: float
    renewed_at: float
    expires_at: float
    duration: float
    renewable: bool
    # Jittered share of the remaining time (renewable) or of the TTL (threshold) to wait.
    fraction: float
    capped: bool = False
    # The token that created the lease, in this process; None for an adopted lease.
    parent: VaultToken | None = field(default=None, repr=False)
    # For an adopted lease: when the token that created it expires, None if never.
    parent_expires_at: float | None = None
    written: bool = False
    # A write of the target holding this lease was started (the controller asked for its
    # records); whether it landed is unknown until `committed` or `not_written`.
    writing: bool = False
    secret_keys: dict[str, str] = field(default_factory=dict)
    # For a superseded lease: the lease that replaced it and when it is revoked.
    successor: HeldLease | None = field(default=None, repr=False)
    revoke_at: float | None = None
    # Why it waits for revocation: "superseded" (replaced) or "released" (no longer served).
    revoke_reason: str = "superseded"
    # A renewal ("renew") or rotation (its reason) to retry at `retry_at`.
    pending: str | None = None
    retry_at: float | None = None
    failures: int = 0
    # Why the last rotation failed, and whether the lease's end has been logged.
    last_error: str | None = None
    expiry_logged: bool = False

    @property
    def key(self) -> LeaseKey:
        return (self.target, self.entry)

    @property
    def label(self) -> str:
        """A short form of the lease id for logs: the last four characters only."""
        return "..." + self.lease_id[-4:] if self.lease_id else "-"


class LeaseMetrics:
    """The lease metrics, registered on the agent's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.expiry = Gauge(
            "secrets_agent_lease_expiry_timestamp_seconds",
            "Unix time at which the first lease of a target's dynamic secrets ends: its expiry, "
            "or the expiry of the token that created it when that comes first.",
            ["target"],
            registry=registry,
        )
        self.renewals = Counter(
            "secrets_agent_lease_renewals",
            "Lease renewals by result (success, capped, refused, error).",
            ["target", "result"],
            registry=registry,
        )
        self.rotations = Counter(
            "secrets_agent_lease_rotations",
            "Dynamic secrets fetched again to replace a lease, by reason.",
            ["target", "reason"],
            registry=registry,
        )


class LeaseSettings(Protocol):
    """The settings a manager reads: the agent's `Settings` and the controller's both have them."""

    lease_revoke_grace: float
    lease_renewal_threshold: float


class LeaseStateStore(Protocol):
    """The storage that keeps a manager's lease records from one process to the next."""

    def read(self) -> list[LeaseRecord]:
        """Return the saved records; raise LeaseStateError when they cannot be used."""

    def write(self, records: Sequence[LeaseRecord], *, now: float) -> None:
        """Save `records` in place of the previous ones; raise OSError on failure."""


class LeaseStateFile:
    """The agent's state file in the output directory (see agent.lease_state)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __str__(self) -> str:
        return str(self.directory)

    def read(self) -> list[LeaseRecord]:
        return read_state(self.directory)

    def write(self, records: Sequence[LeaseRecord], *, now: float) -> None:
        if not records and not os.path.lexists(self.directory / STATE_FILE_NAME):
            return  # no generator in use: do not create the file
        write_state(self.directory, records, now=now)


class LeaseManager:
    """Holds the leases of every generator entry; see the module docstring for the rules.

    Thread-safe: the sync round may call `values_for` from several threads, and every method
    takes one lock, also while it waits for Vault.
    """

    def __init__(
        self,
        syncer: Syncer,
        *,
        settings: LeaseSettings,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        refs: ReferenceResolver | None = None,
        metrics: LeaseMetrics | None = None,
        state: LeaseStateStore | None = None,
        keep_without_generator: bool = False,
    ) -> None:
        """Without `refs`, `metrics` or `state`, `settings` must be the agent's `Settings`: the
        manager reads references from `refs_dir`, registers its metrics on the syncer's
        registry and keeps the state file in the writer's output directory.

        With `keep_without_generator` (the controller), a lease whose entry still names a
        generator that is no longer declared is kept instead of released: it is renewed with
        the client that issued it, never replaced, and ends at its TTL unless the generator
        comes back.
        """
        self.syncer = syncer
        self.grace = settings.lease_revoke_grace
        self.threshold = settings.lease_renewal_threshold
        self.clock = clock
        self.rng = rng
        if refs is None:
            agent_settings = cast("Settings", settings)
            refs = Refs(agent_settings.refs_dir, pod_token=agent_settings.pod_token)
        self.refs = refs
        self.metrics = metrics if metrics is not None else LeaseMetrics(syncer.metrics.registry)
        self.state = state if state is not None else LeaseStateFile(syncer.writer.output_dir)
        self._backend_metrics = syncer.metrics
        self.keep_without_generator = keep_without_generator
        self._lock = threading.RLock()
        self._current: dict[LeaseKey, HeldLease] = {}
        self._superseded: list[HeldLease] = []
        self._retired: list[tuple[VaultGenerator, VaultToken]] = []
        self._clients: dict[tuple[str, str], VaultGenerator] = {}
        # Records of the state file not yet adopted; None until the file was read.
        self._records: dict[LeaseKey, LeaseRecord] | None = None
        self._dirty = False
        self._gauged: set[str] = set()
        # (target, end, path, generator, last rotation error) of each current lease, as the last
        # tick left them. The tuple is replaced whole, so `problems` can read it without the lock.
        self._ends: tuple[tuple[str, float, str, str, str | None], ...] = ()
        # The bound method, kept once: the Syncer finds a task again by identity.
        self.task: Callable[[], float | None] = self.tick

    @classmethod
    def attach(
        cls,
        syncer: Syncer,
        *,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> LeaseManager:
        """Create a manager, make `syncer` take generator values from it and run its tick."""
        manager = cls(syncer, settings=settings, clock=clock, rng=rng)
        syncer.leases = manager
        syncer.add_task(manager.task)
        return manager

    # -- the sync round's side -----------------------------------------------------------------

    def values_for(
        self, declaration: ExternalSecretDeclaration, *, target: str | None = None
    ) -> dict[int, GeneratedValue | StoreError]:
        """Return the response of each generator entry of `declaration`, by `dataFrom` index.

        Issues a lease on first need (or adopts one from the state file), and a new one when
        the held lease has ended or its generator changed. A failure is returned as the entry's
        StoreError. `target` names the leases' owner, by default the declaration's target; the
        controller passes `namespace/name` of the ExternalSecret.
        """
        owner = target if target is not None else declaration.target
        values: dict[int, GeneratedValue | StoreError] = {}
        with self._lock:
            self._load_state()
            for entry, item in enumerate(declaration.spec.data_from):
                if item.source_ref is None:
                    continue
                ref = item.source_ref.generator_ref
                generator = self.syncer.declarations.generators.get((ref.kind, ref.name))
                if generator is None:
                    values[entry] = StoreError(
                        f"generator {ref.kind} {ref.name} is not declared",
                        store=f"{ref.kind}/{ref.name}",
                        fix="declare it or fix generatorRef.name",
                    )
                    continue
                try:
                    held = self._held_for(owner, entry, generator)
                except StoreError as error:
                    values[entry] = error
                    continue
                values[entry] = GeneratedValue(
                    data=held.data, lease=held, source=generator.display_name
                )
        return values

    def committed(self, target: str, leases: tuple[LeaseUse, ...]) -> None:
        """Record that the current generation of `target` holds these leases.

        Starts the grace period of every lease they replaced.
        """
        with self._lock:
            now = self.clock()
            changed = False
            for use in leases:
                held = use.lease
                if not isinstance(held, HeldLease):
                    continue
                keys = dict(use.secret_keys)
                if not held.written or held.secret_keys != keys:
                    held.written, held.secret_keys = True, keys
                    changed = True
                for old in self._superseded:
                    if old.successor is held and old.revoke_at is None:
                        old.revoke_at = now + self.grace
                        changed = True
                        log_event(
                            logger,
                            logging.INFO,
                            "lease_revoke_scheduled",
                            target=old.target,
                            path=old.path,
                            lease=old.label,
                            revoke_in_s=round(self.grace),
                        )
            if changed:
                self._dirty = True
                self.syncer.reschedule_task(self.task, 0.0)

    def declarations_applied(self) -> None:
        """Run the tick at once: a generator may have changed or an entry gone away."""
        self.syncer.reschedule_task(self.task, 0.0)

    # -- the periodic task ---------------------------------------------------------------------

    def tick(self) -> float | None:
        """Renew, rotate and revoke what is due; save the state file; return the seconds until
        the next action, or None when nothing is scheduled."""
        with self._lock:
            self._load_state()
            self._adopt_remaining()
            deadlines: list[float] = []
            for client in list(self._clients.values()):
                delay = client.maintain()
                if delay is not None:
                    deadlines.append(self.clock() + delay)
            for held in list(self._current.values()):
                deadlines.append(self._advance(held))
            deadlines += self._revoke_superseded()
            self._revoke_retired_tokens()
            self._close_unused_clients()
            self._publish()
            upcoming = [deadline for deadline in deadlines if math.isfinite(deadline)]
        if not upcoming:
            return None
        return max(0.0, min(upcoming) - self.clock())

    def close(self, *, revoke: bool) -> None:
        """Finish at exit. With `revoke`, revoke every lease and the login tokens that created
        them. Otherwise save the state file for the next agent and keep them alive.

        Either way, a lease never written to its target is revoked (the next process could not
        recover its values), and a login token no kept lease depends on is revoked.
        """
        with self._lock:
            self._load_state()
            if revoke:
                self._revoke_everything()
            else:
                # An unwritten lease whose login token no kept lease needs goes with that
                # token below: one request instead of one per lease, within the stop budget.
                unwritten = {
                    id(held)
                    for held in self._current.values()
                    if not (held.written or held.writing)
                }
                needed = {
                    id(held.parent)
                    for held in self._all_held()
                    if held.parent is not None and id(held) not in unwritten
                }
                self._revoke_unwritten(
                    target=None,
                    with_token=lambda held: (
                        held.parent is not None
                        and held.parent.created_by_login
                        and id(held.parent) not in needed
                    ),
                )
                self._save(force=True)
            parents = {id(held.parent) for held in self._all_held() if held.parent is not None}
            for client in self._clients.values():
                token = client.connection.token
                client.close(revoke_token=revoke or token is None or id(token) not in parents)
            self._clients.clear()
            for client, token in self._retired:
                if id(token) not in parents and token.usable(self.clock()):
                    client.connection.revoke(token)
            self._retired.clear()

    # -- hand-over between controller processes ------------------------------------------------

    def adopt_records(self, records: Sequence[LeaseRecord]) -> None:
        """Take saved records as if the state file had listed them.

        A current record is adopted when its entry is next asked for, unless the manager holds
        a lease for that entry already. A superseded one is revoked at its revocation time.
        """
        with self._lock:
            self._load_state()
            assert self._records is not None
            held_ids = {held.lease_id for held in self._all_held() if held.lease_id}
            for record in records:
                if record.lease_id and record.lease_id in held_ids:
                    continue
                if record.superseded:
                    self._adopt_superseded(record)
                elif (record.target, record.entry) not in self._current:
                    self._records[(record.target, record.entry)] = record

    def forget(self, target: str) -> None:
        """Stop serving and renewing the current leases of `target` without revoking them.

        Another process takes them over from their saved records. A lease never written to the
        target has no record there, so it is revoked, and the lease it was to replace is handed
        over in its place. Superseded leases stay, so they are still revoked when their grace
        ends.
        """
        with self._lock:
            self._revoke_unwritten(target=target)
            for key in [key for key in self._current if key[0] == target]:
                held = self._current.pop(key)
                log_event(
                    logger,
                    logging.INFO,
                    "lease_handed_over",
                    target=held.target,
                    path=held.path,
                    lease=held.label,
                )
            if self._records is not None:
                for key in [key for key in self._records if key[0] == target]:
                    del self._records[key]
            self._dirty = True

    def not_written(self, leases: Sequence[LeaseUse]) -> None:
        """Learn that the write started after `records_for` failed: these leases are in no
        record, so letting go of them revokes them."""
        with self._lock:
            for use in leases:
                if isinstance(use.lease, HeldLease):
                    use.lease.writing = False

    def records_for(self, target: str, leases: Sequence[LeaseUse] = ()) -> list[LeaseRecord]:
        """Return the records to save for `target`: its current leases and the superseded ones
        that wait for revocation.

        A current lease found in `leases` (a snapshot about to be written) gets the secret keys
        given there, so the record is right as soon as that write succeeds.
        """
        keys = {id(use.lease): dict(use.secret_keys) for use in leases}
        with self._lock:
            records = []
            for held in self._current.values():
                record = self._record_of(held, superseded=False) if held.target == target else None
                if record is not None and id(held) in keys:
                    record = dataclasses.replace(record, secret_keys=keys[id(held)])
                    held.writing = True
                records.append(record)
            for held in self._superseded:
                if held.target == target:
                    records.append(self._record_of(held, superseded=True))
            unclaimed = [r for key, r in (self._records or {}).items() if key[0] == target]
        return [record for record in records if record is not None] + unclaimed

    # -- holding a lease -----------------------------------------------------------------------

    def _held_for(self, target: str, entry: int, generator: GeneratorDeclaration) -> HeldLease:
        """Return the lease to serve for one entry, issuing or adopting one when needed."""
        key = (target, entry)
        now = self.clock()
        held = self._current.get(key)
        if held is not None and held.kind != "none" and self._matches(held, generator):
            if self._end(held)[0] > now:
                return held
            reason = "expired"
        elif held is not None:
            reason = "declaration_changed" if held.kind != "none" else ""
        else:
            held = self._adopt(key, generator)
            if held is not None and held.written and self._matches(held, generator):
                return held
            reason = "adoption_failed" if held is not None else ""
        new = self._issue(target, entry, generator)
        self._install(new, replaced=held, reason=reason)
        return new

    def _issue(self, target: str, entry: int, generator: GeneratorDeclaration) -> HeldLease:
        client = self._client_for(generator)
        margin = self.grace + ROTATION_ALLOWANCE_SECONDS
        response = client.issue(min_token_life=MIN_PARENT_MARGINS * margin)
        now = self.clock()
        held = HeldLease(
            target=target,
            entry=entry,
            generator=generator.name,
            fingerprint=generator.fingerprint,
            path=generator.spec.path,
            client=client,
            kind=response.kind,
            lease_id=response.lease_id,
            data=response.data,
            issued_at=now,
            renewed_at=now,
            expires_at=now + response.duration if response.duration > 0 else math.inf,
            duration=response.duration,
            renewable=response.renewable,
            fraction=self._renew_fraction() if response.renewable else self._threshold(),
            parent=response.token,
        )
        log_event(
            logger,
            logging.INFO,
            "lease_issued",
            target=target,
            generator=generator.display_name,
            path=held.path,
            kind=held.kind,
            lease=held.label,
            ttl_s=round(held.duration),
            renewable=held.renewable,
        )
        return held

    def _install(self, new: HeldLease, *, replaced: HeldLease | None, reason: str) -> None:
        self._current[new.key] = new
        self._dirty = True
        if replaced is None or not reason:
            return
        if replaced.kind in _REVOCABLE and replaced.client is not None:
            replaced.successor, replaced.revoke_at = new, None
            replaced.pending = replaced.retry_at = None
            self._superseded.append(replaced)
        self.metrics.rotations.labels(new.target, reason).inc()
        log_event(
            logger,
            logging.INFO,
            "lease_rotated",
            target=new.target,
            generator=new.client.name if new.client else f"VaultDynamicSecret/{new.generator}",
            path=new.path,
            reason=reason,
            old_lease=replaced.label,
            new_lease=new.label,
        )

    def _matches(self, held: HeldLease, generator: GeneratorDeclaration) -> bool:
        return held.generator == generator.name and held.fingerprint == generator.fingerprint

    def _client_for(self, generator: GeneratorDeclaration) -> VaultGenerator:
        key = (generator.name, generator.fingerprint)
        client = self._clients.get(key)
        if client is None:
            # Imported here: an agent without generators never loads the Vault client.
            from agent.stores.vault_dynamic import VaultGenerator

            client = VaultGenerator(
                generator, refs=self.refs, metrics=self._backend_metrics, clock=self.clock
            )
            client.connection.on_token_replaced = lambda token: self._retire(client, token)
            self._clients[key] = client
        return client

    def _generator_for(self, key: LeaseKey) -> GeneratorDeclaration | None:
        """Return the generator the declarations name for (target, entry) now, if any."""
        state = self.syncer.states.get(key[0])
        if state is None:
            return None
        entries = state.declaration.spec.data_from
        if key[1] >= len(entries) or entries[key[1]].source_ref is None:
            return None
        ref = entries[key[1]].source_ref.generator_ref
        return self.syncer.declarations.generators.get((ref.kind, ref.name))

    # -- schedule ------------------------------------------------------------------------------

    def _end(self, held: HeldLease) -> tuple[float, bool]:
        """Return when `held` stops working, and whether its token's expiry sets that time."""
        parent_end = self._parent_end(held)
        if parent_end is not None and parent_end < held.expires_at:
            return parent_end, True
        return held.expires_at, False

    def _parent_end(self, held: HeldLease) -> float | None:
        token = held.parent
        if token is None:
            return held.parent_expires_at
        if token.rejected:
            return self.clock()  # Vault refused the token: its leases are gone already
        expiry = token.expires_at()
        connection = held.client.connection if held.client is not None else None
        if expiry is None or (connection is not None and token is connection.token):
            # The connection renews its current token, or logs in again and hands it over.
            # A token from tokenSecretRef that cannot be renewed is someone else's to replace.
            if token.renewable and not token.capped or not token.created_by_login:
                return None
        return expiry

    def _margin(self, held: HeldLease) -> float:
        return min(self.grace + ROTATION_ALLOWANCE_SECONDS, held.duration * MAX_MARGIN_SHARE)

    def _next_action(self, held: HeldLease) -> tuple[str, float, str]:
        """Return (`renew`, `rotate` or `none`, when, rotation reason) for a current lease."""
        if held.kind == "none":
            return "none", math.inf, ""
        end, by_token = self._end(held)
        latest = end - self._margin(held)
        if held.pending is not None and held.retry_at is not None:
            if held.pending != "renew":
                return "rotate", held.retry_at, held.pending
            if held.retry_at < latest:
                return "renew", held.retry_at, ""
            return "rotate", latest, "renewal_failed"
        remaining = held.expires_at - held.renewed_at
        if held.renewable and not held.capped:
            renew_at = held.renewed_at + remaining * held.fraction
            if renew_at < latest:
                return "renew", renew_at, ""
            return "rotate", latest, "parent_token" if by_token else "expiring"
        if held.capped:
            at, reason = held.renewed_at + remaining * held.fraction, "max_ttl"
        else:
            at, reason = held.issued_at + held.duration * held.fraction, "threshold"
        if latest < at:
            return "rotate", latest, "parent_token" if by_token else reason
        return "rotate", at, reason

    def _advance(self, held: HeldLease) -> float:
        """Renew or rotate `held` if due; return when the current lease of its entry is due.

        A lease whose entry is no longer declared is released; one whose generator changed is
        rotated at once.
        """
        generator = self._generator_for(held.key)
        if generator is None and self._kept_without_generator(held):
            return self._advance_without_generator(held)
        if generator is None:
            self._release(held, reason="undeclared")
            return math.inf
        if not self._matches(held, generator):
            if held.retry_at is None or held.retry_at <= self.clock():
                self._rotate(held, "declaration_changed")
        else:
            action, due, reason = self._next_action(held)
            if action == "renew" and due <= self.clock():
                self._renew(held)
            elif action == "rotate" and due <= self.clock():
                self._rotate(held, reason)
        current = self._current.get(held.key)
        if current is None:
            return math.inf
        self._note_expiry(current)
        return self._next_action(current)[1]

    def _note_expiry(self, held: HeldLease) -> None:
        """Log once that the credentials written for a target have stopped working."""
        end = self._end(held)[0]
        if held.expiry_logged or end > self.clock():
            return
        held.expiry_logged = True
        log_event(
            logger,
            logging.WARNING,
            "lease_expired",
            target=held.target,
            path=held.path,
            lease=held.label,
            error=held.last_error or "-",
        )

    def problems(self) -> dict[str, str]:
        """Return, by target, why the dynamic credentials written for it no longer work: the
        lease ended and new credentials could not be fetched yet.

        Safe from any thread. It reads what the last tick published instead of taking the
        manager's lock, which a Vault request may keep for up to its timeout.
        """
        now = self.clock()
        found: dict[str, str] = {}
        for target, end, path, generator, error in self._ends:
            if end > now or target in found:
                continue
            cause = error or "no new credentials were fetched yet"
            found[target] = (
                f"the dynamic secret from {path} (generator {generator}) expired "
                f"{round(now - end)} s ago and could not be replaced: {cause}"
            )
        return found

    def _kept_without_generator(self, held: HeldLease) -> bool:
        """Tell whether `held` is kept although its generator is not declared: its entry still
        names that generator by name (see `keep_without_generator`)."""
        if not self.keep_without_generator:
            return False
        state = self.syncer.states.get(held.target)
        if state is None:
            return False
        entries = state.declaration.spec.data_from
        if held.entry >= len(entries) or entries[held.entry].source_ref is None:
            return False
        return entries[held.entry].source_ref.generator_ref.name == held.generator

    def _advance_without_generator(self, held: HeldLease) -> float:
        """Renew `held` when due, with the client that issued it; return when to look again.

        New credentials need the generator, so a lease that would be replaced is left to end.
        """
        action, due, _reason = self._next_action(held)
        if action == "renew" and due <= self.clock():
            self._renew(held)
            action, due, _reason = self._next_action(held)
        return due if action == "renew" else math.inf

    def _renew_fraction(self) -> float:
        return RENEW_FRACTION + FRACTION_JITTER * (2 * self.rng() - 1)

    def _threshold(self) -> float:
        drawn = self.threshold + FRACTION_JITTER * (2 * self.rng() - 1)
        return drawn if 0 < drawn < 1 else self.threshold

    def _retry_delay(self, failures: int) -> float:
        ceiling = min(RETRY_MAX_SECONDS, RETRY_MIN_SECONDS * 2 ** max(0, failures - 1))
        return ceiling * (0.9 + 0.2 * self.rng())

    # -- renew, rotate, revoke -----------------------------------------------------------------

    def _renew(self, held: HeldLease) -> None:
        assert held.client is not None
        now = self.clock()
        try:
            granted = held.client.renew(
                kind=held.kind,
                lease_id=held.lease_id,
                token_value=_token_value(held),
                increment=held.duration,
            )
        except LeaseRefusedError as error:
            self.metrics.renewals.labels(held.target, "refused").inc()
            log_event(
                logger,
                logging.WARNING,
                "lease_renewal_refused",
                target=held.target,
                path=held.path,
                lease=held.label,
                error=str(error),
            )
            held.pending = held.retry_at = None
            self._rotate(held, "renewal_refused")
            return
        except StoreError as error:
            held.failures += 1
            delay = self._retry_delay(held.failures)
            held.pending, held.retry_at = "renew", now + delay
            self.metrics.renewals.labels(held.target, "error").inc()
            log_event(
                logger,
                logging.WARNING,
                "lease_renewal_failed",
                target=held.target,
                path=held.path,
                lease=held.label,
                retry_in_s=round(delay, 1),
                error=str(error),
            )
            return
        self._record_renewal(held, granted, now)

    def _record_renewal(self, held: HeldLease, granted: float, now: float) -> None:
        held.pending = held.retry_at = None
        held.failures = 0
        held.renewed_at, held.expires_at = now, now + granted
        held.capped = granted < held.duration
        held.fraction = self._renew_fraction()
        self._dirty = True
        result = "capped" if held.capped else "success"
        self.metrics.renewals.labels(held.target, result).inc()
        log_event(
            logger,
            logging.INFO,
            "lease_renewal_capped" if held.capped else "lease_renewed",
            target=held.target,
            path=held.path,
            lease=held.label,
            ttl_s=round(granted),
        )

    def _rotate(self, held: HeldLease, reason: str) -> None:
        """Fetch new credentials for the entry of `held`; on failure retry with backoff."""
        now = self.clock()
        generator = self._generator_for(held.key)
        if generator is None and self._kept_without_generator(held):
            # Replaced once the generator is declared again (the pending rotation is due then).
            held.pending, held.retry_at = reason, now
            return
        if generator is None:
            self._release(held, reason="undeclared")
            return
        try:
            new = self._issue(held.target, held.entry, generator)
        except StoreError as error:
            held.last_error = str(error)
            held.failures += 1
            delay = self._retry_delay(held.failures)
            held.pending, held.retry_at = reason, now + delay
            log_event(
                logger,
                logging.WARNING,
                "lease_rotation_failed",
                target=held.target,
                path=held.path,
                reason=reason,
                retry_in_s=round(delay, 1),
                error=str(error),
            )
            return
        self._install(new, replaced=held, reason=reason)
        self.syncer.sync_soon(held.target)

    def _release(self, held: HeldLease, *, reason: str) -> None:
        """Stop serving `held` (its entry or generator is gone); revoke it after the grace."""
        if self._current.get(held.key) is held:
            del self._current[held.key]
        self._dirty = True
        if held.kind in _REVOCABLE and held.client is not None:
            held.successor, held.revoke_at = None, self.clock() + self.grace
            held.revoke_reason = "released"
            held.pending = held.retry_at = None
            self._superseded.append(held)
        log_event(
            logger,
            logging.INFO,
            "lease_released",
            target=held.target,
            path=held.path,
            lease=held.label,
            reason=reason,
        )

    def _revoke_superseded(self) -> list[float]:
        """Revoke superseded leases whose grace has passed; return the later revocation times."""
        deadlines: list[float] = []
        for old in list(self._superseded):
            now = self.clock()
            end = self._end(old)[0]
            if end <= now:
                self._superseded.remove(old)
                self._dirty = True
                log_event(logger, logging.DEBUG, "lease_ended", target=old.target, lease=old.label)
                continue
            if old.revoke_at is None or old.revoke_at > now:
                deadlines.append(end if old.revoke_at is None else old.revoke_at)
                continue
            if self._revoke(old, reason=old.revoke_reason):
                self._superseded.remove(old)
                self._dirty = True
            elif old.revoke_at is not None:
                deadlines.append(old.revoke_at)
        return deadlines

    def _revoke(self, held: HeldLease, *, reason: str) -> bool:
        """Revoke one lease; return True when it is gone or will never be retried."""
        assert held.client is not None
        try:
            held.client.revoke(
                kind=held.kind, lease_id=held.lease_id, token_value=_token_value(held)
            )
        except StoreError as error:
            retry = error.transient and reason in _RETRIED_REVOCATIONS
            if retry:
                held.failures += 1
                held.revoke_at = self.clock() + self._retry_delay(held.failures)
            log_event(
                logger,
                logging.WARNING,
                "lease_revoke_failed",
                target=held.target,
                path=held.path,
                lease=held.label,
                retry=int(retry),
                error=str(error),
            )
            return not retry
        log_event(
            logger,
            logging.INFO,
            "lease_revoked",
            target=held.target,
            path=held.path,
            lease=held.label,
            reason=reason,
        )
        return True

    def _retire(self, client: VaultGenerator, token: VaultToken) -> None:
        """Keep a token the connection replaced: leases it created die with it."""
        self._retired.append((client, token))
        leases = sum(1 for held in self._all_held() if held.parent is token)
        log_event(
            logger, logging.INFO, "lease_parent_token_kept", generator=client.name, leases=leases
        )
        self.syncer.reschedule_task(self.task, 0.0)

    def _revoke_retired_tokens(self) -> None:
        now = self.clock()
        for client, token in list(self._retired):
            if token.usable(now) and any(held.parent is token for held in self._all_held()):
                continue
            self._retired.remove((client, token))
            if token.usable(now):
                client.connection.revoke(token)

    def _close_unused_clients(self) -> None:
        declared = {
            (generator.name, generator.fingerprint)
            for generator in self.syncer.declarations.generators.values()
        }
        used = {id(held.client) for held in self._all_held()}
        used |= {id(client) for client, _ in self._retired}
        for key, client in list(self._clients.items()):
            if key not in declared and id(client) not in used:
                del self._clients[key]
                client.close(revoke_token=True)

    def _revoke_everything(self) -> None:
        for record in (self._records or {}).values():
            generator = self._declared_generator(record.generator)
            if generator is not None:
                self._superseded.append(self._from_record(record, self._client_for(generator)))
        for held in list(self._all_held()):
            if held.kind in _REVOCABLE and held.client is not None:
                if self._end(held)[0] > self.clock():
                    self._revoke(held, reason="exit")
        for client, token in self._retired:
            if token.usable(self.clock()):
                client.connection.revoke(token)
        self._current.clear()
        self._superseded.clear()
        self._retired.clear()
        self._records = {}
        self._save(force=True)

    def _revoke_unwritten(
        self,
        *,
        target: str | None,
        with_token: Callable[[HeldLease], bool] = lambda held: False,
    ) -> None:
        """Revoke the current leases of `target` (of every target when None) that were never
        written; the lease each was to replace becomes current again. A lease for which
        `with_token` is true is only dropped: the caller revokes its login token, which
        revokes the lease with it."""
        for key, held in list(self._current.items()):
            # A lease whose write may have landed is kept: its record may be on the target.
            if held.written or held.writing or (target is not None and key[0] != target):
                continue
            del self._current[key]
            self._dirty = True
            for old in list(self._superseded):
                if old.successor is held and old.revoke_at is None:
                    self._superseded.remove(old)
                    old.successor = None
                    self._current[key] = old
            if held.kind not in _REVOCABLE or held.client is None:
                continue
            if self._end(held)[0] <= self.clock():
                continue
            if with_token(held):
                log_event(
                    logger,
                    logging.INFO,
                    "lease_revoked",
                    target=held.target,
                    path=held.path,
                    lease=held.label,
                    reason="unwritten",
                    by="token",
                )
            else:
                self._revoke(held, reason="unwritten")

    def _all_held(self) -> Iterator[HeldLease]:
        yield from self._current.values()
        yield from self._superseded

    # -- adoption and the state file -----------------------------------------------------------

    def _load_state(self) -> None:
        """Read the state file once; superseded leases in it wait for their revocation."""
        if self._records is not None:
            return
        self._records = {}
        try:
            records = self.state.read()
        except LeaseStateError as error:
            log_event(logger, logging.WARNING, "lease_state_ignored", reason=str(error))
            return
        for record in records:
            if record.superseded:
                self._adopt_superseded(record)
            else:
                self._records[(record.target, record.entry)] = record
        if records:
            log_event(logger, logging.INFO, "lease_state_loaded", leases=len(records))

    def _adopt_superseded(self, record: LeaseRecord) -> None:
        generator = self._declared_generator(record.generator)
        if generator is None:
            log_event(
                logger,
                logging.WARNING,
                "lease_dropped",
                target=record.target,
                path=record.path,
                reason="generator_undeclared",
            )
            return
        held = self._from_record(record, self._client_for(generator))
        held.revoke_at = record.revoke_at if record.revoke_at is not None else self.clock()
        self._superseded.append(held)

    def _adopt_remaining(self) -> None:
        """Adopt, or release, the records that no sync has claimed yet."""
        assert self._records is not None
        for key in list(self._records):
            generator = self._generator_for(key)
            if generator is None:
                record = self._records.pop(key)
                declared = self._declared_generator(record.generator)
                if declared is not None:
                    held = self._from_record(record, self._client_for(declared))
                    self._release(held, reason="undeclared")
                continue
            try:
                self._held_for(key[0], key[1], generator)
            except StoreError as error:
                log_event(
                    logger,
                    logging.WARNING,
                    "lease_adoption_failed",
                    target=key[0],
                    reason="issue_failed",
                    error=str(error),
                )

    def _adopt(self, key: LeaseKey, generator: GeneratorDeclaration) -> HeldLease | None:
        """Take over the state file's lease for `key`.

        Returns the lease, marked written when its values were recovered from the target's
        files and Vault still has it. Returns it unwritten (to be superseded) when that
        fails, and None when there is no record.
        """
        assert self._records is not None
        record = self._records.pop(key, None)
        if record is None:
            return None
        held = self._from_record(record, self._client_for(generator))
        problem = self._recover(held, generator)
        if problem is not None:
            held.written = False
            log_event(
                logger,
                logging.WARNING,
                "lease_adoption_failed",
                target=held.target,
                path=held.path,
                lease=held.label,
                reason=problem,
            )
            return held
        self._current[key] = held
        self._dirty = True
        end = self._end(held)[0]
        log_event(
            logger,
            logging.INFO,
            "lease_adopted",
            target=held.target,
            path=held.path,
            lease=held.label,
            expires_in_s=round(end - self.clock()) if math.isfinite(end) else -1,
        )
        return held

    def _recover(self, held: HeldLease, generator: GeneratorDeclaration) -> str | None:
        """Recover the values from disk and check the lease with Vault; return the problem."""
        if not self._matches(held, generator):
            return "declaration_changed"
        if not held.written or not held.secret_keys:
            return "never_written"
        try:
            contents = self.syncer.writer.read(held.target)
        except ProjectionError:
            contents = None
        if contents is None or any(key not in contents for key in held.secret_keys.values()):
            return "values_missing"
        held.data = {name: contents[key] for name, key in held.secret_keys.items()}
        if self._end(held)[0] <= self.clock():
            return "expired"
        if held.kind == "ttl":
            return None
        return self._verify(held)

    def _verify(self, held: HeldLease) -> str | None:
        """Renew (or look up) an adopted lease; return why it cannot be kept, or None."""
        assert held.client is not None
        now = self.clock()
        try:
            if held.renewable and not held.capped:
                granted = held.client.renew(
                    kind=held.kind,
                    lease_id=held.lease_id,
                    token_value=_token_value(held),
                    increment=held.duration,
                )
                self._record_renewal(held, granted, now)
                return None
            remaining = held.client.remaining(
                kind=held.kind, lease_id=held.lease_id, token_value=_token_value(held)
            )
        except LeaseRefusedError:
            return "lease_gone"
        except StoreError as error:
            # Vault is unreachable: keep the recorded times; the tick retries the renewal.
            log_event(
                logger,
                logging.WARNING,
                "lease_adoption_unverified",
                target=held.target,
                path=held.path,
                lease=held.label,
                error=str(error),
            )
            if held.renewable and not held.capped:
                held.pending, held.retry_at = "renew", now + RETRY_MIN_SECONDS
            return None
        if remaining is None:
            return "lease_gone"
        held.expires_at = min(held.expires_at, now + remaining)
        return None

    def _from_record(self, record: LeaseRecord, client: VaultGenerator | None) -> HeldLease:
        return HeldLease(
            target=record.target,
            entry=record.entry,
            generator=record.generator,
            fingerprint=record.fingerprint,
            path=record.path,
            client=client,
            kind=record.kind,
            lease_id=record.lease_id,
            data={},
            issued_at=record.issued_at,
            renewed_at=record.renewed_at,
            expires_at=record.expires_at,
            duration=record.duration,
            renewable=record.renewable,
            fraction=self._renew_fraction() if record.renewable else self._threshold(),
            capped=record.capped,
            parent_expires_at=record.token_expires_at,
            written=bool(record.secret_keys),
            secret_keys=dict(record.secret_keys),
            revoke_at=record.revoke_at,
        )

    def _declared_generator(self, name: str) -> GeneratorDeclaration | None:
        for generator in self.syncer.declarations.generators.values():
            if generator.name == name:
                return generator
        return None

    def _record_of(self, held: HeldLease, *, superseded: bool) -> LeaseRecord | None:
        if held.kind not in ("lease", "token", "ttl") or not math.isfinite(held.expires_at):
            return None
        parent_end = self._parent_end(held) if held.parent is None else held.parent.expires_at()
        return LeaseRecord(
            target=held.target,
            entry=held.entry,
            generator=held.generator,
            fingerprint=held.fingerprint,
            path=held.path,
            kind=held.kind,  # type: ignore[arg-type]  # "none" is filtered out above
            lease_id=held.lease_id,
            issued_at=held.issued_at,
            renewed_at=held.renewed_at,
            expires_at=held.expires_at,
            duration=held.duration,
            renewable=held.renewable,
            capped=held.capped,
            token_expires_at=parent_end,
            secret_keys=dict(held.secret_keys) if held.written else {},
            superseded=superseded,
            revoke_at=held.revoke_at if superseded else None,
        )

    def _save(self, *, force: bool = False) -> None:
        if not (self._dirty or force):
            return
        records = [self._record_of(held, superseded=False) for held in self._current.values()]
        records += [self._record_of(held, superseded=True) for held in self._superseded]
        kept = [record for record in records if record is not None]
        kept += list((self._records or {}).values())
        try:
            self.state.write(kept, now=self.clock())
        except OSError as error:
            log_event(
                logger,
                logging.WARNING,
                "lease_state_write_failed",
                path=str(self.state),
                error=error.strerror or type(error).__name__,
            )
            return
        self._dirty = False

    def _publish(self) -> None:
        """Save the state file if something changed and set the expiry gauge of each target."""
        self._save()
        ends: dict[str, float] = {}
        published = []
        for held in self._current.values():
            end = self._end(held)[0]
            if math.isfinite(end):
                ends[held.target] = min(end, ends.get(held.target, math.inf))
                published.append((held.target, end, held.path, held.generator, held.last_error))
        self._ends = tuple(published)
        for target, end in ends.items():
            self.metrics.expiry.labels(target).set(end)
        for target in self._gauged - set(ends):
            try:
                self.metrics.expiry.remove(target)
            except KeyError:
                pass
        self._gauged = set(ends)


def _token_value(held: HeldLease) -> str:
    """Return the token of an Auth response (the `client_token` field), else ""."""
    if held.kind != "token":
        return ""
    value = held.data.get("client_token")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""
