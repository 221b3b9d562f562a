"""Every kind of bad input gets a 4xx naming the field at fault, never a 5xx, and writes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from opsledger.db import make_engine, outbox_table
from opsledger.testing import TestInfra

from .harness import intake, make_settings
from .samples import alertmanager_body, am_alert, generic_alert, pagerduty_event, report

pytestmark = pytest.mark.integration

KEY = "<key>"  # replaced by the test's integration key
JSON = "application/json"


@dataclass
class Case:
    name: str
    path: str
    body: Any  # a JSON value, or raw bytes sent as they are
    status: int
    field: str  # must appear in the error answer
    content_type: str = JSON
    auth: str | None = KEY
    headers: dict[str, str] = field(default_factory=dict)


def am(**alert_overrides: Any) -> dict[str, Any]:
    return alertmanager_body({**am_alert(), **alert_overrides})


def pd(**overrides: Any) -> dict[str, Any]:
    body = pagerduty_event(KEY)
    return {**body, **overrides}


def pd_payload(**overrides: Any) -> dict[str, Any]:
    body = pagerduty_event(KEY)
    return {**body, "payload": {**body["payload"], **overrides}}


CASES = [
    # transport level
    Case("malformed json", "/v1/alerts", b'{"title": "x",', 400, "body"),
    Case("wrong content type", "/v1/alerts", b"title=x", 415, "content-type", content_type="text/plain"),
    Case(
        "form content type",
        "/v1/integrations/alertmanager",
        b"{}",
        415,
        "content-type",
        content_type="application/x-www-form-urlencoded",
    ),
    Case("json array body", "/v1/alerts", [generic_alert()], 422, "body"),
    Case("body over 1 MiB", "/v1/alerts", generic_alert(description="x" * (1024 * 1024 + 10)), 413, "larger than"),
    # authentication
    Case("missing key", "/v1/alerts", generic_alert(), 401, "authorization", auth=None),
    Case("wrong key", "/v1/alerts", generic_alert(), 401, "authorization", auth="not-a-key"),
    Case("pagerduty wrong routing key", "/v2/enqueue", pd(routing_key="nope"), 401, "routing_key"),
    Case("report without token", "/v1/incidents", report(), 401, "authorization", auth=None),
    # generic alert fields
    Case("missing title", "/v1/alerts", {"severity": "high"}, 422, "title"),
    Case("title wrong type", "/v1/alerts", generic_alert(title=42), 422, "title"),
    Case("unknown severity", "/v1/alerts", generic_alert(severity="apocalyptic"), 422, "severity"),
    Case("unknown status", "/v1/alerts", generic_alert(status="exploded"), 422, "status"),
    Case("unknown field", "/v1/alerts", generic_alert(sevrity="high"), 422, "sevrity"),
    Case("invalid timestamp", "/v1/alerts", generic_alert(occurred_at="yesterday"), 422, "occurred_at"),
    Case("impossible date", "/v1/alerts", generic_alert(occurred_at="2026-02-30T10:00:00Z"), 422, "occurred_at"),
    Case("control character", "/v1/alerts", generic_alert(title="disk\x00full"), 422, "title"),
    Case("control char in label", "/v1/alerts", generic_alert(labels={"a": "b\x1b[31m"}), 422, "labels.a"),
    Case("too many labels", "/v1/alerts", generic_alert(labels={f"l{i}": "v" for i in range(65)}), 422, "labels"),
    Case("label value too long", "/v1/alerts", generic_alert(labels={"a": "v" * 1025}), 422, "labels.a"),
    Case("labels wrong type", "/v1/alerts", generic_alert(labels={"a": 1}), 422, "labels.a"),
    Case("title too long", "/v1/alerts", generic_alert(title="t" * 1025), 422, "title"),
    Case("dedup_key too long", "/v1/alerts", generic_alert(dedup_key="k" * 256), 422, "dedup_key"),
    Case("link without href", "/v1/alerts", generic_alert(links=[{"text": "x"}]), 422, "links.0.href"),
    # alertmanager
    Case("am missing alerts", "/v1/integrations/alertmanager", {"version": "4", "status": "firing"}, 422, "alerts"),
    Case("am empty alerts", "/v1/integrations/alertmanager", alertmanager_body(), 422, "alerts"),
    Case("am alert status", "/v1/integrations/alertmanager", am(status="burning"), 422, "alerts.0.status"),
    Case("am labels wrong type", "/v1/integrations/alertmanager", am(labels=["a"]), 422, "alerts.0.labels"),
    Case("am bad startsAt", "/v1/integrations/alertmanager", am(startsAt="not-a-time"), 422, "alerts.0.startsAt"),
    Case(
        "am control char in fingerprint",
        "/v1/integrations/alertmanager",
        am(fingerprint="a\nb"),
        422,
        "alerts.0.fingerprint",
    ),
    # pagerduty (answers in PagerDuty's 400 shape)
    Case("pd malformed json", "/v2/enqueue", b"{", 400, "body"),
    Case("pd unknown action", "/v2/enqueue", pd(event_action="explode"), 400, "event_action"),
    Case("pd unknown severity", "/v2/enqueue", pd_payload(severity="high"), 400, "payload.severity"),
    Case("pd missing summary", "/v2/enqueue", pd_payload(summary=""), 400, "payload.summary"),
    Case("pd missing routing key", "/v2/enqueue", {"event_action": "trigger"}, 400, "routing_key"),
    Case("pd resolve without dedup_key", "/v2/enqueue", pd(event_action="resolve"), 400, "dedup_key"),
    Case("pd bad timestamp", "/v2/enqueue", pd_payload(timestamp="32/13/2026"), 400, "payload.timestamp"),
    Case("pd wrong content type", "/v2/enqueue", b"{}", 415, "content-type", content_type="text/plain"),
    # reports
    Case("report missing title", "/v1/incidents", {"description": "x"}, 422, "title"),
    Case("report bad email", "/v1/incidents", report(reporter={"email": "not-an-email"}), 422, "reporter.email"),
    Case("report bad impact", "/v1/incidents", report(business_impact={"level": "huge"}), 422, "business_impact.level"),
    Case("report urgency out of range", "/v1/incidents", report(urgency_hint=7), 422, "urgency_hint"),
]


async def test_bad_input_table(infra: TestInfra, make_database: Any, topic_prefix: str) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    failures = []
    async with intake(settings) as svc:
        for case in CASES:
            body = case.body if isinstance(case.body, bytes) else orjson.dumps(_with_key(case.body, svc.key))
            headers = {"content-type": case.content_type, **case.headers}
            if case.auth:
                headers["authorization"] = f"Bearer {svc.key if case.auth == KEY else case.auth}"
            response = await svc.client.post(case.path, content=body, headers=headers)
            answer = response.text
            if response.status_code != case.status or case.field not in answer:
                failures.append(f"{case.name}: {response.status_code} {answer[:300]}")
            if case.path == "/v2/enqueue" and response.status_code == 400:
                shape = response.json()
                if shape.get("status") != "invalid event" or not isinstance(shape.get("errors"), list):
                    failures.append(f"{case.name}: not PagerDuty's error shape: {answer[:300]}")
    assert not failures, "\n".join(failures)
    # Nothing half-written: the only events are the test integration's creation.
    engine = make_engine(settings)
    async with engine.connect() as conn:
        topics = (await conn.execute(sa.select(outbox_table.c.topic))).scalars().all()
    await engine.dispose()
    assert topics == [settings.topic("config")]


def _with_key(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {k: _with_key(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_key(v, key) for v in value]
    return key if value == KEY else value
