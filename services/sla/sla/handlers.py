"""The sla stage: its decider run over consumed batches and fired timers (see opsledger.stage),
under the policy in force (compiled once per version), and policy changes. Every write goes through
a unit of work, which stages the events in the outbox of the same transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.bus.consumer import ConsumerSpec, Delivery
from opsledger.bus.outbox import Outbox
from opsledger.clock import Clock
from opsledger.events import Envelope, Stream, new_event
from opsledger.events.sla import SlaPolicyChanged, SlaPolicyRule
from opsledger.stage import Stage
from opsledger.timers import TimerHandler
from opsledger.uow import UnitOfWork, joined
from sla import domain, policy, store
from sla.settings import Settings

PRODUCER = "sla"
SYSTEM_ACTOR = "system:sla"
POLICY_SUBJECT = "sla.policy"
# The seeded defaults get a fixed id: a second replica seeding at the same time stages the same event.
_DEFAULTS_EVENT_ID = uuid.UUID("5f1d7c2a-9b3e-4e61-8a0d-2c7b4e9f1a36")
# Fields of IncidentLogged a replay never reads (and that can be large): not kept for what-if.
_UNREAD = {"IncidentLogged": ("raw", "annotations", "description", "links")}


class VersionConflict(Exception):
    """A policy change made from a version that is no longer in force."""


class PolicyCache:
    """The compiled policy in force, rebuilt only when its version moved."""

    def __init__(self) -> None:
        self._cached: policy.Policy | None = None
        self.builds = 0

    async def current(self, session: AsyncSession) -> policy.Policy:
        version = await store.policy_version(session)
        if version is None:
            return policy.DEFAULT_POLICY  # before seeding: the defaults, which become version 1
        if self._cached is not None and self._cached.version == version:
            return self._cached
        row = await store.policy_row(session, version)
        assert row is not None
        compiled = policy.build_policy(row.version, row.body["rules"])
        self.builds += 1
        self._cached = compiled
        return compiled


class Sla:
    """The SLA stage's write side; one per service instance."""

    def __init__(self, settings: Settings, outbox: Outbox, clock: Clock) -> None:
        self.settings = settings
        self.outbox = outbox
        self.clock = clock
        self.policies = PolicyCache()
        self.stage: Stage[domain.Incident, policy.Policy] = Stage(
            PRODUCER, domain.decider, load=store.load, save=store.save, context=self._policy, system_actor=SYSTEM_ACTOR
        )

    async def _policy(self, uow: UnitOfWork) -> policy.Policy:
        return await self.policies.current(uow.session)

    def consumer(self) -> ConsumerSpec:
        """The incidents stream, exactly the types the decider reacts to; each batch is also kept
        as the incidents' history (what-if replays it)."""

        async def batch(session: AsyncSession, deliveries: list[Delivery]) -> None:
            async with joined(session, self.outbox, self.clock.now()) as uow:
                await self.handle(uow, deliveries)

        return ConsumerSpec(
            name="incidents",
            topics=[self.settings.topic(Stream.INCIDENTS)],
            batch_handler=batch,
            event_types=set(domain.decider.event_types),
        )

    async def handle(self, uow: UnitOfWork, deliveries: Sequence[Delivery]) -> None:
        await store.record_inputs(uow.session, [r for d in deliveries if (r := _input_row(d.envelope)) is not None])
        await self.stage.handle(uow, deliveries)

    def timer_handlers(self) -> dict[str, TimerHandler]:
        return self.stage.timer_handlers(self.outbox, self.clock)

    # ----------------------------------------------------------------- policy

    async def seed_defaults(self, uow: UnitOfWork) -> list[Envelope]:
        """Put the defaults in force as version 1 when no policy exists yet."""
        await store.lock_policies(uow.session)
        if await store.policy_version(uow.session) is not None:
            return []
        body, comment = policy.default_body(), "defaults"
        if not await store.save_policy(uow.session, 1, body, SYSTEM_ACTOR, comment, uow.now):
            return []
        event = policy_event(1, body, actor=SYSTEM_ACTOR, comment=comment, uow=uow, event_id=_DEFAULTS_EVENT_ID)
        uow.emit(event)
        return [event]

    async def change_policy(
        self,
        uow: UnitOfWork,
        rules: Sequence[dict[str, Any] | SlaPolicyRule],
        actor: str,
        comment: str | None,
        expected_version: int | None,
    ) -> tuple[int, dict[str, Any]]:
        """Validate and put a new version in force; raises policy.PolicyError, or VersionConflict
        when `expected_version` is no longer in force (nothing written either way)."""
        await store.lock_policies(uow.session)
        current = await store.policy_row(uow.session)
        in_force = current.version if current is not None else 0
        if expected_version is not None and expected_version != in_force:
            by = current.actor if current is not None else "nobody"
            raise VersionConflict(
                f"field 'expected_version': version {in_force} is in force, not {expected_version}; "
                f"it was changed by {by} meanwhile. Reload and reapply"
            )
        version = in_force + 1
        parsed = policy.parse_rules(rules)
        policy.build_policy(version, parsed)  # refuses what cannot be put in force, naming the field
        body = {"rules": [r.model_dump(mode="json") for r in parsed]}
        await store.save_policy(uow.session, version, body, actor, comment, uow.now)
        uow.emit(policy_event(version, body, actor=actor, comment=comment, uow=uow))
        return version, body


def policy_event(
    version: int,
    body: dict[str, Any],
    *,
    actor: str,
    comment: str | None,
    uow: UnitOfWork,
    event_id: uuid.UUID | None = None,
) -> Envelope:
    payload = SlaPolicyChanged(version=version, rules=body["rules"], comment=comment)
    return new_event(
        payload, producer=PRODUCER, actor=actor, subject=POLICY_SUBJECT, event_id=event_id, occurred_at=uow.now
    )


def _input_row(envelope: Envelope) -> dict[str, Any] | None:
    if envelope.incident_id is None:
        return None
    kept = envelope.model_dump(mode="json")
    for name in _UNREAD.get(envelope.event_type, ()):
        kept["payload"].pop(name, None)
    return {
        "incident_id": envelope.incident_id,
        "event_id": envelope.event_id,
        "occurred_at": envelope.occurred_at,
        "envelope": kept,
    }
