"""Unit tests of who hears about what (no infrastructure): subscription filters, webhook bodies,
signatures with one or two secrets, idempotency keys, the retry schedule and URL validation."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opsledger.events import Envelope, new_event
from opsledger.events.assignment import IncidentAssigned
from opsledger.events.common import PersonRef
from opsledger.events.resolution import (
    Audience,
    ChannelKind,
    IncidentStatusUpdated,
    SubscriptionChanged,
    SubscriptionFilter,
)
from resolution import domain, notify

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
ID = uuid.UUID("00000000-0000-0000-0000-0000000000b2")
INCIDENT = domain.Incident(
    logged_at=T0,
    title="db-1 disk 95% full",
    service="payments-db",
    priority="P1",
    assigned_team="dba",
    assignee=PersonRef(sub="bob", name="Bob"),
    status=domain.Status.ASSIGNED,
)


def subscription(channel: ChannelKind = ChannelKind.WEBHOOK, **filters: Any) -> SubscriptionChanged:
    return SubscriptionChanged(
        subscription_id="sub-1",
        version=1,
        channel=channel,
        target="https://hooks.example.com/x",
        filters=SubscriptionFilter(**filters),
    )


def update(audience: Audience = Audience.STAKEHOLDERS) -> Envelope:
    payload = IncidentStatusUpdated(audience=audience, message="failing over")
    return new_event(payload, producer="resolution", actor="user:bob", incident_id=ID, occurred_at=T0)


def test_filters_match_event_type_team_service_priority_and_audience() -> None:
    event = update()
    assert notify.matches(subscription(), event, INCIDENT)
    assert notify.matches(subscription(event_types=["IncidentStatusUpdated"], teams=["dba"]), event, INCIDENT)
    assert not notify.matches(subscription(event_types=["IncidentAssigned"]), event, INCIDENT)
    assert not notify.matches(subscription(teams=["network"]), event, INCIDENT)
    assert notify.matches(subscription(services=["payments-db"], priorities=["P1", "P2"]), event, INCIDENT)
    assert not notify.matches(subscription(priorities=["P3"]), event, INCIDENT)
    assert not notify.matches(subscription(priorities=["P1"]), event, None), (
        "unknown incident: its priority is not known"
    )
    assert not notify.matches(subscription(audiences=["responders"]), event, INCIDENT)
    assert notify.matches(subscription(audiences=["stakeholders"]), event, INCIDENT)
    disabled = subscription().model_copy(update={"enabled": False})
    assert not notify.matches(disabled, event, INCIDENT)


def test_bodies_generic_and_slack() -> None:
    event = update()
    key = notify.idempotency_key(event.event_id, "sub-1")
    generic = notify.body(subscription(), event, INCIDENT, key)
    assert generic["id"] == key and generic["summary"] == "Status update to stakeholders by user:bob: failing over"
    assert generic["incident"] == {
        "incident_id": str(ID),
        "title": "db-1 disk 95% full",
        "priority": "P1",
        "state": "assigned",
        "service": "payments-db",
        "team": "dba",
        "assignee": {"sub": "bob", "name": "Bob", "email": None},
    }
    assert (
        generic["event"]["event_id"] == str(event.event_id) and generic["event"]["payload"]["message"] == "failing over"
    )
    slack = notify.body(subscription(ChannelKind.SLACK_WEBHOOK), event, INCIDENT, key)
    assert slack == {"text": f"[P1] db-1 disk 95% full: {generic['summary']} (incident {ID})"}


def test_signatures_verify_with_either_secret_while_rotating() -> None:
    raw = b'{"a":1}'
    header = notify.signature(["new-secret-0123456789", "old-secret-0123456789"], 1764493200, raw)
    assert header.startswith("t=1764493200,v1=") and header.count("v1=") == 2
    assert notify.verify("new-secret-0123456789", header, raw)
    assert notify.verify("old-secret-0123456789", header, raw)
    assert not notify.verify("other-secret-0123456789", header, raw)
    assert not notify.verify("new-secret-0123456789", header, raw + b" ")
    assert not notify.verify("new-secret-0123456789", header.replace("t=1764493200", "t=1764493201"), raw)


def test_one_idempotency_key_per_event_and_subscription() -> None:
    event_id = uuid.uuid4()
    assert notify.idempotency_key(event_id, "sub-1") == notify.idempotency_key(event_id, "sub-1")
    assert notify.idempotency_key(event_id, "sub-1") != notify.idempotency_key(event_id, "sub-2")
    assert notify.timer_key(event_id, "sub-1") == f"webhook:{event_id}:sub-1"


def test_retries_back_off_exponentially_with_jitter_then_give_up() -> None:
    policy = notify.RetryPolicy(max_attempts=4, base=timedelta(seconds=10), cap=timedelta(seconds=30))
    rng = random.Random(7)
    delays = [policy.after_failure(n, n, rng=rng) for n in (1, 2, 3)]
    bounds = [(5, 10), (10, 20), (15, 30)]
    for delay, (low, high) in zip(delays, bounds, strict=True):
        assert delay is not None and low <= delay.total_seconds() <= high
    assert policy.after_failure(4, 4, rng=rng) is None


def test_a_rate_limited_attempt_waits_as_asked_and_uses_no_attempt_up_until_a_day_has_passed() -> None:
    policy = notify.RetryPolicy(max_attempts=4, base=timedelta(seconds=10), cap=timedelta(hours=1))
    hour = timedelta(hours=1)
    # Ten attempts, six of them answered 429: four used up, but the last was rate limited.
    wait = policy.after_failure(10, 4, rate_limited=True, retry_after=5, age=hour)
    assert wait is not None and timedelta(minutes=30) <= wait <= hour, "the waits still grow with every attempt"
    assert policy.after_failure(10, 4, rate_limited=True, retry_after=7200, age=hour) == hour, "as asked, up to the cap"
    assert policy.after_failure(10, 4, rate_limited=True, age=timedelta(days=1)) is None, "a day after it was staged"
    assert policy.after_failure(10, 4, retry_after=5, age=hour) is None, "a 503 uses one up: the fourth"
    assert policy.after_failure(10, 3, retry_after=5, age=hour) is not None


def test_a_receivers_retry_after_is_read_as_seconds_or_a_date() -> None:
    now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert notify.retry_after("120", now) == 120.0
    assert notify.retry_after(" 0 ", now) == 0.0
    assert notify.retry_after("Mon, 30 Nov 2026 09:02:00 GMT", now) == 120.0
    assert notify.retry_after("Mon, 30 Nov 2026 08:00:00 GMT", now) == 0.0, "a date gone by: at once"
    for unreadable in (None, "", "soon", "-5", "1.5"):
        assert notify.retry_after(unreadable, now) is None, unreadable


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://hooks.example.com/x", "scheme"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https:///x", "no host"),
        ("https://hooks.example.com/x#frag", "fragment"),
        ("https://evil.test/x", "allow-list"),
        ("https://hooks.example.com:port/x", "not a URL"),
    ],
)
def test_webhook_urls_are_validated(url: str, error: str) -> None:
    with pytest.raises(notify.InvalidTarget, match=error):
        notify.check_webhook_url(url, ["hooks.example.com", ".corp.example"])


def test_the_allow_list_takes_hosts_and_domains() -> None:
    allowed = ["hooks.example.com", ".corp.example"]
    assert notify.check_webhook_url("https://hooks.example.com/x", allowed)
    assert notify.check_webhook_url("http://ci.corp.example:8080/hook", allowed)
    assert notify.check_webhook_url("https://anything.test/x", [])


def test_an_email_names_the_incident_and_why_this_person() -> None:
    assigned = IncidentAssigned(team_id="dba", assignee=PersonRef(sub="bob"), reason="on call in DBA primary")
    event = new_event(assigned, producer="assignment", actor="system:assignment", incident_id=ID, occurred_at=T0)
    mail = notify.email(event, INCIDENT, f"https://ops.example/{ID}")
    assert mail["subject"] == "[P1] db-1 disk 95% full: IncidentAssigned"
    assert mail["text"].splitlines() == [
        f"Incident {ID}",
        "Priority: P1",
        "Title: db-1 disk 95% full",
        "",
        "IncidentAssigned at 2026-11-30T09:00:00+00:00: Assigned to bob of team dba: on call in DBA primary",
        "Why you: on call in DBA primary",
        "",
        f"Open it: https://ops.example/{ID}",
    ]


def test_email_recipients_and_addresses() -> None:
    paging = subscription(ChannelKind.EMAIL, assignee_only=True).model_copy(update={"target": "team@example.com"})
    with_email = replace(INCIDENT, assignee=PersonRef(sub="bob", email="bob@example.com"))
    assert notify.recipient(paging, with_email) == "bob@example.com"
    assert notify.recipient(paging, INCIDENT) == "team@example.com", "no address for the assignee: the fallback"
    assert notify.recipient(subscription(), with_email) == "https://hooks.example.com/x"
    assert notify.check_email("oncall@example.com")
    for bad in ("oncall", "a@b", "Bob <bob@example.com>", "a@example.com,b@example.com"):
        with pytest.raises(notify.InvalidTarget):
            notify.check_email(bad)
