"""The store's housekeeping: retention and closing abandoned background responses and runs.

Every ingress replica runs it; the deletes and updates are idempotent, so replicas sharing one
database only repeat each other's work.
"""

from __future__ import annotations

import asyncio
import logging
import time

from serve_app.state.assistants.runs import STALE_RUN_ERROR
from serve_app.state.assistants.store import AssistantsStore
from serve_app.state.config import StateSettings
from serve_app.state.responses.background import STALE_ERROR
from serve_app.state.store import StateStore

logger = logging.getLogger(__name__)


def sweep_interval_s(settings: StateSettings) -> float:
    """How often to sweep: often enough to close stale work soon, at most hourly."""
    return max(1.0, min(3600.0, settings.stale_after_s / 2))


async def sweep_once(
    store: StateStore, settings: StateSettings, now: float | None = None, assistants: AssistantsStore | None = None
) -> tuple[int, int]:
    """One sweep: (objects deleted by retention, background responses and runs closed as stale
    or expired)."""
    now = time.time() if now is None else now
    purged = 0
    if settings.retention_days is not None:
        cutoff = now - settings.retention_days * 86400
        purged = await store.purge_older_than(cutoff)
        if assistants is not None:
            purged += await assistants.purge_older_than(cutoff)
    closed = await store.close_stale(now - settings.stale_after_s, STALE_ERROR)
    if assistants is not None:
        closed += await assistants.close_stale_runs(now - settings.stale_after_s, now, STALE_RUN_ERROR)
    return purged, closed


async def sweep_forever(store: StateStore, settings: StateSettings, assistants: AssistantsStore | None = None) -> None:
    """Sweep every :func:`sweep_interval_s` until cancelled; a failed sweep is logged and retried."""
    while True:
        try:
            purged, closed = await sweep_once(store, settings, assistants=assistants)
            if purged or closed:
                logger.info("state store: %d old objects deleted, %d stale responses and runs closed", purged, closed)
        except Exception:  # noqa: BLE001 - the database may be briefly away; try again later
            logger.exception("state store sweep failed")
        await asyncio.sleep(sweep_interval_s(settings))
