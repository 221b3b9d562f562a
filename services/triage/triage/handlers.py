"""Triage's write side: the stage that runs the pure decisions of decider.py over whole consumer
batches and over commands (one load and one save per unit of work, the policy from a cache), and
configuration changes. Every write goes through a unit of work, which stages the events in the
outbox of the same transaction and wakes the relay once it commits."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.bus.consumer import ConsumerSpec
from opsledger.bus.outbox import Outbox
from opsledger.clock import Clock
from opsledger.events import Envelope, Stream
from opsledger.stage import Command, Stage
from opsledger.uow import UnitOfWork, joined
from triage import decider, domain, outgoing, store
from triage.domain import Policy, TriageState
from triage.policy_cache import PolicyCache
from triage.settings import Settings


class VersionConflict(Exception):
    """A configuration change was made from a version that is no longer in force."""


class Triage:
    """Triage's write side; one per service instance."""

    def __init__(self, settings: Settings, outbox: Outbox, clock: Clock) -> None:
        self.settings = settings
        self.outbox = outbox
        self.clock = clock
        self.policies = PolicyCache(settings.service_criticality, tuple(settings.impact_count_thresholds))
        # Triage's events carry the correlation id of the alert or report that opened the incident
        # (a correlated alert or a reporter's update arrives under a request of its own).
        self.stage: Stage[TriageState, Policy] = Stage(
            outgoing.PRODUCER,
            decider.decider,
            save=self._save,
            read=self._read,
            system_actor=outgoing.SYSTEM_ACTOR,
            correlation=lambda state: state.correlation_id,
        )

    def consumer(self) -> ConsumerSpec:
        """The incidents stream, subscribed to exactly the event types the decider reacts to."""
        return self.stage.consumer("incidents", [self.settings.topic(Stream.INCIDENTS)], self.outbox, self.clock)

    async def _save(
        self, uow: UnitOfWork, changed: dict[uuid.UUID, TriageState], loaded: Mapping[uuid.UUID, TriageState]
    ) -> None:
        await store.save_states(uow.session, changed, uow.now)

    async def _read(self, uow: UnitOfWork, ids: Collection[uuid.UUID]) -> tuple[dict[uuid.UUID, TriageState], Policy]:
        """The incidents (locked) and the policy in force: the versions come with the incidents."""
        states, versions = await store.load_states_and_versions(uow.session, ids)
        return states, await self.policies.current(uow.session, versions)

    async def policy(self, session: AsyncSession) -> Policy:
        """The policy in force (compiled once per configuration version)."""
        return await self.policies.current(session)

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
        command = decider.override(
            category=category, subcategory=subcategory, priority=priority, reason=reason, actor=actor
        )
        return await self._execute(session, incident_id, command, actor)

    async def clear_override(
        self, session: AsyncSession, incident_id: uuid.UUID, fields: set[str], reason: str | None, actor: str
    ) -> list[Envelope] | None:
        """Drop overrides (category and/or priority) and let automation decide again. None: unknown
        incident. Raises LookupError when none of `fields` is overridden."""
        return await self._execute(session, incident_id, decider.clear_override(fields, reason, actor), actor)

    async def _execute(
        self, session: AsyncSession, incident_id: uuid.UUID, command: Command[TriageState, Policy], actor: str
    ) -> list[Envelope] | None:
        try:
            async with joined(session, self.outbox, self.clock.now()) as uow:
                _, events = await self.stage.execute(uow, incident_id, command, actor=actor)
        except decider.NotTriaged:
            return None
        return events

    # ----------------------------------------------------------------- configuration

    async def seed_defaults(self, uow: UnitOfWork) -> list[Envelope]:
        """Put the default configuration in force as version 1 of each kind that has none yet."""
        await store.lock_config(uow.session)
        rows = await store.current_configs(uow.session)
        events = []
        for kind, body in domain.default_bodies().items():
            if kind in rows:
                continue
            comment = "defaults"
            if await store.save_config(uow.session, kind, 1, body, outgoing.SYSTEM_ACTOR, comment, uow.now):
                events.append(
                    outgoing.config_event(kind, 1, body, actor=outgoing.SYSTEM_ACTOR, comment=comment, at=uow.now)
                )
        uow.emit(*events)
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
        async with joined(session, self.outbox, self.clock.now()) as uow:
            # Serialised: two admins saving at once get consecutive versions, never the same one.
            await store.lock_config(uow.session)
            rows = await store.current_configs(uow.session)
            in_force = rows[kind].version if kind in rows else 1
            if expected_version is not None and expected_version != in_force:
                raise VersionConflict(
                    f"field 'expected_version': {kind} version {in_force} is in force, not {expected_version}; "
                    f"it was changed by {rows[kind].actor if kind in rows else 'nobody'} meanwhile. Reload and reapply"
                )
            # The versions in force (committed): the new one must fit them.
            policy = self.policies.of(rows)
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
            await store.save_config(uow.session, kind, version, body, actor, comment, uow.now)
            uow.emit(outgoing.config_event(kind, version, body, actor=actor, comment=comment, at=uow.now))
        return version, body
