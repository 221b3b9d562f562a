"""The reporting service in-process against the real Kafka and PostgreSQL: events on the log
become incidents, timelines, analytics; a rebuild while live ends equal to the live model."""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from opsledger.events import Envelope, Stream
from opsledger.testing import TestInfra, eventually, running_app, session_tokens
from reporting.app import build
from reporting.settings import Settings

from . import factory as f

pytestmark = pytest.mark.integration
TOKENS = session_tokens()
ANALYST = TOKENS.headers("test-analyst", "analyst")
ADMIN = TOKENS.headers("test-admin", "admin")


@dataclass
class Service:
    client: httpx.AsyncClient
    settings: Settings
    engine: AsyncEngine

    async def publish(self, envelopes: list[Envelope], stream: Stream = Stream.INCIDENTS) -> dict[tuple[str, int], int]:
        """Publish in order; the offset of the last message written to each partition."""
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, linger_ms=5)
        await producer.start()
        last: dict[tuple[str, int], int] = {}
        try:
            futures = [await producer.send(self.settings.topic(stream), e.to_bytes(), key=e.key) for e in envelopes]
            for fut in futures:
                meta = await fut
                last[(meta.topic, meta.partition)] = max(meta.offset, last.get((meta.topic, meta.partition), -1))
        finally:
            await producer.stop()
        return last

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params, headers=ANALYST)
        assert response.status_code == 200, response.text
        return response.json()


def make_settings(infra: TestInfra, url: str, topic_prefix: str, **overrides: Any) -> Settings:
    return Settings(
        database_url=url,
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=3,
        **TOKENS.settings(),
        rebuild_switch_poll_seconds=0.1,
        **overrides,
    )


@pytest.fixture
async def service(infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str) -> AsyncIterator[Service]:
    url = await make_database()
    settings = make_settings(infra, url, topic_prefix)
    engine = create_async_engine(url)
    async with running_app(build(settings)) as client:
        yield Service(client, settings, engine)
    await engine.dispose()


def world() -> tuple[list[Envelope], dict[str, uuid.UUID]]:
    """Three full lifecycles plus a pagerduty incident on another service, still open."""
    ids = {name: uuid.uuid4() for name in ("a", "b", "c", "pd")}
    events: list[Envelope] = []
    for name in ("a", "b", "c"):
        events += f.lifecycle(ids[name])
    pd = f.logged(ids["pd"], 10, source="pagerduty", service="billing-db", dedup_key="pd-key-1")
    events += [pd, f.categorized(pd, 10.1, "Database"), f.prioritized(pd, 10.2, "P2")]
    return events, ids


async def wait_applied(service: Service, count: int, **filters: Any) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = (await service.get("/v1/incidents", **filters))["items"]
        return items if len(items) == count and all(i["event_count"] > 1 for i in items) else None

    return await eventually(check, timeout=30, what=f"{count} incidents projected")


async def test_incidents_filters_sorting_pagination_csv_and_detail(service: Service) -> None:
    events, ids = world()
    await service.publish(events)
    await eventually(lambda: _closed_count(service, 3), timeout=30, what="three lifecycles projected to the end")
    items = await wait_applied(service, 1, source="pagerduty")
    assert items[0]["incident_id"] == str(ids["pd"]) and items[0]["priority"] == "P2"
    assert items[0]["category"] == "Database" and items[0]["service"] == "billing-db"

    closed = (await service.get("/v1/incidents", status="closed", priority="P1", team="payments-l2"))["items"]
    assert sorted(i["incident_id"] for i in closed) == sorted(str(ids[n]) for n in "abc")
    assert (await service.get("/v1/incidents", dedup_key="pd-key-1"))["items"][0]["incident_id"] == str(ids["pd"])
    assert (await service.get("/v1/incidents", status="open,acknowledged"))["items"][0]["source"] == "pagerduty"
    assert (await service.get("/v1/incidents", category="Network"))["items"] == []

    # Pages of 1 walk all four incidents once, in sort order.
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1, "sort": "logged_at"}
        if cursor:
            params["cursor"] = cursor
        page = await service.get("/v1/incidents", **params)
        seen += [i["incident_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 4 and len(set(seen)) == 4 and seen[-1] == str(ids["pd"])
    # Every sort, both directions: pages of 1 give the same order as one page of all.
    for sort in ("logged_at", "occurred_at", "last_event_at", "priority"):
        for direction in ("", "-"):
            whole = [i["incident_id"] for i in (await service.get("/v1/incidents", sort=direction + sort))["items"]]
            paged, cursor = [], None
            while True:
                page = await service.get(
                    "/v1/incidents", sort=direction + sort, limit=1, **({"cursor": cursor} if cursor else {})
                )
                paged += [i["incident_id"] for i in page["items"]]
                if not (cursor := page["next_cursor"]):
                    break
            assert paged == whole and len(whole) == 4, direction + sort
    by_priority = [i["priority"] for i in (await service.get("/v1/incidents", sort="-priority"))["items"]]
    assert by_priority == ["P2", "P1", "P1", "P1"]

    response = await service.client.get("/v1/incidents", params={"format": "csv"}, headers=ANALYST)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert sorted(r["incident_id"] for r in rows) == sorted(str(i) for i in ids.values())

    detail = await service.get(f"/v1/incidents/{ids['a']}")
    assert (detail["status"], detail["reopen_count"], detail["alert_count"]) == ("closed", 1, 2)
    then = await service.get(f"/v1/incidents/{ids['a']}", as_of=f.at(10).isoformat())
    assert (then["status"], then["priority"], then["assignee"]) == ("acknowledged", "P1", "alice")
    earlier = await service.get("/v1/incidents", as_of=f.at(5).isoformat())
    assert len(earlier["items"]) == 3, "the pagerduty incident was logged at minute 10"


async def _closed_count(service: Service, count: int) -> bool:
    return len((await service.get("/v1/incidents", status="closed"))["items"]) == count


async def test_timeline_names_every_event_and_its_producer(service: Service) -> None:
    incident = uuid.uuid4()
    events = f.lifecycle(incident)
    await service.publish(events)

    async def timeline() -> list[dict[str, Any]] | None:
        response = await service.client.get(f"/v1/incidents/{incident}/timeline", headers=ANALYST)
        got: list[dict[str, Any]] = response.json()["events"] if response.status_code == 200 else []
        return got if len(got) == len(events) else None

    entries = await eventually(timeline, timeout=30, what="timeline complete")
    assert [(e["event_type"], e["producer"], e["actor"]) for e in entries] == [
        (e.event_type, e.producer, e.actor) for e in events
    ]
    assert entries[2]["causation_id"] == str(events[0].event_id)
    assert {e["position"]["topic"] for e in entries} == {service.settings.topic(Stream.INCIDENTS)}


BAD_PARAMETERS = [
    ("/v1/incidents", {"status": "sleeping"}, "status"),
    ("/v1/incidents", {"priority": "P9"}, "priority"),
    ("/v1/incidents", {"from": "yesterday"}, "from"),
    ("/v1/incidents", {"to": "2026-01-01T00:00:00"}, "to"),
    ("/v1/incidents", {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
    ("/v1/incidents", {"as_of": "2026-13-01T00:00:00Z"}, "as_of"),
    ("/v1/incidents", {"sort": "title"}, "sort"),
    ("/v1/incidents", {"cursor": "not-a-cursor"}, "cursor"),
    ("/v1/incidents", {"limit": "0"}, "limit"),
    ("/v1/incidents", {"format": "xml"}, "format"),
    (f"/v1/incidents/{uuid.uuid4()}", {"as_of": "soon"}, "as_of"),
    ("/v1/incidents/not-a-uuid", {}, "incident_id"),
    ("/v1/analytics/mtta", {"by": "colour"}, "by"),
    ("/v1/analytics/volume", {"by": "bucket", "bucket": "fortnight"}, "bucket"),
    ("/v1/analytics/mttr", {"from": "x"}, "from"),
    # Found by hand; each of these answered 500 before.
    ("/v1/incidents", {"cursor": "WzEsMiwzXQ"}, "cursor"),  # [1, 2, 3]
    (
        "/v1/incidents",
        {
            "sort": "-logged_at",
            "cursor": "WyItbG9nZ2VkX2F0IiwxMjMsIjk1YjUyYjU2LTg3YTktNDI4Mi04MDQyLTVjMTA2OTAwZGE0YyJd",
        },
        "cursor",
    ),
    (
        "/v1/incidents",
        {"sort": "priority", "cursor": "WyJwcmlvcml0eSIsMSwiOTViNTJiNTYtODdhOS00MjgyLTgwNDItNWMxMDY5MDBkYTRjIl0"},
        "cursor",
    ),
    ("/v1/incidents", {"as_of": "9999-12-31T23:59:59-14:00"}, "as_of"),
    ("/v1/incidents", {"from": "0001-01-01T00:00:00+01:00"}, "from"),
    ("/v1/analytics/mtta", {"by": "bucket", "from": "0001-01-01T00:00:00+01:00"}, "from"),
    ("/v1/incidents", {"service": "a\x00b"}, "service"),
    ("/v1/incidents", {"sort": "--logged_at"}, "sort"),
    ("/v1/incidents", {"limit": "abc"}, "limit"),
    ("/v1/incidents", {"limit": "1001"}, "limit"),
    ("/v1/analytics/noisiest-sources", {"limit": "0"}, "limit"),
    (f"/v1/incidents/{uuid.uuid4()}/timeline", {"format": "pdf"}, "format"),
]


async def test_bad_parameters_are_4xx_naming_the_parameter(service: Service) -> None:
    """One service for the whole table (starting one per case would cost seconds each)."""
    for path, params, parameter in BAD_PARAMETERS:
        response = await service.client.get(path, params=params, headers=ANALYST)
        assert response.status_code == 400, (path, params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["status"] == 400 and body["title"] == "Bad Request", body
        fields = [e["field"] for e in body["errors"]]
        assert fields[0] in (f"query.{parameter}", f"path.{parameter}"), (path, params, response.text)


async def test_unknown_incident_is_404_and_tokens_are_required(service: Service) -> None:
    missing = uuid.uuid4()
    for path in (f"/v1/incidents/{missing}", f"/v1/incidents/{missing}/timeline"):
        assert (await service.client.get(path, headers=ANALYST)).status_code == 404
    assert (await service.client.get("/v1/incidents")).status_code == 401
    malformed = await service.client.get("/v1/incidents", headers={"Authorization": "Bearer nope"})
    assert malformed.status_code == 401 and 'error="invalid_token"' in malformed.headers["www-authenticate"]
    assert (await service.client.get("/v1/incidents", headers=ADMIN)).status_code == 200
    responder = TOKENS.headers("test-responder", "responder")
    assert (await service.client.get("/v1/incidents", headers=responder)).status_code == 200
    reporter = await service.client.get("/v1/incidents", headers=TOKENS.headers("test-reporter", "reporter"))
    assert reporter.status_code == 403 and "analyst, responder, manager, admin" in reporter.json()["detail"]
    refused = await service.client.post("/v1/admin/rebuild", headers=ANALYST)
    assert refused.status_code == 403 and "requires one of the roles: admin" in refused.json()["detail"]
    expired = TOKENS.headers("test-admin", "admin", lifetime=timedelta(seconds=-120))
    assert (await service.client.post("/v1/admin/rebuild", headers=expired)).status_code == 401


async def test_analytics_figures_name_the_incidents_behind_them(service: Service) -> None:
    events, ids = world()
    await service.publish(events)
    await eventually(lambda: _closed_count(service, 3), timeout=30, what="lifecycles projected")
    await wait_applied(service, 1, source="pagerduty")
    mtta = (await service.get("/v1/analytics/mtta", by="priority"))["groups"]
    assert mtta == [
        {
            "key": "P1", "count": 3, "mean_seconds": 300.0, "median_seconds": 300.0, "p90_seconds": 300.0,
            "incident_ids": mtta[0]["incident_ids"], "incident_ids_truncated": False,
            "incidents_url": "/v1/incidents?priority=P1",
        }
    ]  # fmt: skip
    assert sorted(mtta[0]["incident_ids"]) == sorted(str(ids[n]) for n in "abc")
    mttr = (await service.get("/v1/analytics/mttr", by="category"))["groups"]
    assert [(g["key"], g["count"], g["mean_seconds"]) for g in mttr] == [("Application", 3, 3600.0)]
    volume = (await service.get("/v1/analytics/volume", by="source"))["groups"]
    assert {g["key"]: (g["incidents"], g["alerts"]) for g in volume} == {"alertmanager": (3, 6), "pagerduty": (1, 1)}
    backlog = (await service.get("/v1/analytics/backlog", by="service"))["groups"]
    assert [(g["key"], g["open"], g["incident_ids"]) for g in backlog] == [("billing-db", 1, [str(ids["pd"])])]
    rates = (await service.get("/v1/analytics/rates"))["groups"][0]
    assert (rates["reopen_rate"], rates["escalation_rate"]) == (1.0, 0.75)
    noisy = (await service.get("/v1/analytics/noisiest-sources", limit=1))["groups"]
    assert [(g["source"], g["alerts"], g["incidents"]) for g in noisy] == [("alertmanager", 6, 3)]
    buckets = (await service.get("/v1/analytics/volume", by="bucket", bucket="day"))["groups"]
    assert [(g["key"], g["incidents"]) for g in buckets] == [("2026-11-01T00:00:00Z", 4)]
    sla = (await service.get("/v1/analytics/sla", by="priority"))["groups"]
    assert {g["key"]: (g["warned"], g["compliance"]) for g in sla} == {"P1": (3, 1.0), "P2": (0, 1.0)}
    assert (await service.client.get("/v1/analytics/nonsense", headers=ANALYST)).status_code == 404


async def test_audit_verify_names_a_row_altered_in_the_database(service: Service) -> None:
    events, _ = world()
    await service.publish(events)
    report = await eventually(lambda: _verified(service, len(events)), timeout=30, what="chain complete")
    assert report["ok"]
    async with service.engine.begin() as conn:
        victim = (
            await conn.execute(
                sa.text("SELECT seq, event_id FROM timeline WHERE seq = 7 AND version = :v"), {"v": report["version"]}
            )
        ).one()
        await conn.execute(
            sa.text("UPDATE timeline SET payload = '{\"forged\": true}' WHERE seq = 7 AND version = :v"),
            {"v": report["version"]},
        )
    broken = await service.get("/v1/audit/verify")
    assert not broken["ok"]
    assert broken["first_mismatch"]["seq"] == 7 and broken["first_mismatch"]["event_id"] == str(victim.event_id)


async def _verified(service: Service, count: int) -> dict[str, Any] | None:
    report: dict[str, Any] = await service.get("/v1/audit/verify")
    return report if report["entries_checked"] == count else None


async def projection_rows(service: Service, version: int) -> dict[str, list[Any]]:
    """Every projection row of `version`, without the version; the timeline without its `seq`
    (the global order interleaves partitions differently on every replay). Each entry's hash and
    link are compared: they chain the entries of one incident, whose order the log fixes."""
    skip = {"version", "seq"}
    out = {}
    async with service.engine.connect() as conn:
        for table in ("incidents", "incident_versions", "timeline", "positions"):
            result = await conn.execute(sa.text(f"SELECT * FROM {table} WHERE version = :v"), {"v": version})
            rows = [tuple((k, v) for k, v in r._mapping.items() if k not in skip) for r in result]
            out[table] = sorted(rows, key=repr)
    return out


async def test_rebuild_while_live_equals_the_live_model_row_for_row(service: Service) -> None:
    events, _ = world()
    await service.publish(events)
    await eventually(lambda: _verified(service, len(events)), timeout=30, what="live model complete")
    live = await projection_rows(service, 1)
    assert len(live["incidents"]) == 4 and len(live["timeline"]) == len(events)

    response = await service.client.post("/v1/admin/rebuild", headers=ADMIN)
    assert response.status_code == 202, response.text
    assert response.json()["rebuild"]["version"] == 2
    # Queries keep answering from the live version meanwhile.
    assert len((await service.get("/v1/incidents"))["items"]) == 4

    async def switched() -> dict[str, Any] | None:
        status: dict[str, Any] = await _admin_get(service, "/v1/admin/rebuild")
        return status if status["rebuild"]["status"] == "switched" else None

    status = await eventually(switched, timeout=30, what="rebuild switched")
    assert status["active_version"] == 2
    assert await projection_rows(service, 2) == live
    assert (await service.get("/v1/audit/verify"))["ok"]

    # The rebuilt version is the live one now: new events land in it.
    extra = f.logged(uuid.uuid4(), 90, source="generic", service="search")
    await service.publish([extra])
    await wait_applied_logged(service, extra)
    assert (await service.client.post("/v1/admin/rebuild", headers=ADMIN)).status_code == 202
    again = await service.client.post("/v1/admin/rebuild", headers=ADMIN)
    assert again.status_code in (202, 409), again.text


async def wait_applied_logged(service: Service, env: Envelope) -> None:
    async def check() -> bool:
        response = await service.client.get(f"/v1/incidents/{env.incident_id}", headers=ANALYST)
        return response.status_code == 200

    await eventually(check, timeout=30, what="new event in the rebuilt version")


async def _admin_get(service: Service, path: str) -> Any:
    response = await service.client.get(path, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


async def test_pages_neither_repeat_nor_skip_while_incidents_arrive(service: Service) -> None:
    """Keyset pagination: incidents logged while a client pages (before, between and after the
    ones it has seen) never make it see an incident twice or miss one that was there."""
    first = [f.logged(uuid.uuid4(), minute) for minute in range(0, 100, 10)]
    await service.publish(first)
    await wait_count(service, len(first))
    seen: list[str] = []
    cursor, extra = None, 0
    while True:
        params: dict[str, Any] = {"limit": 3, "sort": "-logged_at", **({"cursor": cursor} if cursor else {})}
        page = await service.get("/v1/incidents", **params)
        seen += [i["incident_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
        # Between pages: one newer than all, one among those seen, one among those still to come.
        arrivals = [f.logged(uuid.uuid4(), minute) for minute in (500, 85, 5)]
        await service.publish(arrivals)
        extra += len(arrivals)
        await wait_count(service, len(first) + extra)
    assert len(seen) == len(set(seen)), "an incident was listed twice"
    assert {str(e.incident_id) for e in first} <= set(seen), "an incident that was there all along was skipped"


async def wait_count(service: Service, count: int) -> None:
    async def check() -> bool:
        return len((await service.get("/v1/incidents", limit=1000))["items"]) == count

    await eventually(check, timeout=30, what=f"{count} incidents")


async def test_csv_is_quoted_and_safe_to_open_in_a_spreadsheet(service: Service) -> None:
    title = '=HYPERLINK("http://evil.example","click, me")'
    env = f.logged(uuid.uuid4(), 0, title=title, service="+payments")
    await service.publish([env])
    await wait_count(service, 1)
    response = await service.client.get("/v1/incidents", params={"format": "csv"}, headers=ANALYST)
    (row,) = list(csv.DictReader(io.StringIO(response.text)))
    assert row["title"] == "'" + title and row["service"] == "'+payments"
    assert row["incident_id"] == str(env.incident_id) and row["alert_count"] == "1"


def consumed(metrics_text: str, outcome: str, consumer: str = "projection-v1") -> float:
    """The reporting consumer's opsledger_events_consumed_total for `outcome`."""
    pattern = (
        r'^opsledger_events_consumed_total\{consumer="' + consumer + r'",outcome="' + outcome
        + r'",service="reporting"\} (\S+)$'
    )  # fmt: skip
    found = re.search(pattern, metrics_text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_restart_resumes_from_stored_positions_and_absorbs_duplicates(
    infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str
) -> None:
    """Stop the service, re-publish what it already applied (a producer retry after a crash) plus
    new events, and restart it under a fresh consumer group (no committed offsets to lean on):
    it carries on from the positions stored with its rows, and the re-sent copies change nothing."""
    url = await make_database()
    settings = make_settings(infra, url, topic_prefix)
    events, _ = world()
    before, after = events[:20], events[20:]
    async with running_app(build(settings)) as client:
        service = Service(client, settings, create_async_engine(url))
        await service.publish(before)
        await eventually(lambda: _verified(service, len(before)), timeout=30, what="first half applied")
        await service.engine.dispose()
    restarted = settings.model_copy(update={"consumer_group": f"{topic_prefix}.fresh-group"})
    async with running_app(build(restarted)) as client:
        service = Service(client, restarted, create_async_engine(url))
        duplicates_before = consumed((await client.get("/metrics")).text, "duplicate")
        ends = await service.publish(before + after)  # the first half again, at new offsets
        report = await eventually(lambda: _verified(service, len(events)), timeout=30, what="all applied once")
        assert report["ok"]
        await eventually(lambda: _positions_reach(service, ends), timeout=30, what="every copy consumed")
        async with service.engine.connect() as conn:
            stored = {(r.topic, r.partition): r.offset for r in await conn.execute(sa.text("SELECT * FROM positions"))}
            counts = (await conn.execute(sa.text("SELECT count(*), count(DISTINCT event_id) FROM timeline"))).one()
            alert_counts = await conn.execute(sa.text("SELECT alert_count FROM incidents ORDER BY alert_count"))
            assert [r.alert_count for r in alert_counts] == [1, 2, 2, 2], "a re-sent AlertCorrelated counted twice"
        await service.engine.dispose()
        assert stored == ends, "every published message is accounted for in the stored positions"
        assert tuple(counts) == (len(events), len(events))
        duplicates = consumed((await client.get("/metrics")).text, "duplicate") - duplicates_before
        # At least the re-sent copies were recognised (a rebalance can make the consumer read a few
        # records twice more; the positions check in the projector skips those).
        assert duplicates >= len(before)


async def _positions_reach(service: Service, ends: dict[tuple[str, int], int]) -> bool:
    async with service.engine.connect() as conn:
        stored = {(r.topic, r.partition): r.offset for r in await conn.execute(sa.text("SELECT * FROM positions"))}
    return all(stored.get(key, -1) >= offset for key, offset in ends.items())
