"""The resolution stage's write side: the pure decisions of decider.py run over whole consumer
batches, fired auto-close timers and commands (one load and one save per unit of work), through the
shared `Stage`."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.bus.consumer import ConsumerSpec, Delivery
from opsledger.bus.outbox import Outbox
from opsledger.clock import Clock
from opsledger.events import Envelope, Stream
from opsledger.stage import Command, Stage
from opsledger.timers import TimerHandler
from opsledger.uow import UnitOfWork, joined
from resolution import decider, domain, notify, store
from resolution.domain import Context, Incident
from resolution.settings import Settings
from resolution.webhooks import Webhooks


class Resolution:
    """The stage, its policy and its commands; one per service instance."""

    def __init__(self, settings: Settings, outbox: Outbox, clock: Clock) -> None:
        self.settings, self.outbox, self.clock = settings, outbox, clock
        self.policy = settings.policy()
        self.webhooks = Webhooks(settings, clock)
        # Events carry the correlation id of the alert or report that opened the incident.
        self.stage: Stage[Incident, Context] = Stage(
            domain.PRODUCER,
            decider.decider,
            load=store.load,
            save=store.save,
            context=self.context,
            system_actor=domain.SYSTEM_ACTOR,
            correlation=lambda state: state.correlation_id,
        )

    async def context(self, uow: UnitOfWork) -> Context:
        return Context(self.policy, uow.now)

    def consumer(self) -> ConsumerSpec:
        """The incidents stream: the types the decider reacts to, and those subscriptions may ask
        for (this service's own among them). One transaction a batch: the stage decides, then the
        deliveries are staged against the states it left."""

        async def batch(session: AsyncSession, deliveries: list[Delivery]) -> None:
            async with joined(session, self.outbox, self.clock.now()) as uow:
                states = await self.stage.handle(uow, deliveries)
                await self.webhooks.stage(uow, deliveries, states)

        types = set(self.stage.decider.event_types | notify.NOTIFY_TYPES)
        topics = [self.settings.topic(Stream.INCIDENTS)]
        return ConsumerSpec(name="incidents", topics=topics, batch_handler=batch, event_types=types)

    def timer_handlers(self) -> dict[str, TimerHandler]:
        return {**self.stage.timer_handlers(self.outbox, self.clock), notify.WEBHOOK: self.webhooks.fire}

    async def execute(
        self, uow: UnitOfWork, incident_id: uuid.UUID, command: Command[Incident, Context], actor: str
    ) -> tuple[Incident, list[Envelope]]:
        """Run a command (refusals raise, writing nothing); its events join the incident's timeline."""
        state, envelopes = await self.stage.execute(uow, incident_id, command, actor=actor)
        assert state is not None  # commands raise NotFound for an unknown incident
        if envelopes:
            state = decider.recorded(state, envelopes)
            await store.save(uow, {incident_id: state}, {})
        return state, envelopes
