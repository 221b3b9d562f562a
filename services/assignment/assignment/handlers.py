"""The assignment stage's write side: the pure decisions of domain.py run over consumer batches,
fired acknowledgement timers and people's commands (one load and one save per unit of work), and
configuration changes, each a new version announced on the config stream through the outbox."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from assignment import config, demo, domain, store, tasks
from assignment.config import Config
from assignment.domain import Context, Incident
from assignment.settings import Settings
from opsledger.bus.consumer import ConsumerSpec
from opsledger.bus.outbox import Outbox
from opsledger.clock import Clock
from opsledger.events import Envelope, EventPayload, Stream, new_event
from opsledger.stage import Command, Stage
from opsledger.timers import TimerHandler
from opsledger.uow import UnitOfWork

PRODUCER = "assignment"
SYSTEM_ACTOR = "system:assignment"
Versions = tuple[tuple[tuple[str, str], int], ...]


assert tasks.TASK_TIMER in domain.decider.timer_kinds  # the task reactions are registered


class VersionConflict(Exception):
    """A configuration change was made from a version that is no longer in force."""


class ConfigCache:
    """The configuration in force, rebuilt only when a version moved (stored versions never change)."""

    def __init__(self) -> None:
        self._cached: tuple[Versions, Config] | None = None

    async def current(self, uow: UnitOfWork) -> Config:
        """The configuration in force (read before this unit writes any: only committed versions
        are cached)."""
        versions = await store.versions_in_force(uow.session)
        key = tuple(sorted(versions.items()))
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        built = await build(uow, versions)
        self._cached = (key, built)
        return built


async def build(uow: UnitOfWork, versions: Mapping[tuple[str, str], int] | None = None) -> Config:
    """The configuration of these versions (default: those in force, uncommitted ones included)."""
    if versions is None:
        versions = await store.versions_in_force(uow.session)
    rows = await store.configs_at(uow.session, versions)
    return config.config_from(
        {(r.kind, r.object_id): config.event_of(r.kind, r.object_id, r.version, r.body, r.comment) for r in rows}
    )


def config_subject(kind: str, object_id: str) -> str:
    return f"assignment.{kind}.{object_id}" if kind != "routing" else "assignment.routing"


class Assignment:
    """Assignment's write side; one per service instance."""

    def __init__(self, settings: Settings, outbox: Outbox, clock: Clock) -> None:
        self.settings = settings
        self.outbox = outbox
        self.clock = clock
        self.configs = ConfigCache()
        self.stage: Stage[Incident, Context] = Stage(
            PRODUCER,
            domain.decider,
            load=self._load,
            save=self._save,
            context=self.context,
            system_actor=SYSTEM_ACTOR,
            correlation=lambda state: state.correlation_id,
        )

    def consumer(self) -> ConsumerSpec:
        """The incidents stream, subscribed to exactly the event types the decider reacts to."""
        return self.stage.consumer("incidents", [self.settings.topic(Stream.INCIDENTS)], self.outbox, self.clock)

    def timer_handlers(self) -> dict[str, TimerHandler]:
        return self.stage.timer_handlers(self.outbox, self.clock)

    async def _load(self, uow: UnitOfWork, ids: Any) -> dict[uuid.UUID, Incident]:
        return await store.load(uow.session, ids)

    async def _save(
        self, uow: UnitOfWork, changed: dict[uuid.UUID, Incident], loaded: Mapping[uuid.UUID, Incident]
    ) -> None:
        await store.save(uow.session, changed, loaded)

    async def context(self, uow: UnitOfWork) -> Context:
        return Context(await self.configs.current(uow), await store.load_of_people(uow.session), uow.now)

    # ----------------------------------------------------------------- commands

    async def execute(
        self, uow: UnitOfWork, incident_id: uuid.UUID, command: Command[Incident, Context], actor: str
    ) -> tuple[Incident | None, list[Envelope]]:
        """Run a command; raises domain.NotFound / Conflict / Forbidden (nothing written then)."""
        return await self.stage.execute(uow, incident_id, command, actor=actor)

    # ----------------------------------------------------------------- configuration

    async def change_config(
        self,
        uow: UnitOfWork,
        kind: str,
        object_id: str,
        body: Mapping[str, Any],
        actor: str,
        comment: str | None,
        expected_version: int | None = None,
    ) -> tuple[int, EventPayload]:
        """Validate and put a new version of an object in force; raises config.ConfigError, or
        VersionConflict when `expected_version` is not the version in force (nothing written)."""
        await store.lock_config(uow.session)
        rows = await store.current(uow.session, kind, object_id)
        in_force = rows[0].version if rows else 0
        if expected_version is not None and expected_version != in_force:
            who = rows[0].actor if rows else "nobody"
            raise VersionConflict(
                f"field 'expected_version': {kind} {object_id} is at version {in_force}, not {expected_version}; "
                f"last changed by {who}. Reload and reapply"
            )
        version = in_force + 1
        obj = config.event_of(kind, object_id, version, body, comment)
        # Not from the cache: a seed writes several objects in one transaction, each checked against the
        # ones before it, which are not committed yet.
        config.check(kind, obj, await build(uow))
        await store.save_config(uow.session, kind, object_id, version, dict(body), actor, comment, uow.now)
        uow.emit(
            new_event(obj, producer=PRODUCER, actor=actor, subject=config_subject(kind, object_id), occurred_at=uow.now)
        )
        return version, obj

    async def seed_demo(self, uow: UnitOfWork) -> bool:
        """Put the demo team, schedule, policy and route in force, once ever (False: done before)."""
        await store.lock_config(uow.session)
        if not await store.claim_seed(uow.session, "demo", uow.now):
            return False
        for kind, object_id, body in demo.objects(uow.now):
            await self.change_config(uow, kind, object_id, body, SYSTEM_ACTOR, "demo configuration")
        return True
