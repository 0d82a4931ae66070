"""The controller on kopf: watches, one daemon per ExternalSecret, leader election, endpoints.

`Controller` registers its handlers on a kopf registry of its own, so two controllers can run
in one process (the tests start two to check leader election). What it guarantees:

- Each ExternalSecret has a kopf daemon that reconciles it, then sleeps until its planned
  refresh (`refreshInterval` with jitter, aligned per store), its backoff after a failure, or a
  wake-up: a new `metadata.generation` or changed labels or annotations of the ExternalSecret,
  a change of its store, or someone else editing or deleting its Secret (drift repair).
  `refreshInterval: 0` syncs once and afterwards only repairs drift, as in External Secrets
  Operator. kopf puts the finalizer `secrets-agent.io/finalizer` on each ExternalSecret so its
  daemon stops before it is gone; a Merge target then loses the ExternalSecret's keys.
- Secrets are watched with the server-side label selector `secrets-agent.io/managed=true`, so
  only managed Secrets are cached.
- Replicas elect a leader through kopf peering: each starts with a random priority, and every
  replica but the one with the highest priority pauses (its daemons stop) until that one is gone.
  The `secrets_agent_controller_leader` gauge follows the peering objects (see
  `agent.controller.leadership`), and drops to 0 at once when kopf stops a daemon to pause.
- The start waits for the Kubernetes API server to respond (`--api-startup-timeout`), then fails
  with one line naming the server. Afterwards an outage longer than `api_warning_seconds` is a
  warning in the `/healthz` body, never a failed probe, because a restart does not end it.
- Dynamic secrets (generatorRef entries) are served by `agent.controller.dynamic`: a lease loop
  renews and rotates leases, and wakes an ExternalSecret when its lease was rotated (full
  reconcile) or only its lease records changed (the records annotation alone is updated).
- Nothing is written into an ExternalSecret's spec; its status goes through the status
  subresource. kopf's own handler bookkeeping is never needed: only event handlers and daemons
  are registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import yaml

from agent.controller import FINALIZER, GROUP, MANAGED_LABEL, VERSION
from agent.controller.api_health import (
    CUSTOM_LOGIN,
    SERVICE_ACCOUNT,
    ApiHealth,
    ApiServer,
    ApiUnreachableError,
    MonitoredKubeClient,
    outage_warning,
    wait_for_api,
    watch_api,
)
from agent.controller.cache import (
    ReadCache,
    RefreshPlanner,
    StoreConnections,
    qualified_name,
    store_label,
)
from agent.controller.dynamic import GENERATOR_PLURAL, DynamicSecrets
from agent.controller.health import HealthEndpoints
from agent.controller.kube import KubeApiError, resource_path
from agent.controller.leadership import watch_leadership
from agent.controller.metrics import ControllerMetrics
from agent.controller.reconcile import Outcome, Reconciler, StoreIndex, plain
from agent.controller.refs import ApiRefs, foreign_namespace_references
from agent.controller.secrets import drifted
from agent.controller.settings import ControllerSettings
from agent.errors import StoreError
from agent.logs import log_event
from agent.refs import ReferenceResolver, Refs
from agent.stores import Store, open_store
from agent.sync import backoff_delay

logger = logging.getLogger("agent.controller")

# kopf's peering lifetime: a paused replica takes over this long after the leader's last sign.
PEERING_LIFETIME_SECONDS = 60
# Priorities are drawn from a range wide enough that two replicas practically never tie; a tie
# pauses both, and kopf logs it.
MAX_PRIORITY = 2**31 - 1
MAINTAIN_IDLE_SECONDS = 30.0
# How often a missing peering object is looked for again.
PEERING_CHECK_SECONDS = 30.0
# How often the peering objects are read for the leader gauge.
LEADER_CHECK_SECONDS = 10.0
# An API outage becomes a /healthz warning after this long, so a short one such as an API
# server restart gets no warning.
API_WARNING_SECONDS = 30.0
# How long without any response from the API server before the controller probes it.
API_PROBE_SECONDS = 10.0
# Wake-up reasons: a rotated lease needs a full reconcile, changed lease records only a patch of
# the records annotation.
LEASE_ROTATED = "lease_rotated"
LEASE_RECORDS_CHANGED = "lease_records_changed"

LoginFunction = Callable[[], Awaitable[kopf.ConnectionInfo]]
StoreOpener = Callable[..., Store]


@dataclass
class _Tracked:
    """The state the controller keeps for one ExternalSecret between reconciles."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    reasons: set[str] = field(default_factory=set)
    fingerprint: Any = None
    target: tuple[str, str] | None = None
    store: tuple[str, str | None, str] | None = None
    # Names of the VaultDynamicSecrets its generatorRef entries name.
    generators: frozenset[str] = frozenset()
    failures: int = 0
    # True once a refreshInterval 0 ExternalSecret has synced: only drift repair follows.
    once_done: bool = False

    def wake_for(self, reason: str) -> None:
        self.reasons.add(reason)
        self.wake.set()


class StartupError(Exception):
    """The controller cannot start; the message states why and what to change."""


class Controller:
    """The whole controller: kopf registry and settings, shared caches, the reconciler."""

    def __init__(
        self,
        settings: ControllerSettings,
        *,
        login: LoginFunction | None = None,
        metrics: ControllerMetrics | None = None,
        opener: StoreOpener = open_store,
        peering_lifetime: int = PEERING_LIFETIME_SECONDS,
        priority: int | None = None,
        lease_clock: Callable[[], float] = time.time,
        api_warning_seconds: float = API_WARNING_SECONDS,
        api_probe_seconds: float = API_PROBE_SECONDS,
        leader_check_seconds: float = LEADER_CHECK_SECONDS,
    ) -> None:
        """`lease_clock` is the clock of lease schedules (Unix seconds); tests pass the Vault
        emulator's. The `*_seconds` intervals exist for tests too."""
        self.settings = settings
        self.metrics = metrics or ControllerMetrics()
        self.registry = kopf.OperatorRegistry()
        self.kopf_settings = kopf.OperatorSettings()
        self.priority = priority if priority is not None else random.randint(1, MAX_PRIORITY)
        self._login = login or self._default_login
        # Where the API server's URL came from; the default login sets it when it succeeds.
        self._login_source = CUSTOM_LOGIN
        self.api_server: ApiServer | None = None
        self.api_health = ApiHealth()
        self.api_warning_seconds = api_warning_seconds
        self.api_probe_seconds = api_probe_seconds
        self.leader_check_seconds = leader_check_seconds
        # The key of this replica's entry in the peering objects, passed to kopf.
        self.identity = f"{socket.gethostname()}/{uuid.uuid4().hex[:8]}"
        self.client = MonitoredKubeClient(self._login, health=self.api_health)
        self.stores = StoreIndex()
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.tracked: dict[tuple[str, str], _Tracked] = {}
        self.connections = StoreConnections(
            lambda declaration, references: opener(
                declaration, refs=references, metrics=self.metrics
            )
        )
        self.reads = ReadCache(ttl=settings.cache_seconds)
        self.planner = RefreshPlanner()
        self._own_token = Refs(Path("/nonexistent"), pod_token=settings.pod_token)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._maintainer: asyncio.Task[None] | None = None
        # Set at cleanup; a daemon that kopf spawned while stopping waits on this too.
        self._closing: asyncio.Event | None = None
        self._lease_loop: asyncio.Task[None] | None = None
        self._peering_check: asyncio.Task[None] | None = None
        self._api_watch: asyncio.Task[None] | None = None
        self._leader_watch: asyncio.Task[None] | None = None
        # Problems /healthz lists in its body without failing, since a restart cannot fix them.
        self.warnings: dict[str, str] = {}
        self.health = HealthEndpoints(
            settings.listen_address,
            registry=self.metrics.registry,
            healthy=lambda: self._started,
            warnings=self._health_warnings,
        )
        self.dynamic = DynamicSecrets(
            client=self.client,
            settings=settings,
            metrics=self.metrics,
            resolver=lambda namespace: self._resolver(namespace, namespace),
            wake_owner=self._wake_owner,
            clock=lease_clock,
        )
        self.reconciler = Reconciler(
            client=self.client,
            stores=self.stores,
            connections=self.connections,
            reads=self.reads,
            planner=self.planner,
            metrics=self.metrics,
            resolvers=self._resolver,
            secrets=self.secrets,
            post_event=_post_event,
            dynamic=self.dynamic,
        )
        self._configure(peering_lifetime)
        self._register()

    async def run(
        self, *, stop_flag: asyncio.Event | None = None, ready_flag: asyncio.Event | None = None
    ) -> None:
        """Run until `stop_flag` is set (or the process is signalled, through kopf).

        Raises StartupError before kopf starts when there are no Kubernetes credentials, the
        API server does not respond within `api_startup_timeout`, or the listen address cannot
        be bound, because kopf would retry those forever. Also raises StartupError when kopf
        gives up on the API server while it starts its watches.
        """
        asyncio.get_running_loop().set_exception_handler(_quiet_connection_errors)
        server = await self._check_login()
        try:
            await self.health.start()
        except OSError as error:
            raise StartupError(
                f"cannot listen on {self.settings.listen} for /healthz and /metrics: "
                f"{error.strerror or error}; choose another address with --listen"
            ) from None
        namespaces = list(self.settings.namespaces)
        try:
            try:
                await wait_for_api(self.client, server, timeout=self.settings.api_startup_timeout)
            except ApiUnreachableError as error:
                await self.client.close()
                raise StartupError(str(error)) from None
            await kopf.operator(
                registry=self.registry,
                settings=self.kopf_settings,
                clusterwide=not namespaces,
                namespaces=namespaces,
                standalone=self.settings.standalone,
                priority=self.priority,
                peering_name=None if self.settings.standalone else self.settings.peering,
                identity=self.identity,  # type: ignore[arg-type]  # kopf's Identity is a str
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
        except aiohttp.ClientError as error:
            # kopf (1.45) retries a failed request of its start-up scan 9 times, then stops
            # the operator with the error.
            raise StartupError(
                f"lost the Kubernetes API server {server.describe()}: {error}; {server.fix()}"
            ) from None
        finally:
            await self.health.stop()

    async def _check_login(self) -> ApiServer:
        """Log in once; return the API server the credentials name and where they came from."""
        try:
            info = await self._login()
        # kopf's kubeconfig reader raises these for a missing, unreadable or malformed file.
        except (kopf.LoginError, OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as error:
            raise StartupError(
                f"no Kubernetes credentials: {error}; run in a pod with a service account "
                "token, or set KUBECONFIG to a readable kubeconfig file"
            ) from None
        self.api_server = ApiServer(url=str(info.server), source=self._login_source)
        return self.api_server

    # --- setup ---------------------------------------------------------------------------------

    def _configure(self, peering_lifetime: int) -> None:
        settings = self.kopf_settings
        settings.persistence.finalizer = FINALIZER
        settings.peering.lifetime = peering_lifetime
        settings.peering.stealth = True
        settings.posting.loggers = False
        settings.watching.label_selectors["v1", "secrets"] = f"{MANAGED_LABEL}=true"

    def _register(self) -> None:
        registry = self.registry
        kopf.on.login(registry=registry)(self._on_login)
        kopf.on.startup(registry=registry)(self._on_startup)
        kopf.on.cleanup(registry=registry)(self._on_cleanup)
        kopf.on.event(GROUP, VERSION, "secretstores", registry=registry)(self._on_store)
        kopf.on.event(GROUP, VERSION, "clustersecretstores", registry=registry)(self._on_store)
        kopf.on.event(GROUP, VERSION, GENERATOR_PLURAL, registry=registry)(self._on_generator)
        kopf.on.event(GROUP, VERSION, "externalsecrets", registry=registry)(
            self._on_external_secret
        )
        kopf.daemon(
            GROUP,
            VERSION,
            "externalsecrets",
            registry=registry,
            # A stopped daemon gets this long to finish its reconcile or its cleanup (a Merge
            # target losing the ExternalSecret's keys) before kopf cancels it.
            cancellation_backoff=10.0,
            cancellation_timeout=10.0,
        )(self._run_external_secret)
        # No client-side label filter: when someone removes the label, the watch reports the
        # Secret as DELETED without it, and that event must still wake the ExternalSecret.
        kopf.on.event("v1", "secrets", registry=registry)(self._on_secret)

    async def _default_login(self) -> kopf.ConnectionInfo:
        info = kopf.login_with_service_account(settings=self.kopf_settings, logger=logger)
        if info is not None:
            self._login_source = SERVICE_ACCOUNT
            return info
        info = kopf.login_with_kubeconfig(settings=self.kopf_settings, logger=logger)
        if info is not None:
            # kopf reads KUBECONFIG, else ~/.kube/config, and uses the current context.
            path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            self._login_source = f"kubeconfig {path}, current context"
            return info
        raise kopf.LoginError("no service account token and no kubeconfig found")

    async def _on_login(self, **_: Any) -> kopf.ConnectionInfo:
        return await self._login()

    async def _on_startup(self, **_: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        self._maintainer = asyncio.create_task(self._maintain_stores(), name="store maintenance")
        self._lease_loop = asyncio.create_task(self.dynamic.run(), name="lease loop")
        if not self.settings.standalone:
            self._peering_check = asyncio.create_task(self._check_peering(), name="peering check")
            self._leader_watch = asyncio.create_task(
                watch_leadership(
                    self.client,
                    [path for _, path in self._peering_objects()],
                    identity=self.identity,
                    priority=self.priority,
                    record=lambda leading: self.metrics.leader.set(1 if leading else 0),
                    interval=self.leader_check_seconds,
                ),
                name="leader gauge",
            )
        else:
            self.metrics.leader.set(1)
        if self.api_server is not None:
            self._api_watch = asyncio.create_task(
                watch_api(
                    self.client,
                    self.api_health,
                    self.api_server,
                    probe_seconds=self.api_probe_seconds,
                    after=self.api_warning_seconds,
                ),
                name="API server watch",
            )
        self._started = True
        log_event(
            logger,
            logging.INFO,
            "controller_started",
            listen=f"{self.health.address[0]}:{self.health.port}",
            priority=self.priority,
            namespaces=",".join(self.settings.namespaces) or "*",
        )

    async def _on_cleanup(self, **_: Any) -> None:
        self._started = False
        self.metrics.leader.set(0)
        if self._closing is not None:
            self._closing.set()
        tasks = (
            self._maintainer,
            self._lease_loop,
            self._peering_check,
            self._leader_watch,
            self._api_watch,
        )
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.dynamic.close()
        self.reads.close()
        await self.connections.close_all()
        await self.client.close()
        log_event(logger, logging.INFO, "controller_stopped")

    def _health_warnings(self) -> list[str]:
        warnings = list(self.warnings.values())
        if self.api_server is not None:
            outage = outage_warning(
                self.api_health, self.api_server, after=self.api_warning_seconds
            )
            if outage is not None:
                warnings.append(outage)
        return warnings

    def check_leases(self) -> None:
        """Make the lease loop look at every lease's schedule now; safe from any thread.

        Useful after the lease clock jumped (tests move the Vault emulator's clock).
        """
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.dynamic.wake)

    def _resolver(self, store_namespace: str | None, namespace: str) -> ReferenceResolver:
        assert self._loop is not None
        return ApiRefs(
            self.client,
            self._loop,
            store_namespace=store_namespace,
            external_secret_namespace=namespace,
            own_token=self._own_token,
        )

    async def _check_peering(self) -> None:
        """Warn while a peering object that leader election needs is missing.

        kopf pauses every handler until the object exists, and logs that only at debug level.
        """
        missing: set[str] = set()
        while True:
            # True while some object could not be looked up, so the check goes on.
            unknown = False
            for label, path in self._peering_objects():
                try:
                    found = await self.client.get(path) is not None
                except KubeApiError as error:
                    unknown = True
                    log_event(
                        logger,
                        logging.WARNING,
                        "peering_check_failed",
                        peering=label,
                        retry_in_s=PEERING_CHECK_SECONDS,
                        error=str(error),
                    )
                    continue
                if not found and label not in missing:
                    missing.add(label)
                    self.warnings[label] = (
                        f"{label} not found, so leader election keeps every handler paused; "
                        "create it (the Helm chart does) or run with --standalone"
                    )
                    log_event(
                        logger,
                        logging.WARNING,
                        "peering_missing",
                        peering=label,
                        fix="create it (the Helm chart does) or run with --standalone",
                    )
                elif found and label in missing:
                    missing.discard(label)
                    self.warnings.pop(label, None)
                    log_event(logger, logging.INFO, "peering_found", peering=label)
            if not missing and not unknown:
                return
            await asyncio.sleep(PEERING_CHECK_SECONDS)

    def _peering_objects(self) -> list[tuple[str, str]]:
        """Return the name and API path of each peering object kopf needs."""
        name = self.settings.peering
        if not self.settings.namespaces:
            return [(f"ClusterKopfPeering {name}", f"/apis/kopf.dev/v1/clusterkopfpeerings/{name}")]
        return [
            (
                f"KopfPeering {namespace}/{name}",
                f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings/{name}",
            )
            for namespace in self.settings.namespaces
        ]

    async def _maintain_stores(self) -> None:
        """Renew store credentials (Vault tokens) on their schedule; drop expired cache entries."""
        while True:
            delay = await self.connections.maintain()
            self.reads.expire()
            await asyncio.sleep(MAINTAIN_IDLE_SECONDS if delay is None else min(delay, 60.0))

    # --- ExternalSecrets -----------------------------------------------------------------------

    async def _on_external_secret(self, event: Mapping[str, Any], body: Any, **_: Any) -> None:
        body = plain(body)
        metadata = body.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        if event.get("type") == "DELETED":
            self._untrack(key)
            return
        tracked = self.tracked.setdefault(key, _Tracked())
        # The shapes are checked here only as far as the wake-ups need them. A spec of the wrong
        # shape still gets a fingerprint, so fixing it wakes the daemon, whose declaration
        # loader reports the problem in the status.
        spec = _mapping(body.get("spec"))
        tracked.target = (key[0], str(_mapping(spec.get("target")).get("name") or key[1]))
        store_ref = _mapping(spec.get("secretStoreRef"))
        kind = str(store_ref.get("kind") or "SecretStore")
        tracked.store = (
            kind,
            key[0] if kind == "SecretStore" else None,
            str(store_ref.get("name")),
        )
        tracked.generators = _generator_names(spec)
        fingerprint = (
            metadata.get("generation"),
            metadata.get("labels") or {},
            metadata.get("annotations") or {},
        )
        if tracked.fingerprint is not None and fingerprint != tracked.fingerprint:
            tracked.wake_for("spec")
        tracked.fingerprint = fingerprint
        self.metrics.external_secrets.set(len(self.tracked))

    def _untrack(self, key: tuple[str, str]) -> None:
        self.tracked.pop(key, None)
        self.metrics.external_secrets.set(len(self.tracked))

    async def _run_external_secret(self, stopped: Any, body: Any, **_: Any) -> None:
        metadata = body.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        tracked = self.tracked.setdefault(key, _Tracked())
        closing = self._closing or asyncio.Event()
        loop = asyncio.get_running_loop()
        # When the next reconcile is due (loop time); None waits for a wake-up. The first
        # reconcile runs at once.
        deadline: float | None = loop.time()
        while not stopped and not closing.is_set():
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is None or remaining > 0:
                timed_out = await _sleep(tracked.wake, stopped, closing, remaining)
                if stopped or closing.is_set():
                    break
                if not timed_out:
                    reasons = set(tracked.reasons)
                    tracked.wake.clear()
                    tracked.reasons.clear()
                    if reasons == {LEASE_RECORDS_CHANGED}:
                        await self._save_lease_records(key, body)
                        continue
                    if not self._due(tracked, reasons):
                        continue
            tracked.wake.clear()
            tracked.reasons.clear()
            outcome = await self._reconcile_until_stopped(key, body, tracked, stopped)
            if outcome is None:
                break
            if outcome.result == "error":
                tracked.failures += 1
            else:
                tracked.failures = 0
                tracked.once_done = tracked.once_done or outcome.delay is None
            deadline = None if outcome.delay is None else loop.time() + outcome.delay
        # Whether deleted, paused or stopping, this replica no longer reports on it.
        self.metrics.forget_external_secret(*key)
        if _pausing(stopped):
            # kopf stops daemons this way only when leader election pauses the operator.
            self.metrics.leader.set(0)
        deleted = _deleted(stopped)
        if not deleted and _exiting(stopped):
            # The cleanup lets go of every manager at once, within its time budget. Waiting
            # here for this one could mean waiting for a Vault request that never returns.
            return
        await self.dynamic.removed(key[0], key[1], deleted=deleted)
        if deleted:
            await self._forget_deleted(key, body)

    async def _reconcile_until_stopped(
        self, key: tuple[str, str], body: Any, tracked: _Tracked, stopped: Any
    ) -> Outcome | None:
        """Reconcile, but give up (returning None) when the operator stops or pauses meanwhile.

        A store request that never returns would otherwise hold the daemon, and the operator's
        stop, for kopf's whole cancellation backoff. The store's worker thread is abandoned.
        A deleted ExternalSecret's reconcile is left to finish: kopf cancels it after the
        backoff.
        """
        reconcile = asyncio.ensure_future(self._reconcile(key, body, tracked))
        stopping = asyncio.ensure_future(stopped.wait())
        try:
            await asyncio.wait((reconcile, stopping), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            reconcile.cancel()
            raise
        finally:
            stopping.cancel()
        if reconcile.done() or _deleted(stopped):
            return await reconcile
        reconcile.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconcile
        log_event(
            logger,
            logging.INFO,
            "reconcile_abandoned",
            namespace=key[0],
            external_secret=key[1],
            reason="controller_stopping",
        )
        return None

    async def _reconcile(self, key: tuple[str, str], body: Any, tracked: _Tracked) -> Outcome:
        try:
            return await self.reconciler.reconcile(body, failures=tracked.failures)
        except (KubeApiError, StoreError, OSError) as error:
            # Not a declared failure: the API or a store failed outside the reconcile's own
            # handling. The daemon keeps running and retries after a backoff.
            self.metrics.set_ready(*key, ready=False)
            log_event(
                logger,
                logging.ERROR,
                "reconcile_crashed",
                namespace=key[0],
                external_secret=key[1],
                error=f"{type(error).__name__}: {error}",
            )
            return Outcome("error", backoff_delay(tracked.failures + 1), str(error))

    async def _save_lease_records(self, key: tuple[str, str], body: Any) -> None:
        try:
            await self.reconciler.save_lease_records(body)
        except (KubeApiError, StoreError, OSError) as error:
            log_event(
                logger,
                logging.WARNING,
                "lease_records_not_saved",
                namespace=key[0],
                external_secret=key[1],
                error=f"{type(error).__name__}: {error}",
            )

    @staticmethod
    def _due(tracked: _Tracked, reasons: set[str]) -> bool:
        """Tell whether a wake-up needs a reconcile (after a one-time sync, only drift, a store
        change or a rotated lease does)."""
        if not tracked.once_done:
            return True
        return bool(reasons & {"drift", "store", LEASE_ROTATED})

    def _wake_owner(self, key: tuple[str, str], reason: str) -> None:
        tracked = self.tracked.get(key)
        if tracked is not None:
            tracked.wake_for(reason)

    async def _forget_deleted(self, key: tuple[str, str], body: Any) -> None:
        try:
            await self.reconciler.remove_merged_keys(body)
        except KubeApiError as error:
            log_event(
                logger,
                logging.WARNING,
                "merged_keys_not_removed",
                namespace=key[0],
                external_secret=key[1],
                error=str(error),
            )
        self._untrack(key)

    # --- Secrets and stores --------------------------------------------------------------------

    async def _on_secret(self, event: Mapping[str, Any], body: Any, **_: Any) -> None:
        body = plain(body)
        metadata = body.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        if event.get("type") == "DELETED":
            self.secrets.pop(key, None)
            self._wake_targets(key, "drift")
            return
        cached = self.secrets.get(key)
        if cached is not None and _older(metadata, cached.get("metadata") or {}):
            return
        self.secrets[key] = body
        if drifted(body):
            self._wake_targets(key, "drift")

    def _wake_targets(self, secret: tuple[str, str], reason: str) -> None:
        for tracked in self.tracked.values():
            if tracked.target == secret:
                tracked.wake_for(reason)

    async def _on_store(self, event: Mapping[str, Any], body: Any, **_: Any) -> None:
        body = plain(body)
        kind = str(body.get("kind"))
        metadata = body.get("metadata") or {}
        namespace = metadata.get("namespace") if kind == "SecretStore" else None
        key = (kind, namespace, str(metadata.get("name")))
        previous = self._store_state(key)
        if event.get("type") == "DELETED":
            self.stores.remove(key)
        else:
            self.stores.update(body)
            if kind == "SecretStore":
                self._reject_foreign_references(key, body)
        current = self._store_state(key)
        if current != previous:
            await self._store_changed(key, reopen=previous is not None and previous[0] == "valid")
        if event.get("type") != "DELETED":
            plural = "secretstores" if key[0] == "SecretStore" else "clustersecretstores"
            path = resource_path(plural, name=key[2], namespace=key[1], status=True)
            await self._write_validity(body, problems=self.stores.invalid.get(key), path=path)

    def _reject_foreign_references(
        self, key: tuple[str, str | None, str], body: Mapping[str, Any]
    ) -> None:
        """Record a SecretStore as invalid when a reference names another namespace."""
        assert key[1] is not None
        problems = foreign_namespace_references(body.get("spec"), key[1])
        if not problems:
            return
        self.stores.stores.pop(key, None)
        earlier = self.stores.invalid.get(key)
        self.stores.invalid[key] = " | ".join([earlier, *problems] if earlier else problems)

    async def _store_changed(self, key: tuple[str, str | None, str], *, reopen: bool) -> None:
        """Wake the ExternalSecrets of a store that was created, fixed, broken, changed or
        deleted, which would otherwise wait for their refresh or backoff (up to 5 min).

        `reopen` closes the store's connections first. Only a store that was valid has any.
        """
        if reopen:
            closed = await self.connections.close_store(*key)
            self.metrics.store_connections.set(len(self.connections))
            log_event(logger, logging.INFO, "store_changed", store=store_label(*key), closed=closed)
        for tracked in self.tracked.values():
            if tracked.store == key:
                tracked.wake_for("store")

    def _store_state(self, key: tuple[str, str | None, str]) -> tuple[str, str] | None:
        """Return what an ExternalSecret's reconcile depends on in a store: its spec digest, or
        its problems when it is invalid; None when the store is unknown."""
        known = self.stores.stores.get(key)
        if known is not None:
            return ("valid", known[1])
        problems = self.stores.invalid.get(key)
        return None if problems is None else ("invalid", problems)

    async def _on_generator(self, event: Mapping[str, Any], body: Any, **_: Any) -> None:
        body = plain(body)
        metadata = body.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        index = self.dynamic.index
        was_valid = key in index.generators
        if event.get("type") == "DELETED":
            index.remove(key)
        else:
            index.update(body)
            path = resource_path(GENERATOR_PLURAL, name=key[1], namespace=key[0], status=True)
            await self._write_validity(body, problems=index.invalid.get(key), path=path)
        self.dynamic.generator_changed(key)
        if was_valid and key not in index.generators:
            # Its ExternalSecrets report the problem now; a changed spec instead rotates their
            # leases through the lease loop.
            for (namespace, _name), tracked in self.tracked.items():
                if namespace == key[0] and key[1] in tracked.generators:
                    tracked.wake_for("store")

    async def _write_validity(
        self, body: Mapping[str, Any], *, problems: str | None, path: str
    ) -> None:
        """Report in the status whether a store's or generator's declaration is valid, without
        contacting the backend."""
        condition = {
            "type": "Ready",
            "status": "False" if problems else "True",
            "reason": "InvalidProviderConfig" if problems else "Valid",
            "message": problems or "declaration is valid",
        }
        current = [
            {k: v for k, v in item.items() if k != "lastTransitionTime"}
            for item in (body.get("status") or {}).get("conditions") or []
        ]
        if current == [condition]:
            return
        condition["lastTransitionTime"] = _now()
        try:
            await self.client.patch(path, {"status": {"conditions": [condition]}})
        except KubeApiError as error:
            metadata = body.get("metadata") or {}
            kind, name = str(body.get("kind")), str(metadata.get("name"))
            namespace = metadata.get("namespace")
            label = store_label(kind, namespace, name)
            if kind not in ("SecretStore", "ClusterSecretStore"):  # a VaultDynamicSecret
                label = f"{kind}/{qualified_name(name, namespace)}"
            log_event(logger, logging.WARNING, "store_status_failed", store=label, error=str(error))


async def _sleep(
    wake: asyncio.Event, stopped: Any, closing: asyncio.Event, delay: float | None
) -> bool:
    """Wait for a wake-up, the daemon's stop, the controller's cleanup, or `delay` seconds
    (None: no time limit). Returns True when the time ran out without any of them."""
    waiters = [
        asyncio.ensure_future(wake.wait()),
        asyncio.ensure_future(stopped.wait()),
        asyncio.ensure_future(closing.wait()),
    ]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return not wake.is_set() and not stopped and not closing.is_set()


def _deleted(stopped: Any) -> bool:
    """Tell whether kopf stopped a daemon because its ExternalSecret was deleted."""
    reason = stopped.reason
    return reason is not None and bool(reason & kopf.DaemonStoppingReason.RESOURCE_DELETED)


def _exiting(stopped: Any) -> bool:
    """Tell whether kopf stopped a daemon because the operator exits."""
    reason = stopped.reason
    return reason is not None and bool(reason & kopf.DaemonStoppingReason.OPERATOR_EXITING)


def _pausing(stopped: Any) -> bool:
    """Tell whether kopf stopped a daemon because leader election paused the operator."""
    reason = stopped.reason
    return reason is not None and bool(reason & kopf.DaemonStoppingReason.OPERATOR_PAUSING)


def _quiet_connection_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Log an API connection error that a kopf task raised, and that no code awaited, as one
    debug line instead of asyncio's traceback. The controller reports the failure itself."""
    error = context.get("exception")
    if isinstance(error, aiohttp.ClientError):
        log_event(
            logger,
            logging.DEBUG,
            "library_task_failed",
            message=context.get("message"),
            error=f"{type(error).__name__}: {error}",
        )
        return
    loop.default_exception_handler(context)


def _mapping(value: Any) -> Mapping[str, Any]:
    """Return `value` when it is a mapping, else an empty one (a field of the wrong shape)."""
    return value if isinstance(value, Mapping) else {}


def _generator_names(spec: Mapping[str, Any]) -> frozenset[str]:
    """Return the names of the generators that the `dataFrom` entries of a spec name."""
    names = set()
    entries = spec.get("dataFrom")
    for item in entries if isinstance(entries, list) else []:
        generator = _mapping(_mapping(_mapping(item).get("sourceRef")).get("generatorRef"))
        if generator.get("name"):
            names.add(str(generator["name"]))
    return frozenset(names)


def _older(new: Mapping[str, Any], cached: Mapping[str, Any]) -> bool:
    """True when a watch event carries an older resourceVersion than the cached Secret."""
    new_version, old_version = (
        str(new.get("resourceVersion", "")),
        str(cached.get("resourceVersion", "")),
    )
    if new_version.isdigit() and old_version.isdigit():
        return int(new_version) < int(old_version)
    return False


def _post_event(body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    kopf.event(dict(body), type=kind, reason=reason, message=message)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
