"""The assignment configuration in force (teams, on-call schedules, escalation policies, routing),
its validation, and the pure choices made under it: which team an incident goes to, and which
person a tier of a policy names at an instant. No I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from assignment import oncall
from opsledger.events.assignment import (
    AssigneeChoice,
    EscalationPolicyChanged,
    EscalationTargetKind,
    EscalationTier,
    OnCallScheduleChanged,
    RotationKind,
    RoutingRule,
    RoutingRulesChanged,
    TeamChanged,
)
from opsledger.events.common import PersonRef
from opsledger.events.registry import EventPayload

KINDS = ("team", "schedule", "policy", "routing")
ROUTING_ID = "routing"  # the routing rules are one object


class ConfigError(ValueError):
    """A configuration that cannot be put in force; `where` is the field at fault (`body.…`)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"field '{where}': {message}")
        self.where, self.message = where, message


class UnknownReference(ConfigError):
    """A configuration names a team, schedule or policy that does not exist."""


@dataclass(frozen=True)
class Config:
    """Every configuration object in force, by id."""

    teams: Mapping[str, TeamChanged] = field(default_factory=dict)
    schedules: Mapping[str, OnCallScheduleChanged] = field(default_factory=dict)
    policies: Mapping[str, EscalationPolicyChanged] = field(default_factory=dict)
    routing: RoutingRulesChanged | None = None


MODELS: dict[str, type[EventPayload]] = {
    "team": TeamChanged,
    "schedule": OnCallScheduleChanged,
    "policy": EscalationPolicyChanged,
    "routing": RoutingRulesChanged,
}
ID_FIELDS = {"team": "team_id", "schedule": "schedule_id", "policy": "policy_id"}


def event_of(kind: str, object_id: str, version: int, body: Mapping[str, Any], comment: str | None) -> EventPayload:
    """The configuration event (also the object in force) of a stored body."""
    fields: dict[str, Any] = {**body, "version": version, "comment": comment}
    if kind in ID_FIELDS:
        fields[ID_FIELDS[kind]] = object_id
    return MODELS[kind].model_validate(fields)


def config_from(objects: Mapping[tuple[str, str], EventPayload]) -> Config:
    """The configuration of these objects ((kind, id) -> event)."""
    teams: dict[str, TeamChanged] = {}
    schedules: dict[str, OnCallScheduleChanged] = {}
    policies: dict[str, EscalationPolicyChanged] = {}
    routing: RoutingRulesChanged | None = None
    for (_, object_id), obj in objects.items():
        if isinstance(obj, TeamChanged):
            teams[object_id] = obj
        elif isinstance(obj, OnCallScheduleChanged):
            schedules[object_id] = obj
        elif isinstance(obj, EscalationPolicyChanged):
            policies[object_id] = obj
        elif isinstance(obj, RoutingRulesChanged):
            routing = obj
    return Config(teams, schedules, policies, routing)


# --------------------------------------------------------------------------- validation


def _aware(value: datetime, where: str) -> None:
    if value.tzinfo is None:
        raise ConfigError(where, "give a time zone (e.g. 2026-11-30T09:00:00Z)")


def check(kind: str, obj: EventPayload, config: Config) -> None:
    """Raise ConfigError when `obj` cannot be put in force beside the rest of `config`."""
    if isinstance(obj, TeamChanged):
        check_team(obj, config)
    elif isinstance(obj, OnCallScheduleChanged):
        check_schedule(obj)
    elif isinstance(obj, EscalationPolicyChanged):
        check_policy(obj, config)
    elif isinstance(obj, RoutingRulesChanged):
        check_routing(obj, config)


def check_team(team: TeamChanged, config: Config) -> None:
    seen: set[str] = set()
    for i, member in enumerate(team.members):
        if member.person.sub in seen:
            raise ConfigError(f"body.members.{i}.person.sub", f"{member.person.sub!r} is a member already")
        seen.add(member.person.sub)
    if team.escalation_policy_id is not None and team.escalation_policy_id not in config.policies:
        raise UnknownReference("body.escalation_policy_id", f"no escalation policy {team.escalation_policy_id!r}")


def check_schedule(schedule: OnCallScheduleChanged) -> None:
    try:
        ZoneInfo(schedule.time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError("body.time_zone", f"unknown IANA time zone {schedule.time_zone!r}") from exc
    for i, layer in enumerate(schedule.layers):
        where = f"body.layers.{i}"
        _aware(layer.starts_at, f"{where}.starts_at")
        if layer.time_zone is not None:
            try:
                ZoneInfo(layer.time_zone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ConfigError(f"{where}.time_zone", f"unknown IANA time zone {layer.time_zone!r}") from exc
        if layer.rotation == RotationKind.HOURLY and layer.every_hours is None:
            raise ConfigError(f"{where}.every_hours", "an hourly rotation says every how many hours it hands off")
        for j, r in enumerate(layer.restrictions):
            if len(set(r.days)) != len(r.days):
                raise ConfigError(f"{where}.restrictions.{j}.days", "a day is listed twice")
    for i, o in enumerate(schedule.overrides):
        _aware(o.starts_at, f"body.overrides.{i}.starts_at")
        _aware(o.ends_at, f"body.overrides.{i}.ends_at")
        if o.ends_at <= o.starts_at:
            raise ConfigError(f"body.overrides.{i}.ends_at", "an override ends after it starts")


def check_policy(policy: EscalationPolicyChanged, config: Config) -> None:
    for i, tier in enumerate(policy.tiers):
        for j, target in enumerate(tier.targets):
            where = f"body.tiers.{i}.targets.{j}"
            if target.kind == EscalationTargetKind.SCHEDULE:
                if target.schedule_id is None:
                    raise ConfigError(f"{where}.schedule_id", "a schedule target names its schedule")
                if target.schedule_id not in config.schedules:
                    raise UnknownReference(f"{where}.schedule_id", f"no schedule {target.schedule_id!r}")
            elif target.kind == EscalationTargetKind.PERSON and target.person is None:
                raise ConfigError(f"{where}.person", "a person target names the person")


def check_routing(routing: RoutingRulesChanged, config: Config) -> None:
    seen: set[str] = set()
    for i, rule in enumerate(routing.rules):
        where = f"body.rules.{i}"
        if rule.rule_id in seen:
            raise ConfigError(f"{where}.rule_id", f"rule id {rule.rule_id!r} is used twice")
        seen.add(rule.rule_id)
        if rule.team_id not in config.teams:
            raise UnknownReference(f"{where}.team_id", f"no team {rule.team_id!r}")
        if rule.escalation_policy_id is not None and rule.escalation_policy_id not in config.policies:
            message = f"no escalation policy {rule.escalation_policy_id!r}"
            raise UnknownReference(f"{where}.escalation_policy_id", message)
    if routing.default_team_id is not None and routing.default_team_id not in config.teams:
        raise UnknownReference("body.default_team_id", f"no team {routing.default_team_id!r}")


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class Facts:
    """What routing looks at."""

    category: str | None = None
    subcategory: str | None = None
    service: str | None = None
    environment: str | None = None
    priority: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    team_id: str
    policy_id: str | None
    rule_id: str | None  # None: the default team
    reason: str


def _matches(rule: RoutingRule, facts: Facts) -> list[str] | None:
    """What matched (for the reason), or None when the rule does not match."""
    m = rule.match
    said: list[str] = []
    for name, wanted, have in (
        ("category", m.categories, facts.category),
        ("subcategory", m.subcategories, facts.subcategory),
        ("service", m.services, facts.service),
        ("environment", m.environments, facts.environment),
        ("priority", m.priorities, facts.priority),
    ):
        if wanted:
            if have not in wanted:
                return None
            said.append(f"{name} {have}")
    for key, value in m.labels.items():
        if facts.labels.get(key) != value:
            return None
        said.append(f"label {key}={value}")
    return said


def route(config: Config, facts: Facts) -> Route | None:
    """The first matching rule's team (and policy), else the default team; None: nowhere to go."""
    routing = config.routing
    if routing is None:
        return None
    for rule in routing.rules:
        matched = _matches(rule, facts)
        if matched is None:
            continue
        team = config.teams.get(rule.team_id)
        policy = rule.escalation_policy_id or (team.escalation_policy_id if team else None)
        label = f"routing rule {rule.rule_id}" + (f" ({rule.name})" if rule.name else "")
        what = ", ".join(matched) if matched else "matches every incident"
        return Route(rule.team_id, policy, rule.rule_id, f"{label}: {what}")
    if routing.default_team_id is None:
        return None
    team = config.teams.get(routing.default_team_id)
    policy = team.escalation_policy_id if team else None
    return Route(routing.default_team_id, policy, None, "no routing rule matched: the default team")


# --------------------------------------------------------------------------- choosing a person


@dataclass(frozen=True)
class Load:
    """How busy people are: open incidents assigned to each, and when each was last assigned.
    Read once per unit of work, then kept current as its decisions assign (see domain.Context)."""

    open_incidents: dict[str, int] = field(default_factory=dict)
    last_assigned: dict[str, datetime] = field(default_factory=dict)
    open_tasks: dict[str, int] = field(default_factory=dict)

    def moved(self, before: str | None, after: str | None, at: datetime | None) -> None:
        """An open incident went from `before` to `after` (None: nobody, or not open)."""
        if before is not None:
            self.open_incidents[before] = max(0, self.open_incidents.get(before, 0) - 1)
        if after is not None:
            self.open_incidents[after] = self.open_incidents.get(after, 0) + 1
            if at is not None:
                self.last_assigned[after] = at


@dataclass(frozen=True)
class Choice:
    person: PersonRef | None
    chosen_by: AssigneeChoice
    reason: str


def least_loaded(
    members: Sequence[PersonRef],
    load: Load,
    team_name: str,
    what: str = "open incidents",
    open_counts: Mapping[str, int] | None = None,
) -> Choice:
    """The member with the fewest open incidents (or `open_counts` of `what`); among equals, the one
    assigned longest ago (never first, then in member order): a round robin over the least loaded."""
    if not members:
        return Choice(None, AssigneeChoice.NOBODY, f"team {team_name} has nobody to assign")
    held = load.open_incidents if open_counts is None else open_counts
    counts = [held.get(m.sub, 0) for m in members]
    fewest = min(counts)
    tied = [(i, m) for i, (m, c) in enumerate(zip(members, counts, strict=True)) if c == fewest]
    if len(tied) == 1:
        person = tied[0][1]
        return Choice(
            person,
            AssigneeChoice.LEAST_LOADED,
            f"{_name(person)} has the fewest {what} in team {team_name} ({fewest})",
        )
    never = datetime.min.replace(tzinfo=None)

    def order(item: tuple[int, PersonRef]) -> tuple[bool, datetime, int]:
        last = load.last_assigned.get(item[1].sub)
        return (last is not None, last.replace(tzinfo=None) if last is not None else never, item[0])

    person = min(tied, key=order)[1]
    return Choice(
        person,
        AssigneeChoice.ROUND_ROBIN,
        f"round robin among the {len(tied)} least loaded of team {team_name} ({fewest} {what} each): "
        f"{_name(person)} was assigned longest ago",
    )


def _name(person: PersonRef) -> str:
    return person.name or person.sub


def _known(person: PersonRef, team: TeamChanged | None) -> PersonRef:
    """The person with the name and email the team knows, when the reference lacks them."""
    if team is not None and person.name is None:
        for m in team.members:
            if m.person.sub == person.sub:
                return m.person
    return person


def choose(
    config: Config,
    team: TeamChanged,
    policy: EscalationPolicyChanged | None,
    tier_index: int | None,
    at: datetime,
    load: Load,
) -> Choice:
    """The person a tier names at `at` (its first target that names somebody), else the team's
    least loaded member."""
    tier: EscalationTier | None = None
    if policy is not None and tier_index is not None and tier_index < len(policy.tiers):
        tier = policy.tiers[tier_index]
    missing: list[str] = []
    if tier is not None and policy is not None:
        for target in tier.targets:
            if target.kind == EscalationTargetKind.SCHEDULE:
                schedule = config.schedules.get(target.schedule_id or "")
                if schedule is None:
                    missing.append(f"schedule {target.schedule_id} is unknown")
                    continue
                now = oncall.on_call(schedule, at)
                if now is None:
                    missing.append(f"nobody is on call in schedule {schedule.name}")
                    continue
                via = " (override)" if now.layer is None else ""
                return Choice(
                    _known(now.person, team),
                    AssigneeChoice.ON_CALL,
                    f"on call in schedule {schedule.name}{via} {oncall.describe_until(now.until)}",
                )
            if target.kind == EscalationTargetKind.PERSON and target.person is not None:
                return Choice(
                    _known(target.person, team),
                    AssigneeChoice.NAMED_PERSON,
                    f"named in tier {tier_index + 1 if tier_index is not None else 1} of policy {policy.name}",
                )
            if target.kind == EscalationTargetKind.TEAM_MANAGER:
                if team.manager is None:
                    missing.append(f"team {team.name} has no manager")
                    continue
                return Choice(team.manager, AssigneeChoice.TEAM_MANAGER, f"manager of team {team.name}")
    fallback = least_loaded([m.person for m in team.members], load, team.name)
    if missing:
        return Choice(fallback.person, fallback.chosen_by, "; ".join(missing) + "; " + fallback.reason)
    return fallback


def next_tier(policy: EscalationPolicyChanged, tier: int, repeat: int) -> tuple[int, int] | None:
    """The tier (and pass) after this one; None at the last tier of the last pass."""
    if tier + 1 < len(policy.tiers):
        return tier + 1, repeat
    if repeat < policy.repeat:
        return 0, repeat + 1
    return None
