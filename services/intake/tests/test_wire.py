"""Wire compatibility and robustness, end to end against the real Kafka and PostgreSQL: bodies as
Alertmanager, Grafana and PagerDuty clients really send them, paths as client libraries build
them, events too large for the log, the correlation id, reports posted with a key, load shedding."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sqlalchemy as sa

from intake import store
from opsledger.db import make_engine
from opsledger.testing import TestInfra, eventually

from .harness import intake, make_settings
from .samples import alertmanager_body, am_alert, generic_alert, grafana_body, pagerduty_event, report

pytestmark = pytest.mark.integration

LONG_URL = "http://prometheus:9090/graph?g0.expr=" + "sum%28rate%28x%5B5m%5D%29%29" * 120  # > 2048


async def test_alertmanager_and_grafana_bodies_as_really_sent(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    alert = {
        **am_alert("fp-real"),
        # Go's RFC3339Nano, in the sender's local zone; a PromQL expression's generatorURL.
        "startsAt": "2026-03-01T12:00:00.123456789+02:00",
        "generatorURL": LONG_URL,
        "annotations": {"summary": "5xx rate\nabove 5%", "runbook_url": LONG_URL},
    }
    am = {**alertmanager_body(alert), "truncatedAlerts": 3}
    grafana = grafana_body()
    grafana["message"] = "**Firing**\n" + "Value: B=7.5\nLabels:\n - a = b\n" * 3000  # > 64 KiB
    grafana["title"] = "[FIRING:1] " + "HighErrorRate " * 100  # > 1024
    grafana["alerts"][0] |= {"embeddedImage": "iVBORw0KGgo=", "ruleUID": "abc", "orgId": 1, "values": None}
    async with intake(settings) as svc:
        for body in (am, grafana):
            response = await svc.post("/v1/integrations/alertmanager", body)
            assert response.status_code == 202, response.text[:500]
        events = await svc.events(at_least=2)
    by_key = {e.payload["dedup_key"]: e.payload for e in events}
    p = by_key["fp-real"]
    assert p["title"] == "5xx rate above 5%"
    assert p["occurred_at"].startswith("2026-03-01T10:00:00.123456")
    assert all(len(link["href"]) <= 2048 for link in p["links"]) and p["links"] == []
    assert p["raw"]["alert"]["generatorURL"] == LONG_URL and p["raw"]["group"]["truncatedAlerts"] == 3
    g = by_key[grafana["alerts"][0]["fingerprint"]]
    assert g["source"] == "grafana" and g["raw"]["group"]["message"] == grafana["message"]
    assert {link["text"] for link in g["links"]} >= {"source", "dashboard", "panel", "silence"}


async def test_pagerduty_clients_paths_and_answers(infra: TestInfra, make_database: Any, topic_prefix: str) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:
        event = pagerduty_event(svc.key, dedup_key="pd-wire")
        event["payload"]["timestamp"] = "2015-07-17T08:42:58.315+0000"  # PagerDuty's documented example
        answers = []
        # go-pagerduty joins base URL and "/v2/enqueue" as strings; some add a trailing slash.
        # (Absolute URLs: httpx would read a relative "//v2" as a host.)
        for path in ("/v2/enqueue", "//v2/enqueue", "/v2/enqueue/"):
            response = await svc.client.post(
                f"http://service{path}",
                content=json.dumps(event),
                headers={"content-type": "application/json; charset=utf-8"},
            )
            assert response.status_code == 202, f"{path}: {response.status_code} {response.text}"
            answers.append(response.json())
        with_bom = await svc.client.post(
            "/v2/enqueue",
            content=b"\xef\xbb\xbf" + json.dumps(event).encode(),
            headers={"content-type": "application/json"},
        )
        invalid = await svc.client.post("/v2/enqueue", json={"routing_key": svc.key, "event_action": "trigger"})
        events = await svc.events(at_least=4)
    assert [a["action"] for a in answers] == ["logged", "correlated", "correlated"]
    assert set(answers[0]) == {"status", "message", "dedup_key", "incident_id", "action"}
    assert (answers[0]["status"], answers[0]["message"], answers[0]["dedup_key"]) == (
        "success",
        "Event processed",
        "pd-wire",
    )
    assert with_bom.status_code == 202, with_bom.text
    assert invalid.status_code == 400
    assert invalid.json() == {
        "status": "invalid event",
        "message": "Event object is invalid",
        "errors": ["'payload' is required for event_action trigger"],
    }
    assert events[0].payload["occurred_at"].startswith("2015-07-17T08:42:58.315")


async def test_an_event_too_large_for_the_log_drops_its_raw_copy_and_the_log_keeps_flowing(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    """Before the fix, such an alert was answered 202 and its event could never be published: the
    relay retried it forever and every later event stayed behind it."""
    settings = await make_settings(infra, make_database, topic_prefix)
    big = generic_alert(dedup_key="big", annotations={f"n{i}": "x" * 60_000 for i in range(12)})
    async with intake(settings) as svc:
        first = await svc.post("/v1/alerts", big)
        assert first.status_code == 202, first.text
        after = await svc.post("/v1/alerts", generic_alert(dedup_key="after"))
        assert after.status_code == 202, after.text
        events = await svc.events(at_least=2)
    by_key = {e.payload["dedup_key"]: e.payload for e in events}
    assert set(by_key) == {"big", "after"}
    assert by_key["big"]["annotations"] == big["annotations"]
    assert by_key["big"]["raw"]["omitted"] and by_key["big"]["raw"]["bytes"] > 700_000
    assert by_key["after"]["raw"] == generic_alert(dedup_key="after")


async def test_the_answer_and_the_events_share_the_correlation_id(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:
        plain = await svc.post("/v1/alerts", generic_alert(dedup_key="c1"))
        given = await svc.client.post(
            "/v1/alerts", json=generic_alert(dedup_key="c2"), headers={**svc.auth, "X-Correlation-ID": "corr-7"}
        )
        events = await svc.events(at_least=2)
    by_key = {e.payload["dedup_key"]: e for e in events}
    assert by_key["c1"].correlation_id == plain.headers["x-correlation-id"]
    assert by_key["c2"].correlation_id == given.headers["x-correlation-id"] == "corr-7"


async def test_a_report_posted_with_an_integration_key(infra: TestInfra, make_database: Any, topic_prefix: str) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:
        name = "status-page-" + "x" * 188  # 200 characters: the longest name an integration may have
        key = await svc.new_key(name)
        anonymous = await svc.post("/v1/incidents", report(reporter=None, reported_at=None), key=key)
        assert anonymous.status_code == 201, anonymous.text
        named = await svc.post("/v1/incidents", report(), key=key)
        assert named.status_code == 201, named.text
        events = await svc.events(at_least=2)
    first, second = events
    assert first.actor == second.actor == f"integration:{name}"  # who authenticated, not who is claimed
    assert first.payload["integration_name"] == name and first.payload["integration_id"]
    assert first.payload["reporter"] == {"name": f"integration:{name}"[:200], "email": None}
    assert second.payload["reporter"] == {"name": "Ada Lovelace", "email": "ada@example.com"}
    assert second.payload["occurred_at"].startswith("2026-03-01T09:50")
    assert second.payload["reported_at"].startswith("2026-03-01T10:05")  # started vs reported
    # Without a stated report time, it was reported when intake received it.
    assert first.payload["reported_at"] == first.payload["received_at"]


async def test_overload_is_shed_with_503_and_retry_after(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix, max_waiting=1, max_wait_seconds=0.3)
    async with intake(settings) as svc:
        warm = await svc.post("/v1/alerts", generic_alert(dedup_key="warm"))  # caches the key
        assert warm.status_code == 202, warm.text
        group_commit = svc.runtime.group_commit
        async with group_commit.paused():  # nothing is committed meanwhile
            waiting = asyncio.create_task(svc.post("/v1/alerts", generic_alert(dedup_key="shed-2")))
            await eventually(lambda: _async(group_commit.waiting == 1), what="one request waiting")
            # The queue (1) is full: refused at once, on both endpoints.
            refused = await svc.post("/v1/alerts", generic_alert(dedup_key="shed"))
            refused_pd = await svc.client.post("/v2/enqueue", json=pagerduty_event(svc.key, dedup_key="shed-pd"))
            waited = await waiting  # shed after max_wait_seconds, never started
        accepted = await svc.post("/v1/alerts", generic_alert(dedup_key="after"))
    for response in (refused, refused_pd, waited):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
    assert refused_pd.json()["status"] != "success" and isinstance(refused_pd.json()["errors"], list)
    assert accepted.status_code == 202, accepted.text
    engine = make_engine(settings)
    async with engine.connect() as conn:
        keys = set((await conn.execute(sa.select(store.alert_state.c.dedup_key))).scalars())
    await engine.dispose()
    assert keys == {"warm", "after"}, "a shed request writes nothing"


async def _async(value: bool) -> bool:
    return value
