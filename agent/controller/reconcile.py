"""One reconcile of an ExternalSecret: resolve the store, fetch, build the snapshot, write, report.

`Reconciler.reconcile` guarantees:
- The snapshot comes from `agent.snapshot.build_snapshot`, the agent's own code, so `property`,
  `extract`, `find`, `rewrite` and templates mean the same in a pod and in the cluster.
- On any failure the Secret stays as it is, and the caller backs off. The status gets
  `Ready=False` with reason `SecretSyncedError` and a message that names the problem, never a
  value. A Secret is written only when its content differs (see `agent.controller.secrets`).
- `deletionPolicy` (what happens when remote keys disappear) follows External Secrets Operator:
  Retain reports the missing key as an error, Merge drops the missing entries and keeps the
  Secret, Delete drops them and deletes the Secret (creationPolicy Owner) once nothing is left.
- Generator entries (`dataFrom[].sourceRef.generatorRef`) get their values from
  `agent.controller.dynamic`: read once per lease, and the lease records are written with the
  data they describe.
- Status goes through the status subresource; `spec` and metadata of the ExternalSecret are
  never written here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from agent.controller.cache import ConnectionKey, ReadCache, RefreshPlanner, StoreConnections
from agent.controller.dynamic import DynamicSecrets, uses_generators
from agent.controller.kube import KubeApiError, KubeClient, resource_path, secrets_path
from agent.controller.metrics import ControllerMetrics
from agent.controller.secrets import (
    Owner,
    SecretConflictError,
    check_secret_key,
    decoded_data,
    managed_keys,
    merge_conflicts,
    owned_by,
    owns_whole_secret,
    plan_lease_records,
    plan_removal,
    plan_write,
)
from agent.declarations import ExternalSecretDeclaration, StoreDeclaration, load_manifest
from agent.errors import DeclarationErrors, RemoteKeyNotFoundError, StoreError
from agent.goregexp import compile_regexp
from agent.logs import log_event
from agent.models import (
    CAProvider,
    ClusterStoreSpec,
    LabelSelector,
    SecretKeySelector,
    ServiceAccountSelector,
)
from agent.refs import ReferenceResolver
from agent.snapshot import (
    GeneratedValue,
    LeaseUse,
    Snapshot,
    SnapshotError,
    build_snapshot,
    remote_keys,
)
from agent.stores import RemoteKey
from agent.sync import backoff_delay

logger = logging.getLogger("agent.controller")

READY = "Ready"
SYNCED = "SecretSynced"
SYNC_ERROR = "SecretSyncedError"
DELETED = "SecretDeleted"
# A Secret name is a DNS subdomain.
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_SECRET_NAME = 253
NAMESPACE_LABELS_SECONDS = 30.0

EventPoster = Callable[[Mapping[str, Any], str, str, str], None]
ResolverFactory = Callable[[str | None, str], ReferenceResolver]


class ReconcileError(Exception):
    """A reconcile failed; `message` is for the status and names no value.

    `retry` is False when only a change to the ExternalSecret can help (an invalid spec).
    """

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class Outcome:
    """The result of one reconcile and when the next one is due."""

    result: str  # "success", "unchanged" or "error"
    # Seconds until the next reconcile; None waits for a change to the ExternalSecret or Secret.
    delay: float | None
    message: str = ""


@dataclass
class _Fetched:
    data: dict[str, bytes]
    store_group: tuple[str, str | None, str]
    leases: tuple[LeaseUse, ...] = ()


Generated = Mapping[int, GeneratedValue | StoreError]


class StoreIndex:
    """Store declarations seen by the watch, keyed by (kind, namespace or None, name)."""

    def __init__(self) -> None:
        self.stores: dict[tuple[str, str | None, str], tuple[StoreDeclaration, str]] = {}
        self.invalid: dict[tuple[str, str | None, str], str] = {}

    def update(self, body: Mapping[str, Any]) -> tuple[str, str | None, str]:
        """Record a store object; return its key. An invalid one is remembered with its problems."""
        kind = str(body.get("kind"))
        metadata = body.get("metadata") or {}
        namespace = metadata.get("namespace") if kind == "SecretStore" else None
        key = (kind, namespace, str(metadata.get("name")))
        try:
            declaration = load_manifest(body, source=_describe(kind, namespace, key[2]))
        except DeclarationErrors as error:
            self.stores.pop(key, None)
            self.invalid[key] = declaration_problems(error)
            return key
        assert isinstance(declaration, StoreDeclaration)
        self.invalid.pop(key, None)
        self.stores[key] = (declaration, spec_digest(declaration.spec))
        return key

    def remove(self, key: tuple[str, str | None, str]) -> None:
        self.stores.pop(key, None)
        self.invalid.pop(key, None)


class Reconciler:
    """Reconciles ExternalSecrets; one instance serves the whole controller."""

    def __init__(
        self,
        *,
        client: KubeClient,
        stores: StoreIndex,
        connections: StoreConnections,
        reads: ReadCache,
        planner: RefreshPlanner,
        metrics: ControllerMetrics,
        resolvers: ResolverFactory,
        secrets: dict[tuple[str, str], dict[str, Any]],
        post_event: EventPoster,
        dynamic: DynamicSecrets | None = None,
    ) -> None:
        self.client = client
        self.stores = stores
        self.connections = connections
        self.reads = reads
        self.planner = planner
        self.metrics = metrics
        self.resolvers = resolvers
        # Managed Secrets as the watch last delivered them (namespace, name) -> body.
        self.secrets = secrets
        self.post_event = post_event
        self.dynamic = dynamic
        self._namespace_labels: dict[str, tuple[float, dict[str, str]]] = {}

    async def reconcile(self, body: Mapping[str, Any], *, failures: int) -> Outcome:
        """Bring one ExternalSecret's Secret up to date and write its status."""
        started = time.perf_counter()
        body = plain(body)
        metadata = body.get("metadata") or {}
        namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
        try:
            declaration = self.declaration(body)
            fetched = await self._fetch(declaration, namespace)
            records = await self._lease_records(declaration, fetched.leases)
            try:
                action, problem = await self._write(declaration, body, fetched.data, records)
            except ReconcileError:
                if self.dynamic is not None and records is not None:
                    await self.dynamic.not_written(declaration, fetched.leases)
                raise
            await self._committed(declaration, fetched.leases, records)
            await self._release_previous_targets(declaration, _owner(body))
            if problem:
                raise ReconcileError(problem)
        except ReconcileError as error:
            outcome = await self._failed(body, error, failures=failures)
        else:
            outcome = await self._succeeded(body, declaration, fetched, action, failures=failures)
        self.metrics.reconcile_total.labels(outcome.result).inc()
        self.metrics.reconcile_duration.observe(time.perf_counter() - started)
        log_event(
            logger,
            logging.INFO if outcome.result != "error" else logging.WARNING,
            "reconcile_done" if outcome.result != "error" else "reconcile_failed",
            namespace=namespace,
            external_secret=name,
            result=outcome.result,
            retry_in_s=None if outcome.delay is None else round(outcome.delay, 1),
            duration_ms=round((time.perf_counter() - started) * 1000),
            **({"error": outcome.message} if outcome.result == "error" else {}),
        )
        return outcome

    async def remove_merged_keys(self, body: Mapping[str, Any]) -> None:
        """Take a deleted ExternalSecret's keys out of a Secret it merged into."""
        body = plain(body)
        try:
            declaration = self.declaration(body)
        except ReconcileError:
            return
        if declaration.spec.target.creation_policy != "Merge":
            return
        owner = _owner(body)
        assert declaration.namespace is not None
        path = secrets_path(declaration.namespace, declaration.target)
        for _attempt in range(3):
            existing = await self.client.get(path)
            patch = (
                None
                if existing is None
                else plan_removal(declaration, owner=owner, existing=existing)
            )
            if patch is None:
                return
            try:
                await self.client.patch(path, patch)
                return
            except KubeApiError as error:
                if not error.conflict:
                    raise

    async def save_lease_records(self, body: Mapping[str, Any]) -> None:
        """Update the lease records on the Secret of one ExternalSecret, and nothing else.

        Runs after a renewal changed the records while the data stayed the same. A Secret that
        does not list the ExternalSecret in its managed keys is never touched.
        """
        body = plain(body)
        try:
            declaration = self.declaration(body)
        except ReconcileError:
            return
        if self.dynamic is None or declaration.spec.target.creation_policy == "None":
            return
        records = await self.dynamic.records(declaration)
        assert declaration.namespace is not None
        owner = _owner(body)
        for _attempt in range(3):
            existing = await self._current_secret(declaration.namespace, declaration.target)
            if existing is None or owner.name not in managed_keys(existing):
                return
            patch = plan_lease_records(owner=owner, records=records, existing=existing)
            try:
                if patch is not None:
                    path = secrets_path(declaration.namespace, declaration.target)
                    self._remember(await self.client.patch(path, patch))
            except KubeApiError as error:
                if error.conflict or error.not_found:
                    self.secrets.pop((declaration.namespace, declaration.target), None)
                    continue
                log_event(
                    logger,
                    logging.WARNING,
                    "lease_records_not_saved",
                    namespace=declaration.namespace,
                    external_secret=declaration.name,
                    error=str(error),
                )
                return
            self.dynamic.written(declaration, records)
            return

    def declaration(self, body: Mapping[str, Any]) -> ExternalSecretDeclaration:
        """Validate the ExternalSecret with the agent's models; raise ReconcileError if invalid."""
        metadata = body.get("metadata") or {}
        source = _describe("ExternalSecret", metadata.get("namespace"), metadata.get("name"))
        try:
            declaration = load_manifest(body, source=source)
        except DeclarationErrors as error:
            raise ReconcileError(declaration_problems(error), retry=False) from None
        assert isinstance(declaration, ExternalSecretDeclaration)
        spec = declaration.spec
        reads_store = spec.data or any(item.source_ref is None for item in spec.data_from)
        if declaration.store_ref is None and reads_store:
            raise ReconcileError(
                "spec.secretStoreRef is missing; name the store to read from (only "
                "dataFrom.sourceRef.generatorRef entries need none)",
                retry=False,
            )
        if spec.target.creation_policy == "None" and uses_generators(declaration):
            # Credentials minted here would reach no consumer. Without a Secret to contain the
            # lease records, every restart would also mint new ones.
            raise ReconcileError(
                "spec.target.creationPolicy: None writes no Secret, so the credentials of its "
                "dataFrom generatorRef entries would reach no consumer; use Owner, Orphan or "
                "Merge, or remove the generatorRef entries",
                retry=False,
            )
        target = declaration.target
        if len(target) > _MAX_SECRET_NAME or not _SECRET_NAME.fullmatch(target):
            raise ReconcileError(
                f"spec.target.name: {target!r} is not a valid Secret name; use lowercase letters, "
                "digits, '-' and '.'",
                retry=False,
            )
        for index, item in enumerate(declaration.spec.data):
            reason = check_secret_key(item.secret_key)
            if reason is not None:
                raise ReconcileError(
                    f"spec.data[{index}].secretKey: {item.secret_key!r} {reason}, so it cannot "
                    "be a Kubernetes Secret key; rename it",
                    retry=False,
                )
        template = spec.target.template
        for key in template.data if template is not None else {}:
            reason = check_secret_key(key)
            if reason is not None:
                raise ReconcileError(
                    f"spec.target.template.data: {key!r} {reason}, so it cannot be a Kubernetes "
                    "Secret key; rename the entry",
                    retry=False,
                )
        return declaration

    # --- fetching ------------------------------------------------------------------------------

    async def _fetch(self, declaration: ExternalSecretDeclaration, namespace: str) -> _Fetched:
        generated = await self._generated(declaration)
        if declaration.store_ref is None:
            snapshot = await self._snapshot(declaration, None, {}, generated)
            return _Fetched(dict(snapshot.data), ("generators", namespace, ""), snapshot.leases)
        store, digest, key = await self._store(declaration, namespace)
        connection_key = ConnectionKey(
            kind=store.kind,
            namespace=key[1],
            name=store.name,
            spec_digest=digest,
            references_namespace=namespace if _reads_own_namespace(store) else None,
        )
        try:
            connection = await self.connections.get(
                connection_key, store, lambda: self.resolvers(key[1], namespace)
            )
        except StoreError as error:
            raise ReconcileError(str(error)) from None
        self.metrics.store_connections.set(len(self.connections))
        keys = remote_keys(declaration)
        try:
            fetched = await self.reads.fetch(connection, keys) if keys else {}
        except StoreError as error:
            raise ReconcileError(str(error)) from None
        snapshot = await self._snapshot(declaration, connection, fetched, generated)
        return _Fetched(dict(snapshot.data), (store.kind, key[1], store.name), snapshot.leases)

    async def _generated(self, declaration: ExternalSecretDeclaration) -> Generated | None:
        """Return the values of the generator entries; None when there are none."""
        if self.dynamic is None:
            return None
        if not uses_generators(declaration):
            self.dynamic.declared(declaration)
            return None
        assert declaration.namespace is not None
        secret = await self._current_secret(declaration.namespace, declaration.target)
        data = decoded_data(secret) if secret is not None else {}
        try:
            return await self.dynamic.values_for(declaration, secret=secret, data=data)
        except StoreError as error:
            raise ReconcileError(str(error)) from None

    async def _snapshot(
        self,
        declaration: ExternalSecretDeclaration,
        connection: Any,
        fetched: Mapping[RemoteKey, Any],
        generated: Generated | None,
    ) -> Snapshot:
        """Build the snapshot in a worker thread, reading prefixes through the shared cache."""
        loop = asyncio.get_running_loop()

        def read_prefix(path: str) -> Mapping[str, Any]:
            future = asyncio.run_coroutine_threadsafe(
                self.reads.fetch_prefix(connection, path), loop
            )
            return future.result()

        def build(subject: ExternalSecretDeclaration, values: Generated | None) -> Snapshot:
            return build_snapshot(
                subject,
                store_name=connection.store.name if connection is not None else "-",
                fetched=fetched,
                read_prefix=read_prefix,
                generated=values,
            )

        try:
            return await loop.run_in_executor(None, build, declaration, generated)
        except SnapshotError as error:
            reduced = _without_missing(declaration, error, fetched)
            if reduced is None:
                raise ReconcileError(str(error)) from None
        subject, kept = reduced
        values = None
        if generated is not None:
            values = {new: generated[old] for new, old in enumerate(kept) if old in generated}
        try:
            return await loop.run_in_executor(None, build, subject, values)
        except SnapshotError as error:
            raise ReconcileError(str(error)) from None

    async def _lease_records(
        self, declaration: ExternalSecretDeclaration, leases: tuple[LeaseUse, ...]
    ) -> list[dict[str, Any]] | None:
        """Return the lease records to write with the Secret; None leaves the annotation alone
        (an ExternalSecret that never used generators)."""
        if self.dynamic is None or not (leases or uses_generators(declaration)):
            return None
        return await self.dynamic.records(declaration, leases)

    async def _committed(
        self,
        declaration: ExternalSecretDeclaration,
        leases: tuple[LeaseUse, ...],
        records: list[dict[str, Any]] | None,
    ) -> None:
        if self.dynamic is None or records is None:
            return
        self.dynamic.written(declaration, records)
        await self.dynamic.committed(declaration, leases)

    async def _store(
        self, declaration: ExternalSecretDeclaration, namespace: str
    ) -> tuple[StoreDeclaration, str, tuple[str, str | None, str]]:
        assert declaration.store_ref is not None
        kind, name = declaration.store_ref
        key = (kind, namespace if kind == "SecretStore" else None, name)
        if key not in self.stores.stores and key not in self.stores.invalid:
            await self._load_store(key)
        if key in self.stores.invalid:
            raise ReconcileError(
                f"{_describe(*key)} is invalid: {self.stores.invalid[key]}; fix the store"
            )
        if key not in self.stores.stores:
            where = f" in namespace {namespace}" if kind == "SecretStore" else ""
            fix = (
                "create it in the ExternalSecret's namespace (a SecretStore serves only its own "
                "namespace), or refer to a ClusterSecretStore"
                if kind == "SecretStore"
                else "create it, or fix spec.secretStoreRef"
            )
            raise ReconcileError(f"{kind} {name} not found{where}; {fix}")
        store, digest = self.stores.stores[key]
        if isinstance(store.spec, ClusterStoreSpec) and store.spec.conditions:
            if not await self._store_serves(store.spec, namespace):
                raise ReconcileError(
                    f"ClusterSecretStore {name} does not serve namespace {namespace} (its "
                    "spec.conditions exclude it); use another store or extend the conditions"
                )
        return store, digest, key

    async def _load_store(self, key: tuple[str, str | None, str]) -> None:
        kind, namespace, name = key
        plural = "secretstores" if kind == "SecretStore" else "clustersecretstores"
        try:
            body = await self.client.get(resource_path(plural, name=name, namespace=namespace))
        except KubeApiError as error:
            raise ReconcileError(f"reading {_describe(*key)} failed: {error}") from None
        if body is not None:
            self.stores.update(body)

    async def _store_serves(self, spec: ClusterStoreSpec, namespace: str) -> bool:
        """Apply a ClusterSecretStore's conditions: any condition that matches admits."""
        for condition in spec.conditions:
            if namespace in condition.namespaces:
                return True
            # Go regexp syntax, as the declarations check it (`(?<name>...)` and the like).
            if any(
                compile_regexp(pattern).search(namespace) for pattern in condition.namespace_regexes
            ):
                return True
            if condition.namespace_selector is not None:
                labels = await self._labels_of(namespace)
                if _selector_matches(condition.namespace_selector, labels):
                    return True
        return False

    async def _labels_of(self, namespace: str) -> dict[str, str]:
        cached = self._namespace_labels.get(namespace)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            body = await self.client.get(f"/api/v1/namespaces/{namespace}")
        except KubeApiError as error:
            raise ReconcileError(f"reading namespace {namespace} failed: {error}") from None
        labels = dict(((body or {}).get("metadata") or {}).get("labels") or {})
        self._namespace_labels[namespace] = (now + NAMESPACE_LABELS_SECONDS, labels)
        return labels

    # --- writing -------------------------------------------------------------------------------

    async def _write(
        self,
        declaration: ExternalSecretDeclaration,
        body: Mapping[str, Any],
        data: Mapping[str, bytes],
        leases: list[dict[str, Any]] | None = None,
    ) -> tuple[str, str]:
        """Write the Secret; return the action and a problem to report after the write.

        The action is "created", "updated", "deleted", "unchanged", or "absent" (deletionPolicy
        Delete found nothing to fetch and no Secret to delete). The problem is empty, or names
        the secret keys that another ExternalSecret merged into the Secret first. Those keys are
        left out, and the rest is written.
        """
        invalid = [key for key in sorted(data) if check_secret_key(key) is not None]
        if invalid:
            shown = ", ".join(repr(key) for key in invalid[:5])
            raise ReconcileError(
                f"secret key(s) {shown} cannot be Kubernetes Secret keys (letters, digits, '-', "
                "'_' and '.' only, at most 253 characters); add a dataFrom rewrite that renames "
                "them"
            )
        assert declaration.namespace is not None
        path = secrets_path(declaration.namespace, declaration.target)
        owner = _owner(body)
        for attempt in (1, 2):
            existing = await self._current_secret(declaration.namespace, declaration.target)
            _check_retained(declaration, body, owner=owner, data=data, existing=existing)
            conflicts = merge_conflicts(declaration, owner=owner, data=data, existing=existing)
            writable = {key: value for key, value in data.items() if key not in conflicts}
            problem = _conflict_problem(declaration, conflicts)
            try:
                if not data and declaration.spec.target.deletion_policy == "Delete":
                    return await self._delete_secret(declaration, owner, existing), ""
                write = plan_write(
                    declaration, owner=owner, data=writable, existing=existing, leases=leases
                )
                if write is None:
                    return "unchanged", problem
                if write.action == "create":
                    written = await self.client.create(
                        secrets_path(declaration.namespace), write.body
                    )
                elif write.action == "replace":
                    assert existing is not None
                    written = await self._replace_secret(declaration, existing, write.body)
                else:
                    written = await self.client.patch(path, write.body)
            except SecretConflictError as error:
                raise ReconcileError(str(error)) from None
            except KubeApiError as error:
                if (error.conflict or error.not_found) and attempt == 1:
                    # The cached Secret was stale: read it from the API and plan again.
                    self.secrets.pop((declaration.namespace, declaration.target), None)
                    continue
                fix = ""
                if error.status == 413:
                    # The size estimate passed, but the request (values in base64) was larger
                    # than the API server or a proxy in front of it accepts.
                    fix = (
                        "; the request was too large, so split the ExternalSecret into several "
                        "with their own spec.target.name"
                    )
                raise ReconcileError(
                    f"writing Secret {declaration.target} failed: {error}{fix}"
                ) from None
            self._remember(written)
            return ("created" if write.action == "create" else "updated"), problem
        raise AssertionError("unreachable")  # pragma: no cover

    async def _release_previous_targets(
        self, declaration: ExternalSecretDeclaration, owner: Owner
    ) -> None:
        """Take the ExternalSecret out of Secrets it wrote under an earlier spec.target.name.

        They are found in the cache of managed Secrets by their managed-keys annotation. A
        failure is logged, and the next reconcile tries again.
        """
        assert declaration.namespace is not None
        previous = [
            name
            for (namespace, name), secret in list(self.secrets.items())
            if namespace == declaration.namespace
            and name != declaration.target
            and owner.name in managed_keys(secret)
        ]
        for name in previous:
            try:
                await self._release_target(declaration.namespace, name, owner)
            except KubeApiError as error:
                log_event(
                    logger,
                    logging.WARNING,
                    "previous_target_not_released",
                    namespace=declaration.namespace,
                    external_secret=declaration.name,
                    secret=name,
                    error=str(error),
                )

    async def _release_target(self, namespace: str, name: str, owner: Owner) -> None:
        """Release one earlier target Secret: delete it when it is this ExternalSecret's own
        (its owner reference, no other ExternalSecret's keys), else remove the ExternalSecret's
        entries and markers. Its keys go too, except from an Orphan Secret, which keeps its
        data."""
        path = secrets_path(namespace, name)
        existing = self.secrets.get((namespace, name))
        for _attempt in range(3):
            if existing is None or owner.name not in managed_keys(existing):
                return
            ours = owned_by(existing, owner)
            alone = set(managed_keys(existing)) == {owner.name}
            try:
                if ours and alone:
                    await self.client.delete(
                        path, resource_version=existing["metadata"]["resourceVersion"]
                    )
                    self.secrets.pop((namespace, name), None)
                    action = "deleted"
                else:
                    # An Orphan Secret is one the controller created for this ExternalSecret
                    # alone, without an owner reference; in any other, its keys were merged.
                    keep_data = owns_whole_secret(existing) and alone and not ours
                    patch = plan_removal(None, owner=owner, existing=existing, keep_data=keep_data)
                    if patch is None:
                        return
                    written = await self.client.patch(path, patch)
                    if managed_keys(written):
                        self._remember(written)
                    else:  # no longer managed, so the watch drops it as well
                        self.secrets.pop((namespace, name), None)
                    action = "released"
            except KubeApiError as error:
                if not (error.conflict or error.not_found):
                    raise
                # The cached Secret was stale: read it again.
                self.secrets.pop((namespace, name), None)
                existing = await self.client.get(path)
                continue
            log_event(
                logger,
                logging.INFO,
                "previous_target_released",
                namespace=namespace,
                external_secret=owner.name,
                secret=name,
                action=action,
            )
            return

    async def _replace_secret(
        self,
        declaration: ExternalSecretDeclaration,
        existing: Mapping[str, Any],
        body: Mapping[str, Any],
    ) -> Any:
        """Delete the Secret (only the version that was planned against) and create `body`."""
        assert declaration.namespace is not None
        path = secrets_path(declaration.namespace, declaration.target)
        await self.client.delete(path, resource_version=existing["metadata"]["resourceVersion"])
        self.secrets.pop((declaration.namespace, declaration.target), None)
        log_event(
            logger,
            logging.INFO,
            "secret_replaced",
            namespace=declaration.namespace,
            secret=declaration.target,
        )
        try:
            return await self.client.create(secrets_path(declaration.namespace), body)
        except KubeApiError as error:
            if not error.conflict:
                raise
        # The old Secret still exists: a finalizer of someone else keeps it until removed.
        raise ReconcileError(
            f"Secret {declaration.target} is being deleted to change its type or immutable data, "
            "and a finalizer keeps it; it is created again once it is gone"
        )

    async def _delete_secret(
        self,
        declaration: ExternalSecretDeclaration,
        owner: Owner,
        existing: Mapping[str, Any] | None,
    ) -> str:
        if existing is None:
            return "absent"
        if declaration.spec.target.creation_policy != "Owner":
            raise ReconcileError(
                "every remote key is gone, and deletionPolicy Delete removes only a Secret with "
                "creationPolicy Owner"
            )
        references = (existing.get("metadata") or {}).get("ownerReferences") or []
        if not any(reference.get("uid") == owner.uid for reference in references):
            raise SecretConflictError(
                f"Secret {declaration.target} is not owned by this ExternalSecret; it is kept"
            )
        assert declaration.namespace is not None
        await self.client.delete(
            secrets_path(declaration.namespace, declaration.target),
            resource_version=existing["metadata"]["resourceVersion"],
        )
        self.secrets.pop((declaration.namespace, declaration.target), None)
        return "deleted"

    async def _current_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        cached = self.secrets.get((namespace, name))
        if cached is not None:
            return cached
        try:
            body = await self.client.get(secrets_path(namespace, name))
        except KubeApiError as error:
            raise ReconcileError(f"reading Secret {name} failed: {error}") from None
        return body

    def _remember(self, written: Mapping[str, Any]) -> None:
        metadata = written.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        self.secrets[key] = dict(written)

    # --- status --------------------------------------------------------------------------------

    async def _succeeded(
        self,
        body: Mapping[str, Any],
        declaration: ExternalSecretDeclaration,
        fetched: _Fetched,
        action: str,
        *,
        failures: int,
    ) -> Outcome:
        target = declaration.target
        if action in ("deleted", "absent"):
            reason, message = DELETED, f"Secret {target} deleted: every remote key is gone"
            ready = False
        elif declaration.spec.target.creation_policy == "None":
            reason, message, ready = SYNCED, "fetched; creationPolicy None writes no Secret", True
        else:
            reason, message, ready = SYNCED, f"Secret {target} is in sync", True
        metadata = body.get("metadata") or {}
        namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
        try:
            await self._write_status(body, ready=ready, reason=reason, message=message, synced=True)
        except KubeApiError as error:
            # The Secret is written; the status is retried after a backoff that grows with
            # each failure, as a store's does.
            self.metrics.set_ready(namespace, name, ready=False)
            problem = ReconcileError(f"writing the status failed: {error}")
            return Outcome("error", backoff_delay(failures + 1), str(problem))
        self.metrics.set_ready(namespace, name, ready=ready)
        if action in ("created", "updated", "deleted"):
            event_reason = action.capitalize()
            self.post_event(body, "Normal", event_reason, f"Secret {target} {action}")
        interval = declaration.spec.refresh_interval
        delay = None
        if interval > 0:
            delay = max(
                0.0, self.planner.next_refresh(fetched.store_group, interval) - time.monotonic()
            )
        result = "unchanged" if action in ("unchanged", "absent") else "success"
        return Outcome(result, delay, message)

    async def _failed(
        self, body: Mapping[str, Any], error: ReconcileError, *, failures: int
    ) -> Outcome:
        message = str(error)
        metadata = body.get("metadata") or {}
        self.metrics.set_ready(
            str(metadata.get("namespace")), str(metadata.get("name")), ready=False
        )
        previous = _ready_condition(body)
        if previous is None or previous.get("message") != message:
            self.post_event(body, "Warning", "UpdateFailed", message)
        try:
            await self._write_status(
                body, ready=False, reason=SYNC_ERROR, message=message, synced=False
            )
        except KubeApiError as status_error:
            log_event(
                logger,
                logging.WARNING,
                "status_write_failed",
                external_secret=(body.get("metadata") or {}).get("name"),
                error=str(status_error),
            )
        delay = backoff_delay(failures + 1) if error.retry else None
        return Outcome("error", delay, message)

    async def _write_status(
        self,
        body: Mapping[str, Any],
        *,
        ready: bool,
        reason: str,
        message: str,
        synced: bool,
    ) -> None:
        """Patch the status subresource when it changes; a success always moves refreshTime."""
        metadata = body.get("metadata") or {}
        current = dict(body.get("status") or {})
        previous = _ready_condition(body) or {}
        status = "True" if ready else "False"
        transition = previous.get("lastTransitionTime")
        if previous.get("status") != status or transition is None:
            transition = _now()
        condition = {
            "type": READY,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": transition,
        }
        new = dict(current)
        new["conditions"] = [condition]
        if synced:
            new["refreshTime"] = _now()
            new["syncedResourceVersion"] = synced_resource_version(body)
        if new == current:
            return
        path = resource_path(
            "externalsecrets",
            name=str(metadata.get("name")),
            namespace=str(metadata.get("namespace")),
            status=True,
        )
        try:
            await self.client.patch(path, {"status": new})
        except KubeApiError as error:
            if not error.not_found:  # the ExternalSecret is gone: nothing to report on
                raise


# --- helpers -------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """Copy kopf's body views (mappings and sequences) into plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def declaration_problems(error: DeclarationErrors) -> str:
    """Render declaration errors for a status message: field, problem and fix of each."""
    parts = []
    for item in error.errors:
        text = f"{item.field}: {item.problem}" if item.field else item.problem
        parts.append(f"{text}; {item.fix}" if item.fix else text)
    return " | ".join(parts)


def spec_digest(spec: BaseModel) -> str:
    return hashlib.sha256(spec.model_dump_json(by_alias=True).encode()).hexdigest()[:16]


def synced_resource_version(body: Mapping[str, Any]) -> str:
    """`<generation>-<hash of labels and annotations>`, as External Secrets Operator writes it."""
    metadata = body.get("metadata") or {}
    meta = {
        "labels": metadata.get("labels") or {},
        "annotations": metadata.get("annotations") or {},
    }
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    return f"{metadata.get('generation', 0)}-{digest}"


def _without_missing(
    declaration: ExternalSecretDeclaration,
    error: SnapshotError,
    fetched: Mapping[RemoteKey, Any],
) -> tuple[ExternalSecretDeclaration, list[int]] | None:
    """For deletionPolicy Delete and Merge, drop the entries whose remote key is gone.

    Returns the reduced declaration and, for each of its `dataFrom` entries, the entry's index
    in the original. Returns None when the policy is Retain, or when some failure is not a
    missing remote key (a missing property, an invalid value, a store error), which stays an
    error.
    """
    if declaration.spec.target.deletion_policy == "Retain":
        return None
    gone = {key.key for key, value in fetched.items() if isinstance(value, RemoteKeyNotFoundError)}
    missing = set()
    for failure in error.errors:
        if not isinstance(failure, RemoteKeyNotFoundError) or failure.remote_key not in gone:
            return None
        missing.add(failure.remote_key)
    spec = declaration.spec
    data = [item for item in spec.data if item.remote_ref.key not in missing]
    kept = [
        index
        for index, item in enumerate(spec.data_from)
        if item.extract is None or item.extract.key not in missing
    ]
    data_from = [spec.data_from[index] for index in kept]
    reduced = spec.model_copy(update={"data": data, "data_from": data_from})
    return dataclasses.replace(declaration, spec=reduced), kept


def _check_retained(
    declaration: ExternalSecretDeclaration,
    body: Mapping[str, Any],
    *,
    owner: Owner,
    data: Mapping[str, bytes],
    existing: Mapping[str, Any] | None,
) -> None:
    """Under deletionPolicy Retain, raise ReconcileError when secret keys this ExternalSecret
    wrote with the same spec are missing from the snapshot now.

    That happens when a `find`, or an `extract` of a path, matches fewer remote keys than
    before, or when an extracted JSON value lost a field. A missing `data` remote key fails the
    snapshot itself. The spec counts as the same when the status shows the current generation
    was synced, so a spec change that drops keys is applied.
    """
    if declaration.spec.target.deletion_policy != "Retain" or existing is None:
        return
    previous = managed_keys(existing).get(owner.name)
    if not previous or not _generation_synced(body):
        return
    missing = sorted(set(previous) - set(data))
    if not missing:
        return
    shown = ", ".join(repr(key) for key in missing[:10])
    if len(missing) > 10:
        shown += f" and {len(missing) - 10} more"
    raise ReconcileError(
        f"secret key(s) {shown} of Secret {declaration.target} are no longer found in the store "
        "(a dataFrom find or extract matched fewer remote keys), and deletionPolicy Retain keeps "
        "the Secret's data unchanged; restore the remote keys, or set spec.target.deletionPolicy "
        "to Merge to drop them"
    )


def _generation_synced(body: Mapping[str, Any]) -> bool:
    """Tell whether the status records that the ExternalSecret's current generation synced."""
    synced = str((body.get("status") or {}).get("syncedResourceVersion") or "")
    generation = (body.get("metadata") or {}).get("generation")
    return generation is not None and synced.partition("-")[0] == str(generation)


def _conflict_problem(declaration: ExternalSecretDeclaration, conflicts: Mapping[str, str]) -> str:
    """Describe secret keys left out because other ExternalSecrets merged them first."""
    if not conflicts:
        return ""
    by_writer: dict[str, list[str]] = {}
    for key, writer in sorted(conflicts.items()):
        by_writer.setdefault(writer, []).append(repr(key))
    parts = [f"{', '.join(keys)} (written by ExternalSecret {w})" for w, keys in by_writer.items()]
    return (
        f"secret key(s) {'; '.join(parts)} of Secret {declaration.target} were merged into it "
        "by another ExternalSecret first, so this one leaves them out and writes the rest; give "
        "each key one writer (rename it with secretKey or a dataFrom rewrite)"
    )


def _reads_own_namespace(store: StoreDeclaration) -> bool:
    """True for a ClusterSecretStore with a reference that names no namespace."""
    if store.kind != "ClusterSecretStore":
        return False
    return any(reference.namespace is None for reference in _references(store.spec))


def _references(model: Any) -> list[Any]:
    found = []
    if isinstance(model, SecretKeySelector | ServiceAccountSelector | CAProvider):
        found.append(model)
    if isinstance(model, BaseModel):
        for name in type(model).model_fields:
            found += _references(getattr(model, name))
    elif isinstance(model, list | tuple):
        for item in model:
            found += _references(item)
    return found


def _selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    for expression in selector.match_expressions:
        present = expression.key in labels
        value = labels.get(expression.key)
        if expression.operator == "In" and value not in expression.values:
            return False
        if expression.operator == "NotIn" and present and value in expression.values:
            return False
        if expression.operator == "Exists" and not present:
            return False
        if expression.operator == "DoesNotExist" and present:
            return False
    return True


def _owner(body: Mapping[str, Any]) -> Owner:
    metadata = body.get("metadata") or {}
    return Owner(name=str(metadata.get("name")), uid=str(metadata.get("uid")))


def _ready_condition(body: Mapping[str, Any]) -> dict[str, Any] | None:
    for condition in (body.get("status") or {}).get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == READY:
            return condition
    return None


def _describe(kind: str, namespace: str | None, name: str | None) -> str:
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
