"""Load shedding: a bounded number of write requests hold database connections at a time, a
bounded number wait for one, and only briefly; the rest are told to come back (503 +
Retry-After) instead of queueing without bound on the connection pool (whose own wait is 30 s
and ends in an error)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from prometheus_client import Counter

from intake.errors import Rejected
from intake.settings import Settings
from opsledger.service import Runtime

RETRY_AFTER = {"Retry-After": "1"}
SHED = Counter("opsledger_intake_shed_total", "Write requests answered 503 because intake was overloaded")


class Admission:
    def __init__(self, limit: int, max_waiting: int, max_wait: float) -> None:
        self.limit, self.max_waiting, self.max_wait = limit, max_waiting, max_wait
        self._slots = asyncio.Semaphore(limit)
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the slots for the block, or raise a 503 `Rejected`."""
        if self._slots.locked() and self.waiting >= self.max_waiting:
            raise _overloaded(f"{self.limit} requests in progress and {self.waiting} waiting")
        self.waiting += 1
        try:
            async with asyncio.timeout(self.max_wait):
                await self._slots.acquire()
        except TimeoutError:
            raise _overloaded(f"no database connection free within {self.max_wait:g}s") from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


def _overloaded(reason: str) -> Rejected:
    SHED.inc()
    return Rejected(503, f"overloaded ({reason}), retry later", headers=RETRY_AFTER)


def admission(runtime: Runtime) -> Admission:
    """The process's admission gate (created on first use, from the settings)."""
    gate = runtime.extras.get("admission")
    if gate is None:
        settings = runtime.settings
        assert isinstance(settings, Settings)
        # Leave connections for the outbox relay, the consumer and /readyz (pool + overflow).
        default = max(1, 2 * settings.db_pool_size - 4)
        gate = runtime.extras["admission"] = Admission(
            settings.max_in_flight or default, settings.max_waiting, settings.max_wait_seconds
        )
    assert isinstance(gate, Admission)
    return gate
