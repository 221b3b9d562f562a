"""Outbound notifications (webhooks and email): deliveries are staged with the consumed event (one
per event and matching subscription, in the consumer's transaction) and sent by a durable timer
each, so retries with backoff survive restarts. Every attempt is recorded. An attempt is made inside
the timer runner's transaction: the delivery's outcome and the timer's removal commit together, so
a crash after a receiver answered repeats that one attempt with the same idempotency key, never more."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.header import Header
from email.mime.text import MIMEText
from email.utils import formatdate
from typing import Any

import httpx
import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from opsledger import timers
from opsledger.bus.consumer import Delivery
from opsledger.clock import Clock
from opsledger.events.resolution import ChannelKind, SubscriptionChanged
from opsledger.timers import FiredTimer, Timer
from opsledger.uow import UnitOfWork
from resolution import notify, store
from resolution.domain import Incident
from resolution.mailer import Mailer, Outcome, describe_error, ms_since
from resolution.settings import Settings

log = logging.getLogger(__name__)

# Lines in one Slack digest: Slack cuts a message's text at 40,000 characters, and a line is about 150.
SLACK_DIGEST_MAX = 100


class Webhooks:
    """Stages deliveries for consumed events and sends them when their timers fire."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings, self.clock = settings, clock
        self._tls: ssl.SSLContext | None = None
        self.mailer = Mailer(settings)
        self.retry = notify.RetryPolicy(
            max_attempts=settings.webhook_max_attempts,
            base=timedelta(seconds=settings.webhook_retry_base_seconds),
            cap=timedelta(seconds=settings.webhook_retry_max_seconds),
            rate_limited_for=timedelta(seconds=settings.webhook_rate_limited_seconds),
        )

    async def close(self) -> None:
        """Close the SMTP connections kept open between batches (at shutdown)."""
        await self.mailer.close()

    async def stage(
        self, uow: UnitOfWork, deliveries: Sequence[Delivery], states: Mapping[uuid.UUID, Incident]
    ) -> None:
        """A delivery (and its timer, due now) per event and matching enabled subscription.
        `states`: the incidents as the stage left them after this batch (and saved them)."""
        events = [
            d.envelope
            for d in deliveries
            if d.envelope.event_type in notify.NOTIFY_TYPES and d.envelope.incident_id is not None
        ]
        if not events:
            return
        subscriptions = [SubscriptionChanged.model_validate(s) for s in await store.enabled_subscriptions(uow.session)]
        if not subscriptions:
            return
        rows = []
        for event in events:
            incident = states.get(event.incident_id) if event.incident_id is not None else None
            for sub in subscriptions:
                if not notify.matches(sub, event, incident):
                    continue
                key = notify.idempotency_key(event.event_id, sub.subscription_id)
                if sub.channel is ChannelKind.EMAIL:
                    template = self.settings.incident_link_template
                    link = template.format(incident_id=event.incident_id) if template else None
                    content = notify.email(event, incident, link)
                else:
                    content = notify.body(sub, event, incident, key)
                rows.append(
                    {
                        "subscription_id": sub.subscription_id,
                        "event_id": event.event_id,
                        "idempotency_key": key,
                        "event_type": event.event_type,
                        "incident_id": event.incident_id,
                        "channel": str(sub.channel),
                        "target": notify.recipient(sub, incident),
                        "body": content,
                        "status": "pending",
                        "attempts": 0,
                        "created_at": uow.now,
                        "next_attempt_at": uow.now,
                    }
                )
        for subscription_id, event_id in await store.add_deliveries(uow.session, rows):
            data = {"subscription_id": subscription_id, "event_id": str(event_id)}
            uow.schedule(Timer(notify.timer_key(event_id, subscription_id), uow.now, data))

    async def fire(self, session: AsyncSession, fired: list[FiredTimer]) -> None:
        """Send the due deliveries concurrently (a slow receiver costs at most the timeout; the
        emails over a few SMTP connections), record every attempt, and schedule the next one with
        backoff (or later, when the receiver said so), or give up after the last."""
        keys = {(str(t.data["subscription_id"]), uuid.UUID(str(t.data["event_id"]))) for t in fired}
        rows = await store.pending_deliveries(session, keys)
        now = self.clock.now()
        emails: list[Any] = []
        others: list[Any] = []  # webhooks, and deliveries whose subscription is gone (_send says so)
        for row in rows:
            (emails if _usable(row) and row.channel == ChannelKind.EMAIL else others).append(row)
        sent, mailed = await asyncio.gather(self._post_all(others, now), self._mail(emails, now))
        attempts, later = [], []
        for row, outcome in zip([*others, *emails], [*sent, *mailed], strict=True):
            attempt = row.attempts + 1
            rate_limited = row.rate_limited
            next_at: datetime | None = None
            if outcome.error is None:
                status = "delivered"
            else:
                # A 429 (and a Slack digest's deliveries that waited behind a refused one) uses none up.
                limited = outcome.status_code == 429
                rate_limited += limited
                delay = (
                    self.retry.after_failure(
                        attempt,
                        attempt - rate_limited,
                        rate_limited=limited,
                        retry_after=outcome.retry_after,
                        age=now - row.created_at,
                    )
                    if row.enabled
                    else None
                )
                status = "pending" if delay is not None else "failed"
                if delay is not None:
                    next_at = now + delay
                    data = {"subscription_id": row.subscription_id, "event_id": str(row.event_id)}
                    later.append(Timer(notify.timer_key(row.event_id, row.subscription_id), next_at, data))
                log.warning(
                    "webhook %s for %s attempt %d: %s (%s)",
                    row.idempotency_key,
                    row.subscription_id,
                    attempt,
                    outcome.error,
                    f"next at {next_at.isoformat()}" if next_at else "giving up",
                )
            attempts.append(
                store.Attempt(
                    row.subscription_id,
                    row.event_id,
                    attempt=attempt,
                    at=now,
                    status_code=outcome.status_code,
                    error=outcome.error,
                    duration_ms=outcome.duration_ms,
                    status=status,
                    next_attempt_at=next_at,
                    rate_limited=rate_limited,
                )
            )
        await store.record_attempts(session, attempts)
        await timers.schedule_many(session, later)

    async def _send(self, client: httpx.AsyncClient, row: Any, now: datetime) -> Outcome:
        """One attempt. A receiver answering 429 or 503 may say when to try again (Retry-After)."""
        if not _usable(row):
            return Outcome(None, "the subscription was deleted or disabled", 0.0)
        raw = orjson.dumps(row.body)
        stamp = int(now.timestamp())
        secrets = [row.secret] + ([row.previous_secret] if row.previous_secret else [])
        headers = {
            "content-type": "application/json",
            "user-agent": "OpsLedger-Webhooks/1",
            notify.IDEMPOTENCY_HEADER: row.idempotency_key,
            notify.TIMESTAMP_HEADER: str(stamp),
            notify.SIGNATURE_HEADER: notify.signature(secrets, stamp, raw),
            "X-OpsLedger-Event-Type": row.event_type,
        }
        started = time.perf_counter()
        try:
            response = await client.post(row.target, content=raw, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(None, describe_error(exc), ms_since(started))
        elapsed = (time.perf_counter() - started) * 1000
        code = response.status_code
        if 200 <= code < 300:
            return Outcome(code, None, elapsed)
        wait = notify.retry_after(response.headers.get("retry-after"), now) if code in (429, 503) else None
        return Outcome(code, f"the receiver answered {code}", elapsed, wait)

    async def _mail(self, rows: Sequence[Any], now: datetime) -> list[Outcome]:
        """One attempt at each email, over up to `smtp_connections` SMTP connections at once; one
        incident's emails share a connection, in order. A person owed more than
        `digest_after` emails in this round (an alert storm assigning them dozens of
        incidents a second) gets one digest listing them all instead: its outcome is each one's."""
        s = self.settings
        if not rows:
            return []
        if s.smtp_host is None:
            return [Outcome(None, "no SMTP server is configured (OPSLEDGER_SMTP_HOST)", 0.0)] * len(rows)
        digested, alone = _digests(rows, lambda row: row.target, s.digest_after)
        groups: dict[int, list[tuple[list[int], MIMEText]]] = {}  # connection -> (rows, message) in order
        for owed in digested:
            address = rows[owed[0]].target
            digest = self._digest(address, [rows[i] for i in owed], now)
            groups.setdefault(hash(address) % s.smtp_connections, []).append((owed, digest))
        for i in alone:
            slot = hash(rows[i].incident_id) % s.smtp_connections
            groups.setdefault(slot, []).append(([i], self._message(rows[i], now)))
        sent = await asyncio.gather(
            *(self.mailer.send(slot, [message for _, message in g]) for slot, g in groups.items())
        )
        outcomes = [Outcome(None, "not sent", 0.0)] * len(rows)
        for g, results in zip(groups.values(), sent, strict=True):
            for (owed, _), outcome in zip(g, results, strict=True):
                for i in owed:
                    outcomes[i] = outcome
        return outcomes

    async def _post_all(self, rows: Sequence[Any], now: datetime) -> list[Outcome]:
        """One attempt at each webhook, concurrently. A Slack subscription owed more than
        `digest_after` messages in this round gets them as digests of up to SLACK_DIGEST_MAX lines,
        one after the other (Slack takes about a message a second per webhook): a digest's outcome
        is each listed delivery's, and a refused one's is also that of those not sent after it.
        Other webhooks get one request per event, as their receivers expect."""
        if not rows:
            return []  # no client: making one loads the trusted certificates, tens of milliseconds
        if self._tls is None:
            self._tls = httpx.create_ssl_context()  # once: every batch of a storm would load it again
        digested, alone = _digests(rows, _slack_subscription, self.settings.digest_after)
        outcomes = [Outcome(None, "not sent", 0.0)] * len(rows)

        async def one(client: httpx.AsyncClient, i: int) -> None:
            outcomes[i] = await self._send(client, rows[i], now)

        async def digests(client: httpx.AsyncClient, owed: list[int]) -> None:
            for start in range(0, len(owed), SLACK_DIGEST_MAX):
                part = owed[start : start + SLACK_DIGEST_MAX]
                outcome = await self._send(client, _slack_digest([rows[i] for i in part]), now)
                refused = outcome.error is not None  # rate-limited, most likely: the rest wait with it
                for i in owed[start:] if refused else part:
                    outcomes[i] = outcome
                if refused:
                    return

        timeout = self.settings.webhook_timeout_seconds
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, verify=self._tls) as client:
            await asyncio.gather(*(one(client, i) for i in alone), *(digests(client, o) for o in digested))
        return outcomes

    def _message(self, row: Any, now: datetime) -> MIMEText:
        # The same Message-ID on every attempt: mail systems drop a repeat as a duplicate.
        return self._email(row.target, row.body["subject"], row.body["text"], row.idempotency_key, row.event_type, now)

    def _digest(self, address: str, rows: Sequence[Any], now: datetime) -> MIMEText:
        """One email listing `rows`' notifications, in their order (oldest first)."""
        subject = f"{len(rows)} notifications: {rows[0].body['subject']} and {len(rows) - 1} more"
        items = [f"{n}. {row.body['subject']}\n\n{row.body['text']}" for n, row in enumerate(rows, 1)]
        text = f"{len(rows)} notifications for you, oldest first.\n\n" + "\n".join(items)
        # Its Message-ID follows from what it lists, so the same digest sent again is recognisable.
        key, types = _digest_key(rows), _digest_types(rows)
        message = self._email(address, subject[:300], text, key, types, now)
        message["X-OpsLedger-Digest"] = str(len(rows))
        return message

    def _email(self, to: str, subject: str, text: str, key: str, event_type: str, now: datetime) -> MIMEText:
        # The compat32 API (MIMEText, Header): the default policy parses every header it is given
        # back through its header registry, which cost a third of this service's CPU in a storm.
        message = MIMEText(text, "plain", "utf-8")
        message["From"] = self.settings.smtp_from
        message["To"] = to
        message["Subject"] = subject if subject.isascii() else Header(subject, "utf-8", header_name="Subject").encode()
        message["Date"] = formatdate(now.timestamp(), usegmt=True)
        message["Message-ID"] = f"<{key}@opsledger>"
        message[notify.IDEMPOTENCY_HEADER] = key
        message["X-OpsLedger-Event-Type"] = event_type
        return message


def _usable(row: Any) -> bool:
    """The delivery's subscription still exists and is enabled."""
    return row.secret is not None and bool(row.enabled)


def _digests(
    rows: Sequence[Any], recipient: Callable[[Any], str | None], after: int
) -> tuple[list[list[int]], list[int]]:
    """Which of `rows` go as digests: per recipient owed more than `after` of them, their indexes
    in the order they were staged (oldest first); and the indexes of the others, in `rows`' order.
    A row whose recipient is None never goes in a digest."""
    owed: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if (who := recipient(row)) is not None:
            owed.setdefault(who, []).append(i)
    digested = [sorted(idx, key=lambda i: rows[i].created_at) for idx in owed.values() if len(idx) > after]
    listed = {i for idx in digested for i in idx}
    return digested, [i for i in range(len(rows)) if i not in listed]


def _slack_subscription(row: Any) -> str | None:
    """A Slack webhook delivery's subscription (its digests' recipient); None for any other."""
    return row.subscription_id if _usable(row) and row.channel == ChannelKind.SLACK_WEBHOOK else None


@dataclass(frozen=True)
class _Digest:
    """Several deliveries of one subscription sent as one request (read as a delivery row by `_send`)."""

    target: str
    body: dict[str, Any]
    idempotency_key: str
    event_type: str
    secret: str
    previous_secret: str | None
    enabled: bool


def _slack_digest(rows: Sequence[Any]) -> _Digest:
    """One Slack message listing `rows`' messages (of one subscription), a line each, in order."""
    text = f"{len(rows)} notifications:\n" + "\n".join(f"• {row.body['text']}" for row in rows)
    first = rows[0]
    return _Digest(
        first.target, {"text": text}, _digest_key(rows), _digest_types(rows), first.secret, first.previous_secret, True
    )


def _digest_key(rows: Sequence[Any]) -> str:
    """A digest's idempotency key follows from those of what it lists: sent again, it is the same."""
    return str(uuid.uuid5(notify.DIGEST_NAMESPACE, ",".join(sorted(row.idempotency_key for row in rows))))


def _digest_types(rows: Sequence[Any]) -> str:
    return ",".join(sorted({row.event_type for row in rows}))
