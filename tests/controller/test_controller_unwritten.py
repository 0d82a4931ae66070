"""Dynamic credentials that never reached a Secret are revoked when the controller lets go.

A lease is recorded only in the annotation of the Secret that contains its credentials. A lease
issued for a Secret that was never written therefore cannot be adopted by the next leader, so it
is revoked when this replica stops or pauses. The generator's login token is revoked with it when
no kept lease depends on that token.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.controller import test_controller_leases
from tests.controller.conftest import Cluster, eventually
from tests.controller.test_controller_leases import (
    CREDS,
    apply_generator,
    generated,
    leases_of,
    reconciles,
    setup_vault,
    start,
)

# The cluster with the AppRole secret ID that the lease tests use.
orders = test_controller_leases.orders

# A retry this far away never comes within a test.
FAR_BACKOFF_SECONDS = 600.0


@pytest.fixture
def far_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "agent.controller.reconcile.backoff_delay", lambda failures: FAR_BACKOFF_SECONDS
    )


def failed(cluster: Cluster, name: str) -> bool:
    return (cluster.ready(name) or {}).get("status") == "False"


async def test_stop_revokes_unwritten_lease(orders: Cluster, vault: Any, far_backoff) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    tokens_before = vault.live_tokens()
    controller = await start(orders, vault)
    orders.emulator.fail_writes(
        "POST", plural="secrets", times=1000
    )  # the Secret cannot be created
    await orders.apply_external_secret("orders-db", generated())
    await eventually(lambda: failed(orders, "orders-db"))
    assert len(vault.live_leases()) == 1
    assert vault.live_tokens() == tokens_before + 1  # the generator's login

    await orders.stop_controller(controller)
    assert vault.live_leases() == []
    assert vault.live_tokens() == tokens_before
    # One request for the token, which takes its leases along, rather than one per lease.
    assert vault.count(path_prefix="sys/leases/revoke") == 0


async def test_stop_keeps_written_lease_and_its_token(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    tokens_before = vault.live_tokens()
    controller = await start(orders, vault)
    await orders.apply_external_secret("orders-db", generated())
    await eventually(lambda: leases_of(orders, "orders-db", "orders-db"))

    await orders.stop_controller(controller)
    assert len(vault.live_leases()) == 1
    assert vault.live_tokens() == tokens_before + 1  # the lease dies with it


async def test_paused_replica_revokes_unwritten_lease(
    orders: Cluster, vault: Any, far_backoff
) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "secrets-agent"},
    }
    await orders.call("POST", "/apis/kopf.dev/v1/clusterkopfpeerings", peering)
    election = {"standalone": False, "peering_lifetime": 3}
    await start(orders, vault, priority=100, **election)
    orders.emulator.fail_writes("POST", plural="secrets", times=1000)
    await orders.apply_external_secret("orders-db", generated())
    await eventually(lambda: failed(orders, "orders-db"))
    [unwritten] = vault.live_leases()

    orders.emulator.fail_writes("POST", plural="secrets", times=0)
    second = await start(orders, vault, priority=200, **election)
    await eventually(lambda: reconciles(second) >= 1, timeout=15)
    [record] = await eventually(lambda: leases_of(orders, "orders-db", "orders-db"))
    # The paused replica revoked what it could not hand over; the leader holds one lease.
    await eventually(lambda: vault.live_leases() == [record["lease_id"]])
    assert record["lease_id"] != unwritten
    assert vault.count(method="GET", path_prefix=CREDS) == 2


async def test_stop_during_write_keeps_lease(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    controller = await start(orders, vault)
    # The Secret is stored at once, but the controller hears of it only 3 s later.
    orders.emulator.delay_responses("POST", plural="secrets", seconds=3)
    await orders.apply_external_secret("orders-db", generated())
    [record] = await eventually(lambda: leases_of(orders, "orders-db", "orders-db"))

    await orders.stop_controller(controller)
    # The write may have landed, so the lease is kept for the next controller to adopt.
    assert vault.live_leases() == [record["lease_id"]]
    orders.emulator.delay_responses("POST", plural="secrets", seconds=0)
    second = await start(orders, vault)
    await eventually(lambda: reconciles(second) >= 1, timeout=15)
    assert vault.count(method="GET", path_prefix=CREDS) == 1
    assert vault.live_leases() == [record["lease_id"]]
