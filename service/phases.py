"""A running job's phase in the store (`jobs.phase`), written as it changes so `GET /v1/jobs/{id}`, the event stream
and the dashboard can say what the job is doing (loading, initial scoring, search, dev, final train and test scoring,
saving) and how far along it is.

Writes go through one task per job and coalesce: `__call__` only records the newest phase, and the task writes the
newest one whenever the previous write is done, so a run reporting faster than the store writes never waits and
never queues writes. The search phase is written when it starts only: its count is the job's calls, which every
generation's checkpoint writes anyway.
"""

from __future__ import annotations

import asyncio
import logging

from nograd.progress import Phase

from .store import Store

log = logging.getLogger("nograd.jobs")


class PhaseWriter:
    """The phase sink of one job run by `owner` (an `OnPhase`). Create and close it on the event loop."""

    def __init__(self, store: Store, job_id: str, owner: str):
        self.store, self.job_id, self.owner = store, job_id, owner
        self._latest: Phase | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._write_changes(), name=f"phase-{job_id}")

    def __call__(self, phase: Phase) -> None:
        if phase.name == "search" and self._latest is not None and self._latest.name == "search":
            return
        self._latest = phase
        self._changed.set()

    async def _write_changes(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            phase = self._latest
            try:
                await asyncio.to_thread(self.store.set_phase, self.job_id, self.owner, phase.to_dict())
            except Exception:  # a phase is a hint: a store hiccup must not fail the job (its progress write will)
                log.warning("job %s: could not record phase %s", self.job_id, phase.name, exc_info=True)

    async def aclose(self) -> None:
        """Stop writing (what is not written yet is dropped: the job is ending and its status says so)."""
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
