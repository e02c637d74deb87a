"""Per-tenant shares of the workers (`service.fairness.FairShare`): two batches per worker for a lone tenant, an
equal part of that for several, rounded down so the queue never holds much more than one batch per worker ahead of
a light tenant's, and never fewer in flight than workers."""

from __future__ import annotations

import asyncio

import pytest

from nograd.service.fairness import FairShare


@pytest.mark.parametrize(
    "workers, tenants, share",
    [(1, 1, 2), (2, 1, 4), (1, 2, 1), (2, 3, 1), (4, 3, 2), (3, 7, 1), (8, 3, 5), (0, 0, 2)],
)
def test_the_share_rounds_down_and_keeps_every_worker_busy(workers, tenants, share):
    fair = FairShare()
    for i in range(tenants):
        fair.join(f"t{i}")
        fair.join(f"t{i}")  # a tenant's number of jobs does not matter
    assert fair.share(workers) == share
    if tenants:
        assert tenants * share >= max(1, workers)  # enough in flight for every worker
        assert tenants * share <= max(2 * max(1, workers), tenants)  # and no more than two per worker


def test_a_tenant_over_its_share_waits_for_its_own_batches_only():
    async def scenario():
        fair = FairShare()
        for tenant in ("heavy", "light"):
            fair.join(tenant)
        held = []
        async with fair.slot("heavy", workers=1):  # share: floor(2 x 1 / 2) = 1
            waiting = asyncio.create_task(_enter(fair, "heavy", held))
            await asyncio.sleep(0.05)
            assert held == []  # heavy's second batch waits
            async with fair.slot("light", workers=1):  # light is not held up by heavy
                held.append("light")
        await asyncio.wait_for(waiting, 1)
        assert held == ["light", "heavy"]

    asyncio.run(scenario())


async def _enter(fair: FairShare, tenant: str, held: list) -> None:
    async with fair.slot(tenant, workers=1):
        held.append(tenant)
