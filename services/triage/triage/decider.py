"""Triage's decisions as pure functions over its state of one incident (no I/O): the reactions to
the events it consumes, registered in `decider` (the consumer subscribes to exactly these types),
and the commands a person gives. Each returns the new state and the events that announce it; the
stage (handlers.py) loads, saves and stages them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from opsledger.events import Envelope, EventPayload
from opsledger.events.intake import AlertCorrelated, IncidentDetailsUpdated, IncidentLogged
from opsledger.events.triage import TriageOverrideCleared
from opsledger.stage import Command, Decider, Decision
from triage import domain, outgoing
from triage.domain import Policy, TriageState

decider: Decider[TriageState, Policy] = Decider()


class NotTriaged(Exception):
    """A command for an incident triage has not seen (the API answers 404)."""


# --------------------------------------------------------------------------- reactions


@decider.on(IncidentLogged)
def on_logged(
    state: TriageState | None, event: Envelope, logged: IncidentLogged, policy: Policy
) -> Decision[TriageState]:
    """Evaluate rules and priority; announce IncidentCategorized + IncidentPrioritized. An incident
    already triaged (a redelivery the inbox did not catch) changes nothing."""
    if state is not None:
        return Decision(state)
    facts = domain.Facts(
        source=logged.source,
        title=logged.title,
        severity=logged.severity,
        initial_severity=logged.severity,
        description=logged.description,
        service=logged.service,
        environment=logged.environment,
        labels=dict(logged.labels),
        business_impact=logged.business_impact.level if logged.business_impact else None,
        urgency_hint=logged.urgency_hint,
    )
    decision = domain.evaluate(facts, policy)
    new = TriageState(
        facts=facts,
        decision=decision,
        overrides=domain.Overrides(),
        category=decision.categorization.category,
        subcategory=decision.categorization.subcategory,
        priority=decision.prioritization.priority,
        logged_at=event.occurred_at,
        title=logged.title,
        correlation_id=event.correlation_id,
    )
    return Decision(new, [outgoing.categorized(facts, decision, None, None), outgoing.prioritized(facts, decision)])


@decider.on(AlertCorrelated)
def on_correlated(
    state: TriageState | None, event: Envelope, alert: AlertCorrelated, policy: Policy
) -> Decision[TriageState]:
    """Keep the highest severity and the count; re-evaluate when severity rose or the count
    reached a threshold. An incident logged before triage existed has nothing to re-evaluate."""
    if state is None:
        return Decision(None)
    after = domain.with_correlation(state.facts, alert.severity, alert.occurrence_count)
    reason = domain.correlation_trigger(state.facts, after, policy)
    if reason is None:
        return Decision(replace(state, facts=after) if after != state.facts else state)
    return reassess(state, after, state.overrides, policy, reason)


@decider.on(IncidentDetailsUpdated)
def on_details_updated(
    state: TriageState | None, event: Envelope, update: IncidentDetailsUpdated, policy: Policy
) -> Decision[TriageState]:
    """Take the reporter's new business impact and/or urgency hint (absent: unchanged); re-evaluate."""
    if state is None:
        return Decision(None)
    before = state.facts
    after = before
    reasons: list[str] = []
    level = update.business_impact.level if update.business_impact else None
    if level is not None and level != before.business_impact:
        after = replace(after, business_impact=level)
        reasons.append(f"reporter changed business impact from {before.business_impact or 'unstated'} to {level}")
    if update.urgency_hint is not None and update.urgency_hint != before.urgency_hint:
        after = replace(after, urgency_hint=update.urgency_hint)
        reasons.append(f"urgency hint changed to {update.urgency_hint}")
    if not reasons:
        return Decision(state)
    if update.reason:
        reasons.append(f"({update.reason})")
    return reassess(state, after, state.overrides, policy, " ".join(reasons))


def reassess(
    state: TriageState,
    facts: domain.Facts,
    overrides: domain.Overrides,
    policy: Policy,
    reason: str,
    before: Sequence[EventPayload] = (),
) -> Decision[TriageState]:
    """Evaluate again and announce what changed (after `before`): IncidentCategorized when the
    effective category changed, IncidentReprioritized when the effective priority did."""
    decision = domain.evaluate(facts, policy)
    eff = domain.effective(decision, overrides)
    events = list(before)
    if (eff.category, eff.subcategory) != (state.category, state.subcategory):
        events.append(outgoing.categorized(facts, decision, overrides.category, reason))
    if eff.priority != state.priority:
        events.append(outgoing.reprioritized(facts, decision, state.priority, overrides.priority, reason))
    new = replace(
        state,
        facts=facts,
        decision=decision,
        overrides=overrides,
        category=eff.category,
        subcategory=eff.subcategory,
        priority=eff.priority,
    )
    return Decision(new, events)


# --------------------------------------------------------------------------- commands


def override(
    *, category: str | None, subcategory: str | None, priority: str | None, reason: str, actor: str
) -> Command[TriageState, Policy]:
    """A person sets category and/or priority; announced with overridden=true even when it confirms
    the value (who decided matters). The command raises NotTriaged, or domain.ConfigError for an
    unknown category or a priority outside P1..P5."""

    def command(state: TriageState | None, policy: Policy) -> Decision[TriageState]:
        if state is None:
            raise NotTriaged
        new = state.overrides
        if category is not None:
            policy.tree.check(category, subcategory, "override")
            new = replace(new, category=domain.CategoryOverride(category, subcategory, reason, actor))
        if priority is not None:
            new = replace(new, priority=domain.PriorityOverride(domain.check_priority(priority), reason, actor))
        decision = domain.evaluate(state.facts, policy)
        eff = domain.effective(decision, new)
        events: list[EventPayload] = []
        if new.category is not None and category is not None:
            events.append(outgoing.categorized(state.facts, decision, new.category, None))
        if new.priority is not None and priority is not None:
            text = f"override by {actor}: {reason}"
            events.append(outgoing.reprioritized(state.facts, decision, state.priority, new.priority, text))
        changed = replace(
            state,
            decision=decision,
            overrides=new,
            category=eff.category,
            subcategory=eff.subcategory,
            priority=eff.priority,
        )
        return Decision(changed, events)

    return command


def clear_override(fields: set[str], reason: str | None, actor: str) -> Command[TriageState, Policy]:
    """Drop overrides (category and/or priority) and let automation decide again: one
    TriageOverrideCleared per override dropped, then what changed. The command raises NotTriaged,
    or LookupError when none of `fields` is overridden."""

    def command(state: TriageState | None, policy: Policy) -> Decision[TriageState]:
        if state is None:
            raise NotTriaged
        current = state.overrides
        cleared = [f for f in sorted(fields) if getattr(current, f) is not None]
        if not cleared:
            raise LookupError(f"no override of {' or '.join(sorted(fields))} is in force")
        remaining = replace(current, **{f: None for f in cleared})
        text = f"override of {', '.join(cleared)} cleared by {actor}" + (f": {reason}" if reason else "")
        announced = [TriageOverrideCleared(field=f, reason=reason) for f in cleared]
        return reassess(state, state.facts, remaining, policy, text, before=announced)

    return command
