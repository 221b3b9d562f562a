"""Analytics on a small known data set, checked against figures computed here, independently of
the SQL: from the incident specs below with Python's statistics module."""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from opsledger.events import Envelope
from reporting import analytics
from reporting.projector import Projector

from . import factory as f

pytestmark = pytest.mark.integration
Sessions = async_sessionmaker[AsyncSession]
DAY = 24 * 60  # minutes


@dataclass
class Spec:
    """One incident: when it was logged (minutes after T0), how it was triaged, and what happened
    after (minutes after its logging; None: never)."""

    name: str
    minute: float
    priority: str
    category: str
    team: str
    service: str
    source: str = "alertmanager"
    alerts: int = 1
    ack: float | None = None
    resolve: float | None = None  # the last resolution
    first_resolve: float | None = None  # set: resolved here, reopened, resolved again at `resolve`
    closed: float | None = None
    escalations: int = 0
    sla: list[tuple[str, str]] = field(default_factory=list)  # (SlaWarning | SlaBreached, target)
    incident_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def events(self) -> list[Envelope]:
        i, t = self.incident_id, self.minute
        first = f.logged(i, t, service=self.service, source=self.source)
        out = [first, f.categorized(first, t + 0.1, self.category), f.prioritized(first, t + 0.2, self.priority)]
        out += [f.correlated(first, t + 0.3 + n / 100, n) for n in range(2, self.alerts + 1)]
        out.append(f.assigned(i, t + 0.5, self.team, f"{self.team}-1"))
        later: list[tuple[float, Envelope]] = []
        if self.ack is not None:
            later.append((self.ack, f.acknowledged(i, t + self.ack, f"{self.team}-1")))
        for n in range(self.escalations):
            later.append((0.6 + n / 10, f.escalated(i, t + 0.6 + n / 10, to_tier=n + 1)))
        for kind, target in self.sla:
            later.append((0.9, f.sla(kind, i, t + 0.9, target)))
        if self.first_resolve is not None:
            later.append((self.first_resolve, f.resolved(i, t + self.first_resolve)))
            later.append(
                (
                    self.first_resolve + 1,
                    f.reopened(i, t + self.first_resolve + 1),
                )
            )
        if self.resolve is not None:
            later.append((self.resolve, f.resolved(i, t + self.resolve)))
        if self.closed is not None:
            later.append((self.closed, f.closed(i, t + self.closed)))
        return out + [env for _, env in sorted(later, key=lambda pair: pair[0])]


SPECS = [
    Spec("a", 0, "P1", "Database", "dba", "payments-db", alerts=4, ack=2, resolve=30, closed=40,
         sla=[("SlaWarning", "resolution")]),
    Spec("b", 10, "P1", "Database", "dba", "payments-db", alerts=2, ack=6, resolve=95, first_resolve=20,
         escalations=1, sla=[("SlaWarning", "resolution"), ("SlaBreached", "resolution")]),
    Spec("c", 20, "P2", "Application", "web", "checkout", ack=11, resolve=50,
         sla=[("SlaBreached", "response")]),
    Spec("d", 30, "P2", "Application", "web", "checkout", source="pagerduty", alerts=3, ack=1),
    Spec("e", 40, "P3", "Network", "net", "edge", ack=35, resolve=240, escalations=2),
    Spec("f", 50, "P3", "Application", "web", "search", source="pagerduty"),
    Spec("g", DAY + 5, "P1", "Network", "net", "edge", alerts=7, ack=4, resolve=61,
         sla=[("SlaWarning", "response"), ("SlaBreached", "resolution")]),
    Spec("h", DAY + 15, "P4", "Application", "web", "checkout", closed=500),  # closed, never "resolved"
    Spec("i", DAY + 25, "P1", "Database", "dba", "payments-db", ack=3),
]  # fmt: skip
NOW = f.at(3 * DAY)


def bucket_of(spec: Spec) -> str:
    return (f.at(spec.minute).replace(hour=0, minute=0, second=0, microsecond=0)).strftime("%Y-%m-%dT%H:%M:%SZ")


DIMENSIONS: dict[str, Callable[[Spec], str]] = {
    "priority": lambda s: s.priority,
    "category": lambda s: s.category,
    "team": lambda s: s.team,
    "service": lambda s: s.service,
    "source": lambda s: s.source,
    "bucket": bucket_of,
    "all": lambda s: "all",
}


def groups(key: Callable[[Spec], str], specs: list[Spec]) -> dict[str, list[Spec]]:
    out: dict[str, list[Spec]] = {}
    for spec in specs:
        out.setdefault(key(spec), []).append(spec)
    return out


def p90(values: list[float]) -> float:
    # PostgreSQL's percentile_cont interpolates linearly between the closest ranks: the
    # "inclusive" method of statistics.quantiles.
    return values[0] if len(values) == 1 else statistics.quantiles(values, n=10, method="inclusive")[8]


def ids(specs: list[Spec]) -> list[str]:
    return sorted(str(s.incident_id) for s in specs)


@pytest.fixture
async def projected(reporting_db: Sessions) -> Sessions:
    lives = [s.events() for s in SPECS]
    # Interleave the lifecycles the way live traffic does; each incident keeps its own order.
    events = [env for step in range(max(map(len, lives))) for life in lives if step < len(life) for env in [life[step]]]
    async with reporting_db() as session, session.begin():
        await Projector(1)(session, f.deliveries(events))
    return reporting_db


@pytest.mark.parametrize("by", list(DIMENSIONS))
@pytest.mark.parametrize("kind", ["mtta", "mttr"])
async def test_mtta_and_mttr_mean_median_p90_per_dimension(projected: Sessions, kind: str, by: str) -> None:
    def minutes(s: Spec) -> float | None:
        if kind == "mtta":
            return s.ack
        return s.resolve if s.resolve is not None else s.closed  # closed without a resolution: closed

    measured = [s for s in SPECS if minutes(s) is not None]
    expected = {}
    for key, members in groups(DIMENSIONS[by], measured).items():
        seconds = [minutes(s) * 60 for s in members]  # type: ignore[operator]
        expected[key] = (len(members), statistics.mean(seconds), statistics.median(seconds), p90(seconds), ids(members))
    async with projected() as session:
        got = await analytics.durations(session, 1, kind, by, "day", None, None)
    assert {
        g["key"]: (g["count"], g["mean_seconds"], g["median_seconds"], g["p90_seconds"], sorted(g["incident_ids"]))
        for g in got
    } == {k: (n, pytest.approx(m, abs=1e-3), pytest.approx(md, abs=1e-3), pytest.approx(p, abs=1e-3), i)
          for k, (n, m, md, p, i) in expected.items()}  # fmt: skip


async def test_volume_rates_and_noisiest_sources(projected: Sessions) -> None:
    async with projected() as session:
        volume = await analytics.volume(session, 1, "service", "day", None, None)
        rates = await analytics.rates(session, 1, "team", "day", None, None)
        noisy = await analytics.noisiest_sources(session, 1, 2, None, None)
        days = await analytics.volume(session, 1, "bucket", "day", None, None)
    assert {g["key"]: (g["incidents"], g["alerts"], sorted(g["incident_ids"])) for g in volume} == {
        k: (len(m), sum(s.alerts for s in m), ids(m)) for k, m in groups(lambda s: s.service, SPECS).items()
    }
    expected_rates = {}
    for team, members in groups(lambda s: s.team, SPECS).items():
        resolved = [s for s in members if s.resolve is not None or s.closed is not None]
        reopened = [s for s in members if s.first_resolve is not None]
        escalated = [s for s in members if s.escalations]
        expected_rates[team] = (
            len(members), len(resolved),
            round(len(reopened) / len(resolved), 4) if resolved else None,
            round(len(escalated) / len(members), 4), ids(reopened), ids(escalated),
        )  # fmt: skip
    assert {
        g["key"]: (g["incidents"], g["resolved"], g["reopen_rate"], g["escalation_rate"],
                   sorted(g["reopened_incident_ids"]), sorted(g["escalated_incident_ids"]))
        for g in rates
    } == expected_rates  # fmt: skip
    by_source_service = groups(lambda s: f"{s.source}/{s.service}", SPECS)
    ranked = sorted(by_source_service.items(), key=lambda kv: -sum(s.alerts for s in kv[1]))[:2]
    assert [(f"{g['source']}/{g['service']}", g["alerts"], sorted(g["incident_ids"])) for g in noisy] == [
        (k, sum(s.alerts for s in m), ids(m)) for k, m in ranked
    ]
    # Each day's group links to exactly that day's incidents.
    assert [(g["key"], g["incidents"], g["incidents_url"]) for g in days] == [
        (bucket_of(m[0]), len(m),
         f"/v1/incidents?from={bucket_of(m[0])[:10]}T00%3A00%3A00%2B00%3A00"
         f"&to={(f.at(m[0].minute) + timedelta(days=1)).date()}T00%3A00%3A00%2B00%3A00")
        for m in groups(bucket_of, SPECS).values()
    ]  # fmt: skip


async def test_sla_compliance_per_target(projected: Sessions) -> None:
    async with projected() as session:
        got = await analytics.sla_compliance(session, 1, "priority", "day", None, None)
    targets = sorted({t for s in SPECS for _, t in s.sla})
    expected: dict[str, Any] = {}
    for key, members in groups(lambda s: s.priority, SPECS).items():
        breached_any = [s for s in members if any(k == "SlaBreached" for k, _ in s.sla)]
        per = []
        for target in targets:
            hit = [s for s in members if ("SlaBreached", target) in s.sla]
            warned = [s for s in members if ("SlaWarning", target) in s.sla]
            per.append((target, len(warned), len(hit), round(1 - len(hit) / len(members), 4), ids(hit)))
        expected[key] = (len(members), len(breached_any), round(1 - len(breached_any) / len(members), 4), per)
    assert {
        g["key"]: (g["incidents"], g["breached"], g["compliance"],
                   [(t["target"], t["warned"], t["breached"], t["compliance"], sorted(t["breached_incident_ids"]))
                    for t in g["targets"]])
        for g in got
    } == expected  # fmt: skip


async def test_backlog_and_its_age(projected: Sessions) -> None:
    async with projected() as session:
        got = await analytics.backlog(session, 1, "priority", "day", NOW)
    expected = {}
    for key, members in groups(lambda s: s.priority, SPECS).items():
        still_open = [s for s in members if s.resolve is None and s.closed is None]
        if still_open:
            ages = [(NOW - f.at(s.minute)).total_seconds() for s in still_open]
            expected[key] = (len(still_open), statistics.mean(ages), statistics.median(ages), max(ages),
                             ids(still_open))  # fmt: skip
    assert {
        g["key"]: (g["open"], g["mean_age_seconds"], g["median_age_seconds"], g["oldest_age_seconds"],
                   sorted(g["incident_ids"]))
        for g in got
    } == {k: (n, pytest.approx(m, abs=1e-3), pytest.approx(md, abs=1e-3), pytest.approx(o, abs=1e-3), i)
          for k, (n, m, md, o, i) in expected.items()}  # fmt: skip


async def test_id_lists_are_cut_in_the_database_and_flagged(
    projected: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(analytics, "MAX_IDS", 2)
    async with projected() as session:
        (everything,) = await analytics.volume(session, 1, "all", "day", None, None)
    assert everything["incidents"] == len(SPECS)
    assert len(everything["incident_ids"]) == 2 and everything["incident_ids_truncated"]
    first_two = sorted(SPECS, key=lambda s: s.minute)[:2]
    assert everything["incident_ids"] == [str(s.incident_id) for s in first_two], "ordered by logged_at"
