"""Whether kopf's peering lets this replica run its handlers, judged from the peering objects.

kopf keeps its pause state to itself, so the controller reads the same (Cluster)KopfPeering
objects and applies kopf's rule (kopf 1.x): each replica writes an entry
`status.<identity> = {priority, lifetime, lastseen}` and refreshes it while it runs. A replica
runs its handlers when no other live entry has a priority equal to or above its own, where an
entry is live until `lastseen + lifetime`. Two replicas with the same priority both pause.
Without a peering object kopf pauses every handler.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.controller.kube import KubeApiError, KubeClient

# kopf's defaults for an entry that lacks the field.
DEFAULT_PRIORITY = 0
DEFAULT_LIFETIME_SECONDS = 60


def leads(
    peering: Mapping[str, Any] | None, *, identity: str, priority: int, now: datetime.datetime
) -> bool:
    """Tell whether the replica `identity` with `priority` runs its handlers under one peering
    object (None when the object does not exist)."""
    if peering is None:
        return False
    status = peering.get("status")
    if not isinstance(status, Mapping):
        return True  # no replica has announced itself yet
    for peer, entry in status.items():
        if peer == identity or not isinstance(entry, Mapping):
            continue
        if not _live(entry, now):
            continue
        if _priority(entry) >= priority:
            return False
    return True


def _priority(entry: Mapping[str, Any]) -> int:
    try:
        return int(entry.get("priority", DEFAULT_PRIORITY))
    except (TypeError, ValueError):
        return DEFAULT_PRIORITY


def _live(entry: Mapping[str, Any], now: datetime.datetime) -> bool:
    """Tell whether an entry has not expired. An entry without `lastseen` is live, as in kopf,
    and so is one whose time cannot be read."""
    try:
        lifetime = float(entry.get("lifetime", DEFAULT_LIFETIME_SECONDS))
        seen = datetime.datetime.fromisoformat(str(entry["lastseen"]))
    except (KeyError, TypeError, ValueError):
        return True
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=datetime.UTC)
    return seen + datetime.timedelta(seconds=lifetime) > now


async def watch_leadership(
    client: KubeClient,
    paths: Sequence[str],
    *,
    identity: str,
    priority: int,
    record: Callable[[bool], None],
    interval: float,
) -> None:
    """Read the peering objects at `paths` every `interval` seconds and `record` whether this
    replica runs its handlers under all of them. Runs until cancelled.

    While an object cannot be read, the last recorded value stays.
    """
    while True:
        try:
            bodies = [await client.get(path) for path in paths]
        except KubeApiError:
            bodies = None
        if bodies is not None:
            now = datetime.datetime.now(datetime.UTC)
            record(
                all(leads(body, identity=identity, priority=priority, now=now) for body in bodies)
            )
        await asyncio.sleep(interval)
