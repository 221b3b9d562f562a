"""Every kind of bad input gets a 4xx naming the field at fault, never a 5xx, and writes nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from intake import store
from opsledger.db import make_engine, outbox_table
from opsledger.testing import TestInfra

from .harness import TOKENS, intake, make_settings
from .samples import alertmanager_body, am_alert, generic_alert, pagerduty_event, report

pytestmark = pytest.mark.integration

KEY = "<key>"  # replaced by the test's integration key
DISABLED = "<disabled key>"  # replaced by the key of a disabled integration
PAGERDUTY_ONLY = "<pagerduty key>"  # replaced by the key of an integration of kind pagerduty
ANALYST_JWT = "<analyst jwt>"  # a person's valid token without a role that may report
EXPIRED_JWT = "<expired jwt>"  # a reporter's token, expired
FOREIGN_JWT = "<foreign jwt>"  # a reporter's token for another audience
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
    chunked: bool = False  # sent without content-length


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


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
    Case("body over 1 MiB", "/v1/alerts", generic_alert(description="x" * (1024 * 1024 + 10)), 413, "body"),
    Case(
        "chunked body over 1 MiB",
        "/v1/alerts",
        generic_alert(description="x" * (1024 * 1024 + 10)),
        413,
        "body",
        chunked=True,
    ),
    Case("null body", "/v1/alerts", None, 422, "body"),
    Case("string body", "/v1/alerts", "an alert", 422, "body"),
    Case("empty body", "/v1/alerts", b"", 400, "body"),
    Case("NaN literal", "/v1/alerts", b'{"title": "x", "labels": {"a": NaN}}', 400, "body"),
    Case("number overflowing a double", "/v1/alerts", b'{"title": "x", "n": 1e999}', 400, "body"),
    Case("lone surrogate", "/v1/alerts", b'{"title": "\\ud800"}', 400, "body"),
    Case("invalid utf-8", "/v1/alerts", b'{"title": "\xff\xfe"}', 400, "body"),
    Case("nested 300 deep (pydantic cannot serialize it)", "/v2/enqueue", {**pd(), "images": nested(300)}, 400, "body"),
    Case("nested 65 deep", "/v1/alerts", generic_alert(annotations=nested(65)), 400, "body"),
    Case(
        "event too large for the log even without its raw copy",
        "/v1/alerts",
        # ~1.02 MB: under the 1 MiB body limit, over what a stream takes once it is an event.
        generic_alert(annotations={f"n{i}": "x" * 60_000 for i in range(17)}),
        413,
        "body",
    ),
    # authentication
    Case("missing key", "/v1/alerts", generic_alert(), 401, "authorization", auth=None),
    Case("wrong key", "/v1/alerts", generic_alert(), 401, "authorization", auth="not-a-key"),
    Case("pagerduty wrong routing key", "/v2/enqueue", pd(routing_key="nope"), 401, "routing_key"),
    Case("report without token", "/v1/incidents", report(), 401, "authorization", auth=None),
    Case("report with unknown key", "/v1/incidents", report(), 401, "authorization", auth="nope"),
    Case("report by a role that may not report", "/v1/incidents", report(), 403, "authorization", auth=ANALYST_JWT),
    Case("report with an expired token", "/v1/incidents", report(), 401, "authorization", auth=EXPIRED_JWT),
    Case("report with another audience's token", "/v1/incidents", report(), 401, "authorization", auth=FOREIGN_JWT),
    Case(
        "a person's token on an alert endpoint", "/v1/alerts", generic_alert(), 401, "authorization", auth=ANALYST_JWT
    ),
    Case("disabled key", "/v1/alerts", generic_alert(), 403, "authorization", auth=DISABLED),
    Case("disabled key, alertmanager", "/v1/integrations/alertmanager", am(), 403, "authorization", auth=DISABLED),
    Case("disabled routing key", "/v2/enqueue", pd(routing_key=DISABLED), 403, "routing_key"),
    Case("key of another kind", "/v1/alerts", generic_alert(), 403, "authorization", auth=PAGERDUTY_ONLY),
    Case(
        "non-bearer scheme",
        "/v1/alerts",
        generic_alert(),
        401,
        "authorization",
        auth=None,
        headers={"authorization": "Basic dXNlcjpwYXNz"},
    ),
    # generic alert fields
    Case("missing title", "/v1/alerts", {"severity": "high"}, 422, "title"),
    Case("blank title", "/v1/alerts", generic_alert(title="   "), 422, "title"),
    Case("null title", "/v1/alerts", generic_alert(title=None), 422, "title"),
    Case("labels null", "/v1/alerts", generic_alert(labels=None), 422, "labels"),
    Case("control char in label key", "/v1/alerts", generic_alert(labels={"a\u0007": "b"}), 422, "labels"),
    Case("empty label key", "/v1/alerts", generic_alert(labels={"": "b"}), 422, "labels"),
    Case("timestamp as a bool", "/v1/alerts", generic_alert(occurred_at=True), 422, "occurred_at"),
    Case("timestamp year 0", "/v1/alerts", generic_alert(occurred_at="0000-01-01T00:00:00Z"), 422, "occurred_at"),
    Case(
        "timestamp past 9999", "/v1/alerts", generic_alert(occurred_at="9999-12-31T23:00:00-05:00"), 422, "occurred_at"
    ),
    Case("severity wrong type", "/v1/alerts", generic_alert(severity=3), 422, "severity"),
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
    Case("am alerts null", "/v1/integrations/alertmanager", {**am(), "alerts": None}, 422, "alerts"),
    Case("am alert not an object", "/v1/integrations/alertmanager", {**am(), "alerts": [1]}, 422, "alerts.0"),
    Case("am labels null", "/v1/integrations/alertmanager", am(labels=None), 422, "alerts.0.labels"),
    Case(
        "am too many labels",
        "/v1/integrations/alertmanager",
        am(labels={f"l{i}": "v" for i in range(65)}),
        422,
        "alerts.0.labels",
    ),
    Case(
        "am control char in annotation",
        "/v1/integrations/alertmanager",
        am(annotations={"summary": "a\u0000b"}),
        422,
        "alerts.0.annotations.summary",
    ),
    Case(
        "am truncatedAlerts negative",
        "/v1/integrations/alertmanager",
        {**am(), "truncatedAlerts": -1},
        422,
        "truncatedAlerts",
    ),
    Case(
        "am truncatedAlerts beyond 64 bits",
        "/v1/integrations/alertmanager",
        {**am(), "truncatedAlerts": 10**30},
        422,
        "truncatedAlerts",
    ),
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
    Case("pd acknowledge without dedup_key", "/v2/enqueue", pd(event_action="acknowledge"), 400, "dedup_key"),
    Case("pd trigger with null payload", "/v2/enqueue", pd(payload=None), 400, "payload"),
    Case("pd payload not an object", "/v2/enqueue", pd(payload=[]), 400, "payload"),
    Case("pd severity in capitals", "/v2/enqueue", pd_payload(severity="Critical"), 400, "payload.severity"),
    Case("pd routing key wrong type", "/v2/enqueue", pd(routing_key=5), 400, "routing_key"),
    Case("pd dedup_key over 255", "/v2/enqueue", pd(dedup_key="k" * 256), 400, "dedup_key"),
    Case("pd summary over 1024", "/v2/enqueue", pd_payload(summary="s" * 1025), 400, "payload.summary"),
    Case("pd array body", "/v2/enqueue", [pd()], 400, "body"),
    Case("pd bad timestamp", "/v2/enqueue", pd_payload(timestamp="32/13/2026"), 400, "payload.timestamp"),
    Case("pd wrong content type", "/v2/enqueue", b"{}", 415, "content-type", content_type="text/plain"),
    # reports
    Case("report missing title", "/v1/incidents", {"description": "x"}, 422, "title"),
    Case("report bad email", "/v1/incidents", report(reporter={"email": "not-an-email"}), 422, "reporter.email"),
    Case("report bad impact", "/v1/incidents", report(business_impact={"level": "huge"}), 422, "business_impact.level"),
    Case("report urgency out of range", "/v1/incidents", report(urgency_hint=7), 422, "urgency_hint"),
    Case("report blank title", "/v1/incidents", report(title="\t "), 422, "title"),
    Case(
        "report started after it was reported",
        "/v1/incidents",
        report(started_at="2026-03-01T11:00:00Z", reported_at="2026-03-01T10:00:00Z"),
        422,
        "started_at",
    ),
    Case("report started in the future", "/v1/incidents", report(started_at="2999-01-01T00:00:00Z"), 422, "started_at"),
    Case(
        "report reported in the future",
        "/v1/incidents",
        report(reported_at="2999-01-01T00:00:00Z", started_at=None),
        422,
        "reported_at",
    ),
]


async def test_bad_input_table(infra: TestInfra, make_database: Any, topic_prefix: str) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    failures = []
    async with intake(settings) as svc:
        keys = {
            KEY: svc.key,
            DISABLED: await svc.new_key("gone", disabled=True),
            PAGERDUTY_ONLY: await svc.new_key("pd-only", kind="pagerduty"),
            ANALYST_JWT: TOKENS.token("u-ana", "analyst"),
            EXPIRED_JWT: TOKENS.token("u-rep", "reporter", lifetime=timedelta(hours=-1)),
            FOREIGN_JWT: TOKENS.token("u-rep", "reporter", aud="another-service"),
        }
        for case in CASES:
            # The standard library's encoder, unlike orjson, nests past 255 levels.
            body = case.body if isinstance(case.body, bytes) else json.dumps(_with_keys(case.body, keys)).encode()
            headers = {"content-type": case.content_type, **case.headers}
            if case.auth:
                headers["authorization"] = f"Bearer {keys.get(case.auth, case.auth)}"
            content: Any = _chunks(body) if case.chunked else body
            response = await svc.client.post(case.path, content=content, headers=headers)
            answer = response.text
            if response.status_code != case.status or not _names_field(response, case.field):
                failures.append(f"{case.name}: {response.status_code} {answer[:300]}")
            elif case.path != "/v2/enqueue" and not _is_problem(response):
                failures.append(f"{case.name}: not RFC 9457 problem details: {response.headers} {answer[:300]}")
            if response.status_code == 401 and "www-authenticate" not in response.headers:
                failures.append(f"{case.name}: 401 without WWW-Authenticate")
            if case.path == "/v2/enqueue" and response.status_code == 400:
                shape = response.json()
                if shape.get("status") != "invalid event" or not isinstance(shape.get("errors"), list):
                    failures.append(f"{case.name}: not PagerDuty's error shape: {answer[:300]}")
    assert not failures, "\n".join(failures)
    # Nothing half-written: no incident event, incident or alert state, only the integrations' events.
    engine = make_engine(settings)
    async with engine.connect() as conn:
        topics = set((await conn.execute(sa.select(outbox_table.c.topic))).scalars().all())
        states = await conn.scalar(sa.select(sa.func.count()).select_from(store.alert_state))
        incidents = await conn.scalar(sa.select(sa.func.count()).select_from(store.logged_incidents))
    await engine.dispose()
    assert (topics, states, incidents) == ({settings.topic("config")}, 0, 0)


def _is_problem(response: httpx.Response) -> bool:
    body = response.json()
    return (
        response.headers["content-type"] == "application/problem+json"
        and body["status"] == response.status_code
        and {"type", "title", "detail", "errors"} <= set(body)
    )


def _names_field(response: httpx.Response, field: str) -> bool:
    """The answer names the field at fault: in an `errors` entry when it has them (OpsLedger's
    `{field, message}`, PagerDuty's "'field' message" strings), else in its text."""
    try:
        answer = response.json()
    except ValueError:
        return False
    entries = answer.get("errors") if isinstance(answer, dict) else None
    if not entries:
        return field in response.text
    for entry in entries:
        named = entry.get("field", "") if isinstance(entry, dict) else str(entry).removeprefix("'")
        if named.startswith(field):
            return True
    return False


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 64 * 1024):
        yield body[start : start + 64 * 1024]


def _with_keys(value: Any, keys: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _with_keys(v, keys) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_keys(v, keys) for v in value]
    return keys.get(value, value) if isinstance(value, str) else value
