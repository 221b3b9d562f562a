"""Event and command handlers of the triage service: load state -> decide (domain) -> write state
and the resulting events to the outbox, in the caller's one transaction."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.bus.outbox import Outbox
from opsledger.clock import Clock
from opsledger.events import Envelope, EventPayload
from opsledger.events.intake import AlertCorrelated, IncidentDetailsUpdated, IncidentLogged
from opsledger.events.triage import TriageOverrideCleared
from triage import domain, outgoing, store
from triage.settings import Settings

CONSUMED = {"IncidentLogged", "AlertCorrelated", "IncidentDetailsUpdated"}


class VersionConflict(Exception):
    """A configuration change was made from a version that is no longer in force."""


class Triage:
    """Triage's write side; one per service instance."""

    def __init__(self, settings: Settings, outbox: Outbox, clock: Clock) -> None:
        self.settings = settings
        self.outbox = outbox
        self.clock = clock

    async def policy(self, session: AsyncSession) -> domain.Policy:
        rows = await store.current_configs(session)
        return store.policy_from(
            rows, dict(self.settings.service_criticality), tuple(self.settings.impact_count_thresholds)
        )

    # ----------------------------------------------------------------- consumed events

    async def on_event(self, session: AsyncSession, envelope: Envelope, payload: EventPayload | None) -> None:
        if envelope.incident_id is None:
            return
        if isinstance(payload, IncidentLogged):
            await self.on_logged(session, envelope, payload)
        elif isinstance(payload, AlertCorrelated):
            await self.on_correlated(session, envelope, payload)
        elif isinstance(payload, IncidentDetailsUpdated):
            await self.on_details_updated(session, envelope, payload)

    async def on_logged(self, session: AsyncSession, envelope: Envelope, logged: IncidentLogged) -> None:
        assert envelope.incident_id is not None
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
        policy = await self.policy(session)
        decision = domain.evaluate(facts, policy)
        now = self.clock.now()
        inserted = await store.insert_incident(
            session,
            {
                "incident_id": envelope.incident_id,
                "logged_at": envelope.occurred_at,
                "title": logged.title,
                "correlation_id": envelope.correlation_id,
                "facts": facts.as_json(),
                "decision": store.decision_json(decision),
                "category": decision.categorization.category,
                "subcategory": decision.categorization.subcategory,
                "priority": decision.prioritization.priority,
                "updated_at": now,
            },
        )
        if not inserted:  # already triaged (the inbox normally catches this first)
            return
        await self.outbox.add(
            session,
            [
                outgoing.incident_event(
                    outgoing.categorized(facts, decision, None, None), envelope.incident_id, at=now, cause=envelope
                ),
                outgoing.incident_event(
                    outgoing.prioritized(facts, decision), envelope.incident_id, at=now, cause=envelope
                ),
            ],
        )

    async def on_correlated(self, session: AsyncSession, envelope: Envelope, alert: AlertCorrelated) -> None:
        assert envelope.incident_id is not None
        row = await store.load_incident(session, envelope.incident_id, lock=True)
        if row is None:  # correlated to an incident logged before triage existed: nothing to re-evaluate
            return
        before = domain.Facts.from_json(row.facts)
        after = domain.with_correlation(before, alert.severity, alert.occurrence_count)
        policy = await self.policy(session)
        reason = domain.correlation_trigger(before, after, policy)
        if reason is None:
            if after != before:
                await store.update_incident(
                    session, row.incident_id, {"facts": after.as_json(), "updated_at": self.clock.now()}
                )
            return
        await self.reassess(session, row, after, store.overrides_from(row.overrides), policy, reason, cause=envelope)

    async def on_details_updated(
        self, session: AsyncSession, envelope: Envelope, update: IncidentDetailsUpdated
    ) -> None:
        assert envelope.incident_id is not None
        row = await store.load_incident(session, envelope.incident_id, lock=True)
        if row is None:
            return
        before = domain.Facts.from_json(row.facts)
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
            return
        if update.reason:
            reasons.append(f"({update.reason})")
        policy = await self.policy(session)
        await self.reassess(
            session, row, after, store.overrides_from(row.overrides), policy, " ".join(reasons), cause=envelope
        )

    # ----------------------------------------------------------------- re-evaluation

    async def reassess(
        self,
        session: AsyncSession,
        row: sa.Row[Any],
        facts: domain.Facts,
        overrides: domain.Overrides,
        policy: domain.Policy,
        reason: str,
        *,
        cause: Envelope | None = None,
        actor: str = outgoing.SYSTEM_ACTOR,
        before_events: list[Envelope] | None = None,
    ) -> tuple[domain.Decision, list[Envelope]]:
        """Evaluate again, store the outcome, and announce what changed: IncidentCategorized when
        the effective category changed, IncidentReprioritized when the effective priority did."""
        decision = domain.evaluate(facts, policy)
        now = self.clock.now()
        eff = domain.effective(decision, overrides)
        events = list(before_events or [])
        kw: dict[str, Any] = {"at": now, "actor": actor, "cause": cause, "correlation_id": row.correlation_id}
        if (eff.category, eff.subcategory) != (row.category, row.subcategory):
            payload = outgoing.categorized(facts, decision, overrides.category, reason)
            events.append(outgoing.incident_event(payload, row.incident_id, **kw))
        if eff.priority != row.priority:
            payload2 = outgoing.reprioritized(facts, decision, row.priority, overrides.priority, reason)
            events.append(outgoing.incident_event(payload2, row.incident_id, **kw))
        await store.update_incident(
            session,
            row.incident_id,
            {
                "facts": facts.as_json(),
                "decision": store.decision_json(decision),
                "overrides": store.overrides_json(overrides),
                "category": eff.category,
                "subcategory": eff.subcategory,
                "priority": eff.priority,
                "updated_at": now,
            },
        )
        await self.outbox.add(session, events)
        return decision, events

    # ----------------------------------------------------------------- commands (API)

    async def override(
        self,
        session: AsyncSession,
        incident_id: uuid.UUID,
        *,
        category: str | None,
        subcategory: str | None,
        priority: str | None,
        reason: str,
        actor: str,
    ) -> list[Envelope] | None:
        """A person sets category and/or priority; announced with overridden=true. None: unknown incident.
        Raises domain.ConfigError for an unknown category or a priority outside P1..P5."""
        row = await store.load_incident(session, incident_id, lock=True)
        if row is None:
            return None
        policy = await self.policy(session)
        current = store.overrides_from(row.overrides)
        new = current
        if category is not None:
            policy.tree.check(category, subcategory, "override")
            new = replace(new, category=domain.CategoryOverride(category, subcategory, reason, actor))
        if priority is not None:
            new = replace(new, priority=domain.PriorityOverride(domain.check_priority(priority), reason, actor))
        facts = domain.Facts.from_json(row.facts)
        decision = domain.evaluate(facts, policy)
        eff = domain.effective(decision, new)
        now = self.clock.now()
        kw: dict[str, Any] = {"at": now, "actor": actor, "correlation_id": row.correlation_id}
        events: list[Envelope] = []
        # An override is always announced, even when it confirms the value: who decided matters.
        if new.category is not None and category is not None:
            events.append(
                outgoing.incident_event(outgoing.categorized(facts, decision, new.category, None), incident_id, **kw)
            )
        if new.priority is not None and priority is not None:
            text = f"override by {actor}: {reason}"
            events.append(
                outgoing.incident_event(
                    outgoing.reprioritized(facts, decision, row.priority, new.priority, text), incident_id, **kw
                )
            )
        await store.update_incident(
            session,
            incident_id,
            {
                "decision": store.decision_json(decision),
                "overrides": store.overrides_json(new),
                "category": eff.category,
                "subcategory": eff.subcategory,
                "priority": eff.priority,
                "updated_at": now,
            },
        )
        await self.outbox.add(session, events)
        return events

    async def clear_override(
        self, session: AsyncSession, incident_id: uuid.UUID, fields: set[str], reason: str | None, actor: str
    ) -> list[Envelope] | None:
        """Drop overrides (category and/or priority) and let automation decide again. None: unknown
        incident. Raises LookupError when none of `fields` is overridden."""
        row = await store.load_incident(session, incident_id, lock=True)
        if row is None:
            return None
        current = store.overrides_from(row.overrides)
        cleared = [f for f in sorted(fields) if getattr(current, f) is not None]
        if not cleared:
            raise LookupError(f"no override of {' or '.join(sorted(fields))} is in force")
        now = self.clock.now()
        kw: dict[str, Any] = {"at": now, "actor": actor, "correlation_id": row.correlation_id}
        cleared_events = [
            outgoing.incident_event(TriageOverrideCleared(field=f, reason=reason), incident_id, **kw) for f in cleared
        ]
        remaining = replace(current, **{f: None for f in cleared})
        policy = await self.policy(session)
        text = f"override of {', '.join(cleared)} cleared by {actor}" + (f": {reason}" if reason else "")
        _, events = await self.reassess(
            session,
            row,
            domain.Facts.from_json(row.facts),
            remaining,
            policy,
            text,
            actor=actor,
            before_events=cleared_events,
        )
        return events

    # ----------------------------------------------------------------- configuration

    async def seed_defaults(self, session: AsyncSession) -> list[Envelope]:
        """Put the default configuration in force as version 1 of each kind that has none yet."""
        await store.lock_config(session)
        rows = await store.current_configs(session)
        now = self.clock.now()
        events = []
        for kind, body in domain.default_bodies().items():
            if kind in rows:
                continue
            comment = "defaults"
            if await store.save_config(session, kind, 1, body, outgoing.SYSTEM_ACTOR, comment, now):
                events.append(
                    outgoing.config_event(kind, 1, body, actor=outgoing.SYSTEM_ACTOR, comment=comment, at=now)
                )
        await self.outbox.add(session, events)
        return events

    async def change_config(
        self,
        session: AsyncSession,
        kind: str,
        raw: dict[str, Any],
        actor: str,
        comment: str | None,
        expected_version: int | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Validate and put a new version in force; raises domain.ConfigError, or VersionConflict
        when `expected_version` is no longer the version in force (nothing written either way)."""
        # Serialised: two admins saving at once get consecutive versions, never the same one.
        await store.lock_config(session)
        rows = await store.current_configs(session)
        in_force = rows[kind].version if kind in rows else 1
        if expected_version is not None and expected_version != in_force:
            raise VersionConflict(
                f"field 'expected_version': {kind} version {in_force} is in force, not {expected_version}; "
                f"it was changed by {rows[kind].actor if kind in rows else 'nobody'} meanwhile. Reload and reapply"
            )
        policy = store.policy_from(rows, {}, ())
        version = in_force + 1
        body: dict[str, Any]
        if kind == "categories":
            tree = domain.build_tree(version, raw["categories"], raw.get("fallback"))
            domain.rules_using(policy.rule_set, tree)
            body = tree.as_json()
        elif kind == "rules":
            rule_set = domain.build_rules(version, domain.parse_rules(raw["rules"]), policy.tree)
            body = {"rules": rule_set.as_json()}
        else:
            body = {"matrix": domain.build_matrix(version, raw["matrix"]).as_json()}
        now = self.clock.now()
        await store.save_config(session, kind, version, body, actor, comment, now)
        await self.outbox.add(
            session, [outgoing.config_event(kind, version, body, actor=actor, comment=comment, at=now)]
        )
        return version, body
