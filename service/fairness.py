"""Fair shares of the workers across tenants: a tenant's jobs together have at most `share` evaluations in flight,
so one tenant's many running jobs cannot fill the batch queue ahead of another tenant's one job.

    share = max(1, floor(2 * workers / active tenants))

Two batches per worker keep every worker busy when one tenant is alone (one scored while the next waits); with
several tenants each gets an equal part of that, whatever its number of jobs. Rounding down keeps the total in
flight at most 2 x workers while tenants are at most 2 x workers (and every worker still busy: the total is at
least the number of workers), so a light tenant's batch waits behind at most about one batch per worker; rounding
up let three tenants on two workers queue six batches, one and a half times as many. The gate lives in one runner
(several runners share the workers by their own gates: each is fair among the jobs it runs).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import asynccontextmanager


class FairShare:
    def __init__(self):
        self._jobs: Counter[str] = Counter()  # running jobs per tenant
        self._in_flight: Counter[str] = Counter()
        self._changed = asyncio.Condition()

    def share(self, workers: int) -> int:
        """Evaluations in flight one tenant may have now, with `workers` serving the model."""
        return max(1, (2 * max(1, workers)) // max(1, len(+self._jobs)))

    def join(self, tenant: str) -> None:
        self._jobs[tenant] += 1

    async def leave(self, tenant: str) -> None:
        self._jobs[tenant] -= 1
        async with self._changed:
            self._changed.notify_all()

    @asynccontextmanager
    async def slot(self, tenant: str, workers: int):
        """Wait until `tenant` is under its share, hold one evaluation in flight for the body."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_flight[tenant] < self.share(workers))
            self._in_flight[tenant] += 1
        try:
            yield
        finally:
            async with self._changed:
                self._in_flight[tenant] -= 1
                self._changed.notify_all()
