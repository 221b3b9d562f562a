"""Pure decisions of the assignment service (no I/O): what it knows of an incident, the reactions
to the events it consumes (registered on `decider`: the consumer subscribes to exactly these
types), the acknowledgement timer's reaction, and the commands people give."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from assignment.config import Config, Facts, Load, choose, next_tier, route
from opsledger.events import Envelope, EventPayload
from opsledger.events.assignment import (
    AcknowledgementChannel,
    AssigneeChoice,
    AssignmentBasis,
    EscalationCause,
    HoldReason,
    IncidentAcknowledged,
    IncidentAssigned,
    IncidentEscalated,
    IncidentPutOnHold,
    IncidentResumed,
    TaskOrigin,
    TaskPriority,
    TaskStatus,
)
from opsledger.events.common import PersonRef, SlaTargetKind
from opsledger.events.intake import AlertAcknowledged, IncidentLogged
from opsledger.events.resolution import IncidentClosed, IncidentReopened, IncidentResolved
from opsledger.events.sla import SlaBreached, SlaWarning
from opsledger.events.triage import IncidentCategorized, IncidentPrioritized, IncidentReprioritized
from opsledger.stage import Command, Decider, Decision
from opsledger.timers import FiredTimer, Timer

OPEN, RESOLVED, CLOSED = "open", "resolved", "closed"
ACK_TIMER = "ack"


def ack_timer_key(incident_id: Any) -> str:
    return f"{ACK_TIMER}:{incident_id}"


@dataclass(frozen=True)
class Task:
    """A piece of work split off an incident (stored in its own table; see tasks.py)."""

    task_id: uuid.UUID
    title: str
    created_at: datetime
    description: str | None = None
    assignee: PersonRef | None = None
    priority: TaskPriority = TaskPriority.MEDIUM
    status: TaskStatus = TaskStatus.OPEN
    due_at: datetime | None = None
    required_skills: tuple[str, ...] = ()
    origin: TaskOrigin = TaskOrigin.MANUAL
    review_event_id: uuid.UUID | None = None
    action_item_id: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status in (TaskStatus.OPEN, TaskStatus.IN_PROGRESS)


@dataclass(frozen=True)
class Incident:
    """What this service knows of one incident, and where its assignment stands."""

    logged_at: datetime
    title: str
    correlation_id: str | None = None
    facts: Facts = field(default_factory=Facts)
    prioritized: bool = False
    status: str = OPEN  # open | resolved | closed
    team_id: str | None = None
    team_name: str | None = None
    policy_id: str | None = None
    rule_id: str | None = None
    tier: int | None = None
    repeat: int = 0
    assignee: PersonRef | None = None
    assigned_at: datetime | None = None
    reason: str | None = None  # why the last assignment chose whom it chose
    acknowledged_by: str | None = None  # "user:<sub>" or "integration:<id>"; None: not acknowledged
    hold: HoldReason | None = None
    causes: frozenset[str] = frozenset()  # escalation causes already acted on (one escalation each)
    tasks: tuple[Task, ...] = ()  # in creation order

    def task(self, task_id: uuid.UUID) -> Task | None:
        return next((t for t in self.tasks if t.task_id == task_id), None)

    def as_json(self) -> dict[str, Any]:
        return {
            "correlation_id": self.correlation_id,
            "facts": {**self.facts.__dict__, "labels": dict(self.facts.labels)},
            "prioritized": self.prioritized,
            "team_name": self.team_name,
            "policy_id": self.policy_id,
            "rule_id": self.rule_id,
            "tier": self.tier,
            "repeat": self.repeat,
            "assignee": self.assignee.model_dump() if self.assignee else None,
            "acknowledged_by": self.acknowledged_by,
            "reason": self.reason,
            "hold": str(self.hold) if self.hold else None,
            "causes": sorted(self.causes),
        }

    @classmethod
    def from_row(
        cls,
        logged_at: datetime,
        title: str,
        status: str | None,
        team_id: str | None,
        assigned_at: datetime | None,
        raw: Mapping[str, Any] | None,
        tasks: Sequence[Task] = (),
    ) -> Incident:
        raw = raw or {}
        assignee = raw.get("assignee")
        return cls(
            logged_at=logged_at,
            title=title,
            correlation_id=raw.get("correlation_id"),
            facts=Facts(**raw.get("facts", {})),
            prioritized=bool(raw.get("prioritized", False)),
            status=status or OPEN,
            team_id=team_id,
            team_name=raw.get("team_name"),
            policy_id=raw.get("policy_id"),
            rule_id=raw.get("rule_id"),
            tier=raw.get("tier"),
            repeat=int(raw.get("repeat", 0)),
            assignee=PersonRef.model_validate(assignee) if assignee else None,
            assigned_at=assigned_at,
            acknowledged_by=raw.get("acknowledged_by"),
            reason=raw.get("reason"),
            hold=HoldReason(raw["hold"]) if raw.get("hold") else None,
            causes=frozenset(raw.get("causes", ())),
            tasks=tuple(tasks),
        )


@dataclass(frozen=True)
class Context:
    """What decisions are made under: the configuration in force, how busy people are, and the
    unit of work's time."""

    config: Config
    load: Load
    now: datetime

    def track(self, before: Incident | None, after: Incident | None) -> None:
        """Keep `load` current after a decision, so the next one in the batch sees it."""
        if after is None or after is before:
            return
        was = _holder(before)
        now = _holder(after)
        reassigned = before is None or after.assigned_at != before.assigned_at
        if was != now or (reassigned and now is not None):
            self.load.moved(was, now, after.assigned_at if reassigned else None)


def _holder(state: Incident | None) -> str | None:
    if state is None or state.assignee is None or state.status != OPEN:
        return None
    return state.assignee.sub


class _Decider(Decider[Incident, Context]):
    """The registry of reactions, keeping the batch's view of people's load current: a batch's
    decisions run one after another, and each must see whom the previous ones assigned (else a
    burst of incidents would all go to the same least loaded person)."""

    def decide(
        self, state: Incident | None, event: Envelope, payload: EventPayload | None, context: Context
    ) -> Decision[Incident]:
        decision = super().decide(state, event, payload, context)
        context.track(state, decision.state)
        return decision

    def decide_timer(self, state: Incident | None, timer: FiredTimer, context: Context) -> Decision[Incident]:
        decision = super().decide_timer(state, timer, context)
        context.track(state, decision.state)
        return decision


decider = _Decider()


class NotFound(LookupError):
    """The incident (or a team or person a command names) is unknown: 404."""


class Conflict(Exception):
    """The command does not fit the incident's state: 409, with that state."""


class Forbidden(PermissionError):
    """The person may not do this to this incident: 403."""


def new_incident(event: Envelope, title: str = "") -> Incident:
    return Incident(logged_at=event.occurred_at, title=title, correlation_id=event.correlation_id)


# --------------------------------------------------------------------------- assigning


def _assign(
    state: Incident,
    incident_id: Any,
    ctx: Context,
    *,
    team_id: str,
    policy_id: str | None,
    rule_id: str | None,
    tier: int | None,
    repeat: int,
    basis: AssignmentBasis,
    why: str,
    before: Sequence[EventPayload] = (),
    person: PersonRef | None = None,
) -> Decision[Incident]:
    """Give the incident to the team and the person the tier names (or `person`); start the
    tier's acknowledgement timer."""
    team = ctx.config.teams.get(team_id)
    policy = ctx.config.policies.get(policy_id) if policy_id else None
    # A policy changed since may have fewer tiers now: its last one, then.
    tier = None if policy is None else min(tier or 0, len(policy.tiers) - 1)
    key = ack_timer_key(incident_id)
    if team is None:
        chosen, chosen_by, because = None, AssigneeChoice.NOBODY, f"team {team_id} is unknown"
    elif person is not None:
        chosen, chosen_by, because = person, AssigneeChoice.MANUAL, f"{person.name or person.sub} chosen by hand"
    else:
        choice = choose(ctx.config, team, policy, tier, ctx.now, ctx.load)
        chosen, chosen_by, because = choice.person, choice.chosen_by, choice.reason
    if policy is not None and tier is not None and person is None:
        because = f"tier {tier + 1} of policy {policy.name}: {because}"
    assigned = IncidentAssigned(
        team_id=team_id,
        team_name=team.name if team else None,
        assignee=chosen,
        escalation_policy_id=policy.policy_id if policy else None,
        tier=tier,
        repeat=repeat,
        routing_rule_id=rule_id,
        basis=basis,
        chosen_by=chosen_by,
        reason=f"{why}; {because}"[:2000],
    )
    # The alert source may have acknowledged before the incident was first routed: that stands.
    kept = state.acknowledged_by if state.team_id is None and basis == AssignmentBasis.ROUTING else None
    new = replace(
        state,
        team_id=team_id,
        team_name=team.name if team else None,
        policy_id=policy.policy_id if policy else None,
        rule_id=rule_id,
        tier=tier,
        repeat=repeat,
        assignee=chosen,
        assigned_at=ctx.now,
        reason=assigned.reason,
        acknowledged_by=kept,
    )
    timers: list[Timer] = []
    cancel: list[str] = [key]
    if policy is not None and tier is not None and state.hold is None and kept is None:
        timeout = timedelta(seconds=policy.tiers[tier].ack_timeout_seconds)
        timers = [Timer(key, ctx.now + timeout, {"incident_id": str(incident_id), "tier": tier, "repeat": repeat})]
        cancel = []
    return Decision(new, [*before, assigned], schedule=timers, cancel=cancel)


def _by_route(state: Incident, incident_id: Any, ctx: Context, basis: AssignmentBasis) -> Decision[Incident]:
    chosen = route(ctx.config, state.facts)
    if chosen is None:
        return Decision(state)
    return _assign(
        state,
        incident_id,
        ctx,
        team_id=chosen.team_id,
        policy_id=chosen.policy_id,
        rule_id=chosen.rule_id,
        tier=0,
        repeat=0,
        basis=basis,
        why=chosen.reason,
    )


def _reroute(state: Incident, incident_id: Any, ctx: Context) -> Decision[Incident]:
    """After new facts: assign (first time), or reassign when the route now names another team
    or policy; otherwise just keep the facts."""
    if not state.prioritized or state.status != OPEN:
        return Decision(state)
    if state.team_id is None:
        return _by_route(state, incident_id, ctx, AssignmentBasis.ROUTING)
    chosen = route(ctx.config, state.facts)
    if chosen is None or (chosen.team_id, chosen.policy_id) == (state.team_id, state.policy_id):
        return Decision(state)
    return _by_route(state, incident_id, ctx, AssignmentBasis.ROUTING)


def _escalate(
    state: Incident,
    incident_id: Any,
    ctx: Context,
    *,
    cause: EscalationCause,
    cause_key: str | None,
    why: str,
    sla_target: SlaTargetKind | None = None,
    due_at: datetime | None = None,
    fired_at: datetime | None = None,
) -> Decision[Incident]:
    """Move to the policy's next tier: IncidentEscalated, then IncidentAssigned. A cause already
    acted on, a closed incident, or the last tier of the last pass changes nothing (the cause is
    remembered all the same)."""
    if cause_key is not None and cause_key in state.causes:
        return Decision(state)
    seen = replace(state, causes=state.causes | {cause_key}) if cause_key is not None else state
    policy = ctx.config.policies.get(state.policy_id) if state.policy_id else None
    if state.status != OPEN or state.team_id is None or policy is None or state.tier is None:
        return Decision(seen)
    following = next_tier(policy, state.tier, state.repeat)
    if following is None:
        return Decision(seen)
    to_tier, repeat = following
    escalated = IncidentEscalated(
        escalation_policy_id=policy.policy_id,
        from_tier=state.tier,
        to_tier=to_tier,
        repeat=repeat,
        cause=cause,
        sla_target=sla_target,
        reason=why[:2000],
        due_at=due_at,
        fired_at=fired_at,
    )
    return _assign(
        seen,
        incident_id,
        ctx,
        team_id=state.team_id,
        policy_id=policy.policy_id,
        rule_id=state.rule_id,
        tier=to_tier,
        repeat=repeat,
        basis=AssignmentBasis.ESCALATION,
        why=f"escalated from tier {state.tier + 1} ({why})",
        before=[escalated],
    )


# --------------------------------------------------------------------------- reactions


@decider.on(IncidentLogged)
def on_logged(state: Incident | None, event: Envelope, logged: IncidentLogged, ctx: Context) -> Decision[Incident]:
    """Remember the incident and what routing looks at (once: a second IncidentLogged changes nothing)."""
    base = state or new_incident(event, logged.title)
    if state is not None and state.title:
        return Decision(state)
    facts = replace(
        base.facts,
        service=base.facts.service or logged.service,
        environment=logged.environment,
        labels=dict(logged.labels),
    )
    return Decision(replace(base, title=logged.title, facts=facts, correlation_id=event.correlation_id))


@decider.on(IncidentCategorized)
def on_categorized(state: Incident | None, event: Envelope, c: IncidentCategorized, ctx: Context) -> Decision[Incident]:
    base = state or new_incident(event)
    facts = replace(
        base.facts, category=c.category, subcategory=c.subcategory, service=base.facts.service or c.affected_service
    )
    return _reroute(replace(base, facts=facts), event.incident_id, ctx)


@decider.on(IncidentPrioritized, IncidentReprioritized)
def on_prioritized(
    state: Incident | None, event: Envelope, p: IncidentPrioritized | IncidentReprioritized, ctx: Context
) -> Decision[Incident]:
    """Route and assign (first time), or reassign when the new priority changes the route."""
    base = state or new_incident(event)
    updated = replace(base, facts=replace(base.facts, priority=p.priority), prioritized=True)
    return _reroute(updated, event.incident_id, ctx)


@decider.on(AlertAcknowledged)
def on_alert_acknowledged(
    state: Incident | None, event: Envelope, ack: AlertAcknowledged, ctx: Context
) -> Decision[Incident]:
    """The alert source acknowledged (e.g. PagerDuty): an acknowledgement by the integration."""
    if state is None or state.status != OPEN or state.acknowledged_by is not None:
        return Decision(state)
    who = f"integration:{ack.integration_id or ack.source}"
    acknowledged = IncidentAcknowledged(
        via=AcknowledgementChannel.INTEGRATION,
        integration_id=ack.integration_id,
        assignee=state.assignee,
        tier=state.tier,
    )
    return Decision(replace(state, acknowledged_by=who), [acknowledged], cancel=[ack_timer_key(event.incident_id)])


@decider.on(SlaWarning, SlaBreached)
def on_sla(state: Incident | None, event: Envelope, sla: SlaWarning | SlaBreached, ctx: Context) -> Decision[Incident]:
    """Escalate once per target and threshold, however often the SLA event is delivered."""
    if state is None:
        return Decision(state)
    if isinstance(sla, SlaWarning):
        key = f"sla_warning:{sla.target}:{sla.threshold_percent}"
        why = f"{sla.threshold_percent}% of the {sla.target} target used"
        return _escalate(
            state,
            event.incident_id,
            ctx,
            cause=EscalationCause.SLA_WARNING,
            cause_key=key,
            why=why,
            sla_target=sla.target,
            due_at=sla.threshold_at,
            fired_at=sla.fired_at,
        )
    return _escalate(
        state,
        event.incident_id,
        ctx,
        cause=EscalationCause.SLA_BREACHED,
        cause_key=f"sla_breached:{sla.target}",
        why=f"the {sla.target} target was breached",
        sla_target=sla.target,
        due_at=sla.due_at,
        fired_at=sla.fired_at,
    )


@decider.on(IncidentResolved)
def on_resolved(state: Incident | None, event: Envelope, _: IncidentResolved, ctx: Context) -> Decision[Incident]:
    if state is None:
        return Decision(state)
    return Decision(replace(state, status=RESOLVED), cancel=[ack_timer_key(event.incident_id)])


@decider.on(IncidentClosed)
def on_closed(state: Incident | None, event: Envelope, _: IncidentClosed, ctx: Context) -> Decision[Incident]:
    if state is None:
        return Decision(state)
    return Decision(replace(state, status=CLOSED), cancel=[ack_timer_key(event.incident_id)])


@decider.on(IncidentReopened)
def on_reopened(state: Incident | None, event: Envelope, r: IncidentReopened, ctx: Context) -> Decision[Incident]:
    """Back to its last team, from the first tier of the policy it had."""
    if state is None or state.status == OPEN:
        return Decision(state)
    reopened = replace(state, status=OPEN, acknowledged_by=None, hold=None, causes=frozenset())
    if state.team_id is None:
        return _by_route(reopened, event.incident_id, ctx, AssignmentBasis.REOPEN)
    return _assign(
        reopened,
        event.incident_id,
        ctx,
        team_id=state.team_id,
        policy_id=state.policy_id,
        rule_id=state.rule_id,
        tier=0,
        repeat=0,
        basis=AssignmentBasis.REOPEN,
        why=f"reopened ({r.reason}): back to its last team",
    )


@decider.on_timer(ACK_TIMER)
def on_ack_timeout(state: Incident | None, timer: FiredTimer, ctx: Context) -> Decision[Incident]:
    """Nobody acknowledged within the tier's timeout: the next tier."""
    if state is None or state.acknowledged_by is not None or state.hold is not None:
        return Decision(state)
    if (timer.data.get("tier"), timer.data.get("repeat", 0)) != (state.tier, state.repeat):
        return Decision(state)  # a timer of a tier the incident has left
    return _escalate(
        state,
        timer.data["incident_id"],
        ctx,
        cause=EscalationCause.ACK_TIMEOUT,
        cause_key=f"ack_timeout:{state.repeat}:{state.tier}:{timer.due_at.isoformat()}",
        why=f"not acknowledged by {_who(state.assignee)} in time",
        due_at=timer.due_at,
        fired_at=timer.fired_at,
    )


def _who(person: PersonRef | None) -> str:
    return "nobody" if person is None else person.name or person.sub


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Caller:
    """The person giving a command."""

    person: PersonRef
    roles: frozenset[str]

    @property
    def actor(self) -> str:
        return f"user:{self.person.sub}"

    @property
    def manages(self) -> bool:
        return bool(self.roles & {"manager", "admin"})


def _open(state: Incident | None) -> Incident:
    if state is None:
        raise NotFound("incident")
    if state.status != OPEN:
        raise Conflict(f"the incident is {state.status}")
    return state


def _in_team(ctx: Context, team_id: str | None, sub: str) -> bool:
    team = ctx.config.teams.get(team_id or "")
    if team is None:
        return False
    return any(m.person.sub == sub for m in team.members) or (team.manager is not None and team.manager.sub == sub)


def acknowledge(incident_id: Any, caller: Caller) -> Command[Incident, Context]:
    """The assignee, a member of the team, or a manager takes the incident on; the acknowledgement
    timer stops."""

    def command(state: Incident | None, ctx: Context) -> Decision[Incident]:
        current = _open(state)
        if current.acknowledged_by is not None:
            raise Conflict(f"the incident was acknowledged by {current.acknowledged_by} already")
        sub = caller.person.sub
        allowed = (current.assignee is not None and current.assignee.sub == sub) or _in_team(ctx, current.team_id, sub)
        if not allowed and not caller.manages:
            team = current.team_name or current.team_id or "no team"
            raise Forbidden(f"{sub} is neither the assignee nor a member of team {team}, nor a manager")
        ack = IncidentAcknowledged(
            via=AcknowledgementChannel.API, by=caller.person, assignee=current.assignee, tier=current.tier
        )
        return Decision(replace(current, acknowledged_by=caller.actor), [ack], cancel=[ack_timer_key(incident_id)])

    return command


def escalate(incident_id: Any, caller: Caller, reason: str) -> Command[Incident, Context]:
    """A manager moves the incident to the policy's next tier now."""

    def command(state: Incident | None, ctx: Context) -> Decision[Incident]:
        current = _open(state)
        policy = ctx.config.policies.get(current.policy_id or "")
        if policy is None or current.tier is None:
            raise Conflict("the incident has no escalation policy to escalate along")
        if next_tier(policy, current.tier, current.repeat) is None:
            raise Conflict(f"the incident is at the last tier ({current.tier + 1}) of policy {policy.name}")
        return _escalate(
            current,
            incident_id,
            ctx,
            cause=EscalationCause.MANUAL,
            cause_key=None,
            why=f"escalated by {caller.person.name or caller.person.sub}: {reason}",
        )

    return command


def reassign(
    incident_id: Any, caller: Caller, reason: str, team_id: str | None, sub: str | None
) -> Command[Incident, Context]:
    """A manager gives the incident to another team (its policy's first tier chooses the person)
    and/or a named member of it."""

    def command(state: Incident | None, ctx: Context) -> Decision[Incident]:
        current = _open(state)
        target = team_id or current.team_id
        team = ctx.config.teams.get(target or "")
        if team is None or target is None:
            raise NotFound(f"team {target}" if target else "team (the incident has none: name one)")
        person = None
        if sub is not None:
            people = [m.person for m in team.members] + ([team.manager] if team.manager else [])
            person = next((p for p in people if p.sub == sub), None)
            if person is None:
                raise NotFound(f"person {sub} in team {team.name}")
        policy_id = team.escalation_policy_id if target != current.team_id else current.policy_id
        return _assign(
            current,
            incident_id,
            ctx,
            team_id=target,
            policy_id=policy_id,
            rule_id=current.rule_id if target == current.team_id else None,
            tier=current.tier if target == current.team_id and person is not None else 0,
            repeat=current.repeat if target == current.team_id and person is not None else 0,
            basis=AssignmentBasis.MANUAL,
            why=f"reassigned by {caller.person.name or caller.person.sub}: {reason}",
            person=person,
        )

    return command


def put_on_hold(
    incident_id: Any, caller: Caller, reason: HoldReason, note: str | None, until: datetime | None
) -> Command[Incident, Context]:
    """Work waits for something outside the team; escalation waits too."""

    def command(state: Incident | None, ctx: Context) -> Decision[Incident]:
        current = _open(state)
        _may_work(current, ctx, caller)
        if current.hold is not None:
            raise Conflict(f"the incident is on hold already ({current.hold})")
        held = IncidentPutOnHold(reason=reason, note=note, until=until)
        return Decision(replace(current, hold=reason), [held], cancel=[ack_timer_key(incident_id)])

    return command


def resume(incident_id: Any, caller: Caller, note: str | None) -> Command[Incident, Context]:
    """Work goes on; an unacknowledged incident's acknowledgement timer starts again."""

    def command(state: Incident | None, ctx: Context) -> Decision[Incident]:
        current = _open(state)
        _may_work(current, ctx, caller)
        if current.hold is None:
            raise Conflict("the incident is not on hold")
        resumed = IncidentResumed(reason=current.hold, note=note)
        new = replace(current, hold=None)
        policy = ctx.config.policies.get(current.policy_id or "")
        timers: list[Timer] = []
        if current.acknowledged_by is None and policy is not None and current.tier is not None:
            tier = policy.tiers[min(current.tier, len(policy.tiers) - 1)]
            due = ctx.now + timedelta(seconds=tier.ack_timeout_seconds)
            data = {"incident_id": str(incident_id), "tier": current.tier, "repeat": current.repeat}
            timers = [Timer(ack_timer_key(incident_id), due, data)]
        return Decision(new, [resumed], schedule=timers)

    return command


def _may_work(state: Incident, ctx: Context, caller: Caller) -> None:
    sub = caller.person.sub
    if caller.manages or (state.assignee is not None and state.assignee.sub == sub):
        return
    if not _in_team(ctx, state.team_id, sub):
        team = state.team_name or state.team_id or "(none)"
        raise Forbidden(f"{sub} is neither the assignee nor a member of team {team}, nor a manager")
