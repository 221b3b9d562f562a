"""Who hears about what, purely (no I/O): which subscriptions an incident event matches, the body a
webhook receiver gets (generic JSON or Slack-compatible), its HMAC-SHA256 signature, the
idempotency key per event and subscription, the retry schedule, and webhook URL validation."""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from opsledger.events import Envelope
from opsledger.events.resolution import ChannelKind, SubscriptionChanged
from resolution import domain

WEBHOOK = "webhook"  # timer kind: 'webhook:<event id>:<subscription id>'
# The incident events a subscription can ask for.
NOTIFY_TYPES = frozenset(
    {
        "IncidentLogged",
        "IncidentPrioritized",
        "IncidentReprioritized",
        "IncidentAssigned",
        "IncidentEscalated",
        "IncidentAcknowledged",
        "IncidentPutOnHold",
        "IncidentResumed",
        "SlaWarning",
        "SlaBreached",
        "IncidentStatusUpdated",
        "IncidentResolved",
        "IncidentReopened",
        "IncidentClosed",
        "PostIncidentReviewCompleted",
    }
)
_KEY_NAMESPACE = uuid.UUID("6f1d2c8e-3b4a-4f5e-9c7d-2a1b0e9f8d37")
DIGEST_NAMESPACE = uuid.UUID("0b7e6f3a-52d1-4c8e-a9f4-7d3c2e1b6a58")  # a digest's key, from those it lists
SIGNATURE_HEADER = "X-OpsLedger-Signature"  # "t=<unix seconds>,v1=<hex>[,v1=<hex>]"
TIMESTAMP_HEADER = "X-OpsLedger-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"


class InvalidTarget(ValueError):
    """A webhook URL that may not be used; the message says why."""


def check_webhook_url(url: str, allowed_hosts: Sequence[str]) -> str:
    """`url` if a webhook may be sent there: http(s), a host, no credentials or fragment, and the
    host on the allow-list when there is one ('.example.com' allows its subdomains)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError as exc:
        raise InvalidTarget(f"not a URL: {exc}") from exc
    if parts.scheme not in ("https", "http"):
        raise InvalidTarget("the scheme must be https or http")
    if not host:
        raise InvalidTarget("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidTarget("credentials do not belong in the URL (receivers verify the signature instead)")
    if parts.fragment:
        raise InvalidTarget("the URL must not carry a fragment")
    if allowed_hosts and not any(
        host == a.lower() or (a.startswith(".") and host.endswith(a.lower())) for a in allowed_hosts
    ):
        raise InvalidTarget(f"host {host!r} is not on the webhook allow-list")
    return url


_EMAIL = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")


def check_email(address: str) -> str:
    """`address` if it looks like one mailbox (no display name, no list)."""
    if not _EMAIL.match(address):
        raise InvalidTarget("expected one email address, like oncall@example.com")
    return address


def recipient(subscription: SubscriptionChanged, incident: domain.Incident | None) -> str:
    """Where a delivery goes: the subscription's target, or, for an assignee-only email
    subscription (paging), the incident's assignee, falling back on the target when the assignee
    has no email address."""
    assignee = incident.assignee if incident is not None else None
    if subscription.filters.assignee_only and assignee is not None and assignee.email:
        return assignee.email
    return subscription.target


def email(event: Envelope, incident: domain.Incident | None, link: str | None) -> dict[str, str]:
    """The subject and text of a notification email: the incident's id, priority and title, what
    happened and, for an assignment or escalation, why this person was chosen."""
    title = incident.title if incident is not None else "an incident"
    priority = incident.priority if incident is not None and incident.priority else "unprioritized"
    line = domain.describe(event.event_type, event.payload, event.actor)
    lines = [
        f"Incident {event.incident_id}",
        f"Priority: {priority}",
        f"Title: {title}",
        "",
        f"{event.event_type} at {event.occurred_at.isoformat()}: {line}",
    ]
    reason = event.payload.get("reason")
    if event.event_type in ("IncidentAssigned", "IncidentEscalated") and reason:
        lines.append(f"Why you: {reason}")
    if link:
        lines += ["", f"Open it: {link}"]
    return {"subject": f"[{priority}] {title}: {event.event_type}"[:300], "text": "\n".join(lines) + "\n"}


def idempotency_key(event_id: uuid.UUID, subscription_id: str) -> str:
    """The same for every attempt (and after a restart) at delivering one event to one subscription."""
    return str(uuid.uuid5(_KEY_NAMESPACE, f"{event_id}:{subscription_id}"))


def timer_key(event_id: uuid.UUID, subscription_id: str) -> str:
    return f"{WEBHOOK}:{event_id}:{subscription_id}"


def matches(subscription: SubscriptionChanged, event: Envelope, incident: domain.Incident | None) -> bool:
    """Whether the subscription hears about this event (its filters against what is known of the incident)."""
    f = subscription.filters
    if not subscription.enabled or event.event_type not in NOTIFY_TYPES:
        return False
    if f.event_types and event.event_type not in f.event_types:
        return False
    if f.audiences and event.event_type == "IncidentStatusUpdated" and event.payload.get("audience") not in f.audiences:
        return False
    if f.teams and (incident is None or incident.assigned_team not in f.teams):
        return False
    if f.services and (incident is None or incident.service not in f.services):
        return False
    return not (f.priorities and (incident is None or incident.priority not in f.priorities))


def body(
    subscription: SubscriptionChanged, event: Envelope, incident: domain.Incident | None, key: str
) -> dict[str, Any]:
    """What the receiver gets: the generic JSON body, or Slack's `text` (+ the same facts as blocks)."""
    line = domain.describe(event.event_type, event.payload, event.actor)
    title = incident.title if incident is not None else "incident"
    facts = {
        "incident_id": str(event.incident_id),
        "title": incident.title if incident is not None else None,
        "priority": incident.priority if incident is not None else None,
        "state": str(incident.status) if incident is not None else None,
        "service": incident.service if incident is not None else None,
        "team": incident.assigned_team if incident is not None else None,
        "assignee": incident.assignee.model_dump(mode="json") if incident and incident.assignee else None,
    }
    if subscription.channel is ChannelKind.SLACK_WEBHOOK:
        priority = f"[{facts['priority']}] " if facts["priority"] else ""
        return {"text": f"{priority}{title}: {line} (incident {event.incident_id})"}
    return {
        "id": key,
        "subscription_id": subscription.subscription_id,
        "summary": line,
        "incident": facts,
        "event": {
            "event_id": str(event.event_id),
            "event_type": event.event_type,
            "schema_version": event.schema_version,
            "occurred_at": event.occurred_at.isoformat(),
            "actor": event.actor,
            "correlation_id": event.correlation_id,
            "payload": event.payload,
        },
    }


def signature(secrets: Iterable[str], timestamp: int, raw_body: bytes) -> str:
    """`t=<timestamp>,v1=<hex>` with one v1 per valid secret (two while a secret is being rotated):
    HMAC-SHA256 over '<timestamp>.' + the raw body."""
    signed = f"{timestamp}.".encode() + raw_body
    parts = [f"t={timestamp}"]
    parts += [f"v1={hmac.new(s.encode(), signed, hashlib.sha256).hexdigest()}" for s in secrets]
    return ",".join(parts)


def verify(secret: str, header: str, raw_body: bytes) -> bool:
    """A receiver's check (documented in the README of this service): one v1 matches."""
    fields = [p.partition("=") for p in header.split(",")]
    timestamps = [v for k, _, v in fields if k == "t"]
    if len(timestamps) != 1 or not timestamps[0].isdigit():
        return False
    expected = hmac.new(secret.encode(), f"{timestamps[0]}.".encode() + raw_body, hashlib.sha256).hexdigest()
    return any(k == "v1" and hmac.compare_digest(v, expected) for k, _, v in fields)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, up to `max_attempts` failed attempts. A receiver
    answering 429 (rate limited: it is up, and asks us to slow down) does not use one up: during
    a storm Slack refuses most of a burst that way, and those notifications gave up after 8 such
    answers in minutes. It is tried again, as late as it asked, for `rate_limited_for` after the
    delivery was staged."""

    max_attempts: int = 8
    base: timedelta = timedelta(seconds=10)
    cap: timedelta = timedelta(hours=1)
    rate_limited_for: timedelta = timedelta(days=1)

    def after_failure(
        self,
        attempts: int,
        counted: int,
        *,
        rate_limited: bool = False,
        retry_after: float | None = None,
        age: timedelta = timedelta(0),
        rng: random.Random | None = None,
    ) -> timedelta | None:
        """The wait before the next attempt, or None: give up. `attempts`: made so far (the waits
        grow with each); `counted`: those that used one up (all but the rate-limited ones);
        `retry_after`: what the receiver asked, honoured up to `cap`; `age`: since it was staged."""
        if rate_limited:
            if age >= self.rate_limited_for:
                return None
        elif counted >= self.max_attempts:
            return None
        ceiling = min(self.cap.total_seconds(), self.base.total_seconds() * 2 ** (attempts - 1))
        # Full jitter, but never less than half: receivers coming back are not hit all at once.
        wait = timedelta(seconds=ceiling / 2 + (rng or random).uniform(0, ceiling / 2))
        if retry_after is not None:
            wait = max(wait, min(timedelta(seconds=retry_after), self.cap))
        return wait


def retry_after(value: str | None, now: datetime) -> float | None:
    """The seconds a `Retry-After` header asks to wait (RFC 9110 §10.2.3: delay-seconds or an
    HTTP-date); None when there is none or it cannot be read."""
    value = (value or "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
