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
            raise overloaded(f"{self.limit} requests in progress and {self.waiting} waiting")
        self.waiting += 1
        try:
            async with asyncio.timeout(self.max_wait):
                await self._slots.acquire()
        except TimeoutError:
            raise overloaded(f"no database connection free within {self.max_wait:g}s") from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


def overloaded(reason: str) -> Rejected:
    """The 503 + Retry-After answer of a request shed under load (counted)."""
    SHED.inc()
    return Rejected(503, f"overloaded ({reason}), retry later", headers=RETRY_AFTER)
