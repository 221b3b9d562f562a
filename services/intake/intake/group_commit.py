"""Group commit: alert requests that arrive together share one transaction, hence one fsync and a
handful of statements, instead of paying for their own. A request is answered only once the
transaction holding its rows has committed, so a 2xx still means durable.

Requests wait in a queue of at most `max_waiting`. A few flushers each take what is waiting (up to `batch_size`,
lingering `linger_seconds` for more when they find little) and apply it in one transaction. If that
transaction fails, its requests are retried one by one, so one request's failure (an event too
large for the log) never fails its neighbours. Overload is shed by queue wait: a request still
queued after `max_wait` seconds, or one that finds the queue full, gets 503 + Retry-After and
nothing of it is written, while the flushers keep committing at full rate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from intake.admission import overloaded
from intake.ingest import AlertRequest, Result, apply_alerts
from intake.settings import Settings
from opsledger.bus.outbox import Outbox
from opsledger.clock import Clock
from opsledger.db import pooled_driver

if TYPE_CHECKING:
    from intake.domain import FlapPolicy

log = logging.getLogger(__name__)
BATCH_SIZE = Histogram(
    "opsledger_intake_group_commit_requests",
    "Alert requests committed together in one transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


@dataclass(eq=False)
class _Waiting:
    request: AlertRequest
    answer: asyncio.Future[list[Result]]
    queued_at: float = field(default_factory=time.monotonic)
    taken: bool = False  # a flusher has it: its transaction decides, not the queue wait
    abandoned: bool = False  # its caller was answered 503: never apply it
    deadline: asyncio.TimerHandle | None = None


class GroupCommit:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        outbox: Outbox,
        clock: Clock,
        policy: FlapPolicy,
    ) -> None:
        self.engine, self.outbox, self.clock, self.policy = engine, outbox, clock, policy
        self.batch_size = settings.group_commit_batch_size
        self.linger_seconds = settings.group_commit_linger_ms / 1000
        self.flushers = settings.group_commit_flushers
        self.max_wait = settings.max_wait_seconds
        self.max_waiting = settings.max_waiting
        self.waiting = 0  # requests submitted and neither taken by a flusher nor shed
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._open = asyncio.Event()
        self._open.set()

    async def submit(self, request: AlertRequest) -> list[Result]:
        """The request's results once committed; 503 `Rejected` when intake is overloaded."""
        self._start()
        if self.waiting >= self.max_waiting:
            raise overloaded(f"{self.waiting} requests waiting")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(request, loop.create_future())
        self.waiting += 1
        self._queue.put_nowait(waiting)
        # A timer, not wait_for: it costs no task per request on the hot path.
        waiting.deadline = loop.call_later(self.max_wait, self._shed, waiting)
        return await waiting.answer

    def _shed(self, waiting: _Waiting) -> None:
        """Still queued after max_wait: answered 503, and never applied."""
        if waiting.taken or waiting.answer.done():
            return  # being committed right now: its outcome is the answer
        waiting.abandoned = True
        self.waiting -= 1
        waiting.answer.set_exception(overloaded(f"not started within {self.max_wait:g}s"))

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Hold every flusher before it takes more work (maintenance, and tests of load shedding)."""
        self._open.clear()
        try:
            yield
        finally:
            self._open.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def _start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._flush(), name=f"group-commit-{n}") for n in range(self.flushers)]

    async def _flush(self) -> None:
        while True:
            batch = await self._take()
            try:
                await self._commit(batch)
            except Exception as exc:  # never leave a caller waiting, nor a flusher dead
                log.exception("group commit failed")
                for waiting in batch:
                    _settle(waiting, exc)

    async def _take(self) -> list[_Waiting]:
        first = await self._queue.get()
        await self._open.wait()
        batch = [first]
        deadline = time.monotonic() + self.linger_seconds
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                batch.append(await asyncio.wait_for(self._queue.get(), left))
        live = [w for w in batch if not w.abandoned]
        for w in live:
            w.taken = True
            if w.deadline is not None:
                w.deadline.cancel()
        self.waiting -= len(live)
        return live

    async def _commit(self, batch: list[_Waiting]) -> None:
        if not batch:
            return
        try:
            answers = await self._apply(batch)
        except Exception:
            # Something in the batch failed: each on its own, so only the guilty one fails.
            for waiting in batch:
                try:
                    [answer] = await self._apply([waiting])
                except Exception as exc:
                    _settle(waiting, exc)
                else:
                    BATCH_SIZE.observe(1)
                    _settle(waiting, answer)
            return
        BATCH_SIZE.observe(len(batch))
        for waiting, answer in zip(batch, answers, strict=True):
            _settle(waiting, answer)

    async def _apply(self, batch: list[_Waiting]) -> list[list[Result]]:
        now = self.clock.now()
        requests = [w.request for w in batch]
        # The driver connection of a pooled one, in a transaction of its own: no ORM session on the
        # hot path (its per-statement work cost more than the statements).
        async with pooled_driver(self.engine) as conn, conn.transaction():
            answers = await apply_alerts(conn, self.outbox, requests, now=now, policy=self.policy)
        self.outbox.wake()
        return answers


def _settle(waiting: _Waiting, outcome: list[Result] | Exception) -> None:
    if waiting.answer.done():
        return
    if isinstance(outcome, Exception):
        waiting.answer.set_exception(outcome)
    else:
        waiting.answer.set_result(outcome)
