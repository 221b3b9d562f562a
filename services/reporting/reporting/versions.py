"""Projection versions: the live consumer feeds the active version; a rebuild replays the log from
offset 0 under a fresh consumer group into a new version and, once it has caught up with the live
one, switches `projection_state.active_version` to it in one transaction. Queries read whichever
version is active, so they keep answering throughout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from opsledger.bus.consumer import ConsumerSpec, EventConsumer
from opsledger.db import inbox_table
from opsledger.events import Stream
from opsledger.service import supervise
from opsledger.settings import ServiceSettings
from reporting.projector import Projector
from reporting.runtime import ReportingRuntime
from reporting.store import PROJECTION_TABLES, positions, projection_state

log = logging.getLogger(__name__)


class RebuildAlreadyRunning(Exception):
    pass


def consumer_name(version: int) -> str:
    return f"projection-v{version}"


def projection_spec(
    settings: ServiceSettings, sessionmaker: async_sessionmaker[AsyncSession], version: int
) -> ConsumerSpec:
    """The one consumer that feeds projection `version`: every event of the incident and config
    streams, unknown and undecodable ones included, resuming after the positions stored with the
    rows."""

    async def stored() -> dict[tuple[str, int], int]:
        return await stored_positions(sessionmaker, version)

    name = consumer_name(version)
    projector = Projector(version)
    return ConsumerSpec(
        name=name,
        topics=[settings.topic(Stream.INCIDENTS), settings.topic(Stream.CONFIG)],
        batch_handler=projector,
        accept_unknown=True,
        accept_invalid=True,  # the audit trail holds every event on the log, readable or not
        group_id=f"{settings.group_id}.{name}",
        stored_positions=stored,
        save_positions=projector.save_positions,
    )


async def stored_positions(sessionmaker: async_sessionmaker[AsyncSession], version: int) -> dict[tuple[str, int], int]:
    async with sessionmaker() as session:
        rows = await session.execute(
            sa.select(positions.c.topic, positions.c.partition, positions.c.offset).where(
                positions.c.version == version
            )
        )
        return {(r.topic, r.partition): r.offset for r in rows}


async def active_version(session: AsyncSession) -> int:
    value = await session.scalar(sa.select(projection_state.c.active_version).where(projection_state.c.id == 1))
    assert value is not None, "projection_state has no row: migrations not run?"
    return int(value)


def caught_up(candidate: dict[tuple[str, int], int], live: dict[tuple[str, int], int]) -> bool:
    """The candidate has applied at least everything the live version has."""
    return all(candidate.get(key, -1) >= offset for key, offset in live.items())


@dataclass
class _Running:
    worker: EventConsumer
    stop: asyncio.Event
    task: asyncio.Task[None]


class ProjectionManager:
    """Runs the consumer of the active version and, during a rebuild, the new version's too."""

    def __init__(self, runtime: ReportingRuntime, switch_poll_seconds: float = 0.2) -> None:
        self.runtime = runtime
        self.switch_poll_seconds = switch_poll_seconds
        self.running: dict[int, _Running] = {}
        self.watcher: asyncio.Task[None] | None = None

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return self.runtime.sessionmaker

    async def start(self) -> None:
        async with self.sessionmaker() as session:
            state = (await session.execute(sa.select(projection_state))).one()
        await self._run_version(state.active_version)
        if state.rebuild_status == "running" and state.rebuild_version is not None:
            await self._run_version(state.rebuild_version)
            self.watcher = asyncio.create_task(self._watch(state.rebuild_version), name="rebuild-watch")

    async def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(BaseException):
                await self.watcher
        for version in list(self.running):
            await self._stop_version(version)

    async def _run_version(self, version: int) -> None:
        if version in self.running:
            return
        assert self.runtime.producer is not None
        spec = projection_spec(self.runtime.settings, self.sessionmaker, version)
        worker = EventConsumer(spec, self.runtime.settings, self.sessionmaker, self.runtime.producer)
        await worker.start()
        stop = asyncio.Event()
        task = asyncio.create_task(supervise(worker, stop), name=f"consumer-{spec.name}")
        self.running[version] = _Running(worker, stop, task)

    async def _stop_version(self, version: int) -> None:
        running = self.running.pop(version, None)
        if running is None:
            return
        running.stop.set()  # the loop finishes the batch in hand and commits it first
        try:
            await asyncio.wait_for(running.task, 15)
        except (TimeoutError, asyncio.CancelledError):
            running.task.cancel()
        with contextlib.suppress(Exception):
            await running.worker.stop()

    async def request_rebuild(self) -> dict[str, Any]:
        """Start replaying the log into a new version; 409-worthy if one is already running."""
        now = self.runtime.clock.now()
        async with self.sessionmaker() as session, session.begin():
            state = (await session.execute(sa.select(projection_state).with_for_update())).one()
            if state.rebuild_status == "running":
                raise RebuildAlreadyRunning(f"rebuild into version {state.rebuild_version} is still running")
            used = [state.active_version, state.rebuild_version or 0]
            for table in PROJECTION_TABLES:
                used.append(await session.scalar(sa.select(sa.func.coalesce(sa.func.max(table.c.version), 0))) or 0)
            version = max(used) + 1
            await session.execute(
                projection_state.update().values(
                    rebuild_version=version,
                    rebuild_status="running",
                    rebuild_started_at=now,
                    rebuild_finished_at=None,
                    rebuild_detail=None,
                )
            )
        await self._run_version(version)
        self.watcher = asyncio.create_task(self._watch(version), name="rebuild-watch")
        return await self.status()

    async def status(self) -> dict[str, Any]:
        async with self.sessionmaker() as session:
            state = (await session.execute(sa.select(projection_state))).one()
            progress: dict[str, Any] = {}
            if state.rebuild_version is not None:
                live = await _positions_of(session, state.active_version)
                candidate = await _positions_of(session, state.rebuild_version)
                progress = {
                    "applied": sum(o + 1 for o in candidate.values()),
                    "live_applied": sum(o + 1 for o in live.values()),
                }
        return {
            "active_version": state.active_version,
            "rebuild": None
            if state.rebuild_version is None
            else {
                "version": state.rebuild_version,
                "status": state.rebuild_status,
                "started_at": _iso(state.rebuild_started_at),
                "finished_at": _iso(state.rebuild_finished_at),
                "detail": state.rebuild_detail,
                **progress,
            },
        }

    async def _watch(self, version: int) -> None:
        """Switch to `version` once it has caught up with the live one."""
        while True:
            try:
                previous = await self.try_switch(version)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rebuild into version %d: switch check failed; retrying", version)
                previous = None
            if previous is not None:
                await self._stop_version(previous)
                await self._drop_versions_before(previous)
                return
            await asyncio.sleep(self.switch_poll_seconds)

    async def try_switch(self, version: int) -> int | None:
        """In one transaction: if `version` has caught up, make it active. Returns the version it
        replaced, or None when it is not caught up yet."""
        async with self.sessionmaker() as session, session.begin():
            state = (await session.execute(sa.select(projection_state).with_for_update())).one()
            if state.rebuild_version != version or state.rebuild_status != "running":
                return None
            live = await _positions_of(session, state.active_version)
            candidate = await _positions_of(session, version)
            if not caught_up(candidate, live):
                return None
            await session.execute(
                projection_state.update().values(
                    active_version=version,
                    rebuild_status="switched",
                    rebuild_finished_at=self.runtime.clock.now(),
                    rebuild_detail=f"replaced version {state.active_version}",
                )
            )
            log.info("projection version %d is active (was %d)", version, state.active_version)
            return int(state.active_version)

    async def _drop_versions_before(self, keep: int) -> None:
        """Older versions than the one just replaced are no longer needed (the replaced one is
        kept, to compare with or to switch back to)."""
        async with self.sessionmaker() as session, session.begin():
            for table in PROJECTION_TABLES:
                await session.execute(table.delete().where(table.c.version < keep))
            old = [consumer_name(v) for v in range(1, keep)]
            await session.execute(inbox_table.delete().where(inbox_table.c.consumer.in_(old)))


async def _positions_of(session: AsyncSession, version: int) -> dict[tuple[str, int], int]:
    rows = await session.execute(
        sa.select(positions.c.topic, positions.c.partition, positions.c.offset).where(positions.c.version == version)
    )
    return {(r.topic, r.partition): r.offset for r in rows}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
