"""The one shape of a stage service: pure decisions over the service's own state of an incident,
run over whole consumer batches, fired timers and commands by one shared loop.

- A `Decider` is a registry of pure functions, one per consumed event type (and per timer kind):
  `(state, event, payload, context) -> Decision`. A `Decision` is the new state, the events it
  announces and the timers it schedules or cancels: no I/O, so every rule is unit-testable. The
  consumer subscribes to exactly the types the registry lists.
- A `Stage` runs them: it loads the states of every incident in a batch with one query, decides in
  memory event by event (each decision sees the state the previous one left), writes the changed
  states with one statement, and stages the new events and timers in the same unit of work, which
  commits once and wakes the relay. Reactions get ids derived from their cause; timer reactions
  from the timer; commands from a person are new facts with fresh ids and the person as actor.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.bus.consumer import ConsumerSpec, Delivery
from opsledger.bus.outbox import Outbox
from opsledger.clock import Clock
from opsledger.db import combined_writes
from opsledger.events.envelope import Envelope
from opsledger.events.registry import EventPayload, new_event
from opsledger.logs import log_context
from opsledger.timers import FiredTimer, Timer, TimerHandler
from opsledger.uow import UnitOfWork, joined

S = TypeVar("S")  # the stage's own state of one incident
C = TypeVar("C")  # what a batch is decided under (configuration in force), loaded once a batch
F = TypeVar("F", bound=Callable[..., "Decision[Any]"])


@dataclass(frozen=True)
class Decision(Generic[S]):
    """What a pure decision returns: the incident's new state (None: the stage keeps none), the
    events that announce it, in order, and the timers to schedule or cancel."""

    state: S | None
    events: Sequence[EventPayload] = ()
    schedule: Sequence[Timer] = ()
    cancel: Sequence[str] = ()


# (state, event, its payload, context) -> decision; and (state, fired timer, context) -> decision.
Reaction = Callable[[S | None, Envelope, Any, C], Decision[S]]
TimerReaction = Callable[[S | None, FiredTimer, C], Decision[S]]


class Decider(Generic[S, C]):
    """Event type -> pure reaction, and timer kind -> pure reaction."""

    def __init__(self) -> None:
        self._reactions: dict[str, Reaction[S, C]] = {}
        self._timer_reactions: dict[str, TimerReaction[S, C]] = {}

    def on(self, *models: type[EventPayload]) -> Callable[[F], F]:
        """Register a reaction to these event types (their latest schema: older ones are upcast)."""

        def register(fn: F) -> F:
            for model in models:
                if model.event_type in self._reactions:
                    raise ValueError(f"{model.event_type} has a reaction already")
                self._reactions[model.event_type] = fn
            return fn

        return register

    def on_timer(self, kind: str) -> Callable[[F], F]:
        """Register the reaction to timers of `kind` (keys '<kind>:...')."""

        def register(fn: F) -> F:
            if kind in self._timer_reactions:
                raise ValueError(f"timer kind {kind!r} has a reaction already")
            self._timer_reactions[kind] = fn
            return fn

        return register

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(self._reactions)

    @property
    def timer_kinds(self) -> frozenset[str]:
        return frozenset(self._timer_reactions)

    def decide(self, state: S | None, event: Envelope, payload: EventPayload | None, context: C) -> Decision[S]:
        """The registered reaction's decision; an unregistered type changes nothing."""
        reaction = self._reactions.get(event.event_type)
        if reaction is None:
            return Decision(state)
        return reaction(state, event, payload, context)

    def decide_timer(self, state: S | None, timer: FiredTimer, context: C) -> Decision[S]:
        return self._timer_reactions[timer.kind](state, timer, context)


@dataclass(frozen=True)
class _StageTimers:
    """A stage's timer handler. Its `lock` takes the timers' incidents before the runner claims
    the timers, in the order a consumer batch takes them (see opsledger.timers)."""

    stage: Stage[Any, Any]
    outbox: Outbox
    clock: Clock

    async def __call__(self, session: AsyncSession, timers: list[FiredTimer]) -> None:
        # What `lock` read is still what the database holds (locked since), but only until a
        # handler call changes it: the first call takes it.
        read = session.info.pop((_LOCKED_READ, id(self)), None)
        async with combined_writes(session), joined(session, self.outbox, self.clock.now()) as uow:
            await self.stage.fire(uow, timers, read)

    async def lock(self, session: AsyncSession, timers: list[Timer]) -> None:
        async with joined(session, self.outbox, self.clock.now()) as uow:
            read = await self.stage._read(uow, {uuid.UUID(str(t.data["incident_id"])) for t in timers})
        session.info[(_LOCKED_READ, id(self))] = read


_LOCKED_READ = "opsledger.stage.locked-read"


# A command from a person or an integration: a pure function of the state and the context.
Command = Callable[[S | None, C], Decision[S]]


@dataclass
class Stage(Generic[S, C]):
    """Runs a decider for one service over consumer batches, timers and commands.

    `load` reads the states of the given incidents (locking them: a command and a batch on the same
    incident are serialised; rows are locked in id order so two batches cannot deadlock); `save`
    writes the states that changed (one statement), given also their states as loaded (absent: new),
    for a service that keeps counts over its states; `context` gives what decisions are made under,
    once per unit of work. A service that can read both in one round trip gives `read` instead of
    `load` and `context` (each round trip of a batch's transaction is a wait for PostgreSQL, and
    under load a wait for the CPU). Each gets the unit of work (its session, and `now`). Timers must
    carry their incident in `data["incident_id"]`. Events carry their cause's correlation id, or,
    with `correlation`, the one the incident's state names (e.g. the alert that opened it)."""

    service: str
    decider: Decider[S, C]
    save: Callable[[UnitOfWork, dict[uuid.UUID, S], Mapping[uuid.UUID, S]], Awaitable[None]]
    load: Callable[[UnitOfWork, Collection[uuid.UUID]], Awaitable[dict[uuid.UUID, S]]] | None = None
    context: Callable[[UnitOfWork], Awaitable[C]] | None = None
    read: Callable[[UnitOfWork, Collection[uuid.UUID]], Awaitable[tuple[dict[uuid.UUID, S], C]]] | None = None
    system_actor: str = field(default="")
    correlation: Callable[[S], str | None] | None = None

    def __post_init__(self) -> None:
        if (self.read is None) == (self.load is None or self.context is None):
            raise ValueError(f"stage {self.service}: give either `read`, or both `load` and `context`")
        self.system_actor = self.system_actor or f"system:{self.service}"

    # ------------------------------------------------------------------ consumed events

    async def handle(self, uow: UnitOfWork, deliveries: Sequence[Delivery]) -> dict[uuid.UUID, S]:
        """Decide a whole batch in memory; write once. Returns the batch's incidents as they now
        are (saved, in this transaction), for a caller with more to do against them."""
        ids = {d.envelope.incident_id for d in deliveries if d.envelope.incident_id is not None}
        states, context = await self._read(uow, ids)
        loaded = dict(states)
        changed: dict[uuid.UUID, S] = {}
        for d in deliveries:
            incident_id = d.envelope.incident_id
            if incident_id is None:
                continue
            with log_context(d.envelope):
                decision = self.decider.decide(states.get(incident_id), d.envelope, d.payload, context)
            self._apply(uow, incident_id, decision, states, changed)
            correlation_id = self._correlation_of(states.get(incident_id)) or d.envelope.correlation_id
            uow.emit(*self._reactions_to(d.envelope, incident_id, decision.events, uow, correlation_id))
        await self.save(uow, changed, loaded)
        return states

    def consumer(self, name: str, topics: list[str], outbox: Outbox, clock: Clock, **spec: Any) -> ConsumerSpec:
        """A consumer spec subscribed to exactly the decider's event types."""

        async def batch(session: AsyncSession, deliveries: list[Delivery]) -> None:
            # The states saved, the events and the timers go together (see combined_writes).
            async with combined_writes(session), joined(session, outbox, clock.now()) as uow:
                await self.handle(uow, deliveries)

        return ConsumerSpec(
            name=name, topics=topics, batch_handler=batch, event_types=set(self.decider.event_types), **spec
        )

    # ------------------------------------------------------------------ timers

    def timer_handlers(self, outbox: Outbox, clock: Clock) -> dict[str, TimerHandler]:
        """The timer runner's handlers, one per registered kind (one handler for all of them)."""
        handler = _StageTimers(self, outbox, clock)
        return {kind: handler for kind in self.decider.timer_kinds}

    async def fire(
        self, uow: UnitOfWork, timers: Sequence[FiredTimer], read: tuple[dict[uuid.UUID, S], C] | None = None
    ) -> None:
        """Decide the fired timers. `read`: their incidents' states (and the context) as read and
        locked in this transaction already, and not changed since (more incidents are no harm)."""
        ids = {uuid.UUID(str(t.data["incident_id"])) for t in timers}
        states, context = read if read is not None else await self._read(uow, ids)
        states = {i: state for i, state in states.items() if i in ids}
        loaded = dict(states)
        changed: dict[uuid.UUID, S] = {}
        for timer in timers:
            incident_id = uuid.UUID(str(timer.data["incident_id"]))
            decision = self.decider.decide_timer(states.get(incident_id), timer, context)
            self._apply(uow, incident_id, decision, states, changed)
            correlation_id = self._correlation_of(states.get(incident_id))
            uow.emit(
                *(
                    self._envelope(
                        p, incident_id, uow, correlation_id=correlation_id, event_id=timer.event_id(p.event_type, n)
                    )
                    for p, n in _numbered(decision.events)
                )
            )
        await self.save(uow, changed, loaded)

    # ------------------------------------------------------------------ commands

    async def execute(
        self,
        uow: UnitOfWork,
        incident_id: uuid.UUID,
        command: Command[S, C],
        *,
        actor: str,
        correlation_id: str | None = None,
    ) -> tuple[S | None, list[Envelope]]:
        """Run a command against the incident's current state (locked); returns the new state and
        the events staged. Exceptions the command raises (a refusal) leave nothing written. The
        events carry `correlation_id` (the request's), else the one the state names."""
        states, context = await self._read(uow, {incident_id})
        loaded = dict(states)
        correlation_id = correlation_id or self._correlation_of(states.get(incident_id))
        decision = command(states.get(incident_id), context)
        changed: dict[uuid.UUID, S] = {}
        self._apply(uow, incident_id, decision, states, changed)
        envelopes = [
            self._envelope(p, incident_id, uow, actor=actor, correlation_id=correlation_id) for p in decision.events
        ]
        uow.emit(*envelopes)
        await self.save(uow, changed, loaded)
        return decision.state, envelopes

    # ------------------------------------------------------------------ shared

    async def _read(self, uow: UnitOfWork, ids: Collection[uuid.UUID]) -> tuple[dict[uuid.UUID, S], C]:
        if self.read is not None:
            return await self.read(uow, ids)
        assert self.load is not None and self.context is not None  # see __post_init__
        return await self.load(uow, ids), await self.context(uow)

    def _apply(
        self,
        uow: UnitOfWork,
        incident_id: uuid.UUID,
        decision: Decision[S],
        states: dict[uuid.UUID, S],
        changed: dict[uuid.UUID, S],
    ) -> None:
        if decision.state is not None and decision.state is not states.get(incident_id):
            states[incident_id] = changed[incident_id] = decision.state
        uow.cancel(*decision.cancel)
        uow.schedule(*decision.schedule)

    def _correlation_of(self, state: S | None) -> str | None:
        return self.correlation(state) if self.correlation is not None and state is not None else None

    def _reactions_to(
        self,
        cause: Envelope,
        incident_id: uuid.UUID,
        payloads: Sequence[EventPayload],
        uow: UnitOfWork,
        correlation_id: str | None,
    ) -> list[Envelope]:
        # Ids derive from the cause, so a redelivered or replayed cause re-derives the same events.
        return [
            new_event(
                p,
                producer=self.service,
                actor=self.system_actor,
                incident_id=incident_id,
                cause=cause,
                ordinal=n,
                correlation_id=correlation_id,
                occurred_at=uow.now,
            )
            for p, n in _numbered(payloads)
        ]

    def _envelope(
        self,
        payload: EventPayload,
        incident_id: uuid.UUID,
        uow: UnitOfWork,
        *,
        actor: str | None = None,
        correlation_id: str | None = None,
        event_id: uuid.UUID | None = None,
    ) -> Envelope:
        return new_event(
            payload,
            producer=self.service,
            actor=actor or self.system_actor,
            incident_id=incident_id,
            correlation_id=correlation_id,
            event_id=event_id,
            occurred_at=uow.now,
        )


def _numbered(payloads: Sequence[EventPayload]) -> list[tuple[EventPayload, int]]:
    """Each payload with its ordinal among the decision's events of the same type: the part of a
    derived id that tells apart two events of one type from one cause."""
    seen: dict[str, int] = {}
    numbered = []
    for p in payloads:
        numbered.append((p, seen.get(p.event_type, 0)))
        seen[p.event_type] = seen.get(p.event_type, 0) + 1
    return numbered
