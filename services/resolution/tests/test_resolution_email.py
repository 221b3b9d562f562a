"""Email notifications against the real Kafka and PostgreSQL and a local SMTP server started by the
test: an assignee-only subscription pages the incident's assignee on IncidentAssigned, naming the
incident, its priority and title, why this person was chosen, and a link."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from opsledger.clock import ManualClock
from opsledger.events import EventPayload, Stream, new_event
from opsledger.events.assignment import IncidentAssigned
from opsledger.events.common import PersonRef
from opsledger.events.intake import IncidentLogged
from opsledger.events.triage import IncidentPrioritized, PriorityInputs
from opsledger.testing import TestInfra, eventually, running_app, session_tokens
from opsledger.testing.helpers import free_port
from resolution.app import build
from resolution.settings import Settings
from resolution.webhooks import Webhooks

pytestmark = pytest.mark.integration

TOKENS = session_tokens()
MANAGER = TOKENS.headers("mia", "manager")
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@dataclass
class MailSink:
    """The smallest SMTP server that accepts mail (RFC 5321's happy path), keeping each message."""

    port: int = 0
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    sessions: int = 0
    quits: int = 0
    open: set[asyncio.StreamWriter] = field(default_factory=set)

    async def hang_up(self, *, reply: str | None) -> None:
        """Close every open session, as a server timing out its idle clients does (saying `reply`
        first, e.g. 421, or nothing)."""
        for writer in list(self.open):
            if reply is not None:
                writer.write(f"{reply}\r\n".encode())
            writer.close()
            self.open.discard(writer)

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        self.open.add(writer)
        recipients: list[str] = []

        async def reply(line: str) -> None:
            writer.write(f"{line}\r\n".encode())
            await writer.drain()

        await reply("220 sink ESMTP")
        try:
            while line := (await reader.readline()).decode().rstrip("\r\n"):
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    await reply("250-sink")
                    await reply("250 8BITMIME")
                elif verb == "HELO" or verb == "MAIL" or verb == "NOOP" or verb == "RSET":
                    recipients = [] if verb in ("MAIL", "RSET") else recipients
                    await reply("250 ok")
                elif verb == "RCPT":
                    address = line.split(":", 1)[1].strip().strip("<>")
                    if address.startswith("nobody@"):
                        await reply("550 no such user")
                        continue
                    recipients.append(address)
                    await reply("250 ok")
                elif verb == "DATA":
                    await reply("354 go on")
                    data = await reader.readuntil(b"\r\n.\r\n")
                    raw = data[: -len(b"\r\n.\r\n")].replace(b"\r\n..", b"\r\n.")
                    parsed = email.message_from_bytes(raw, policy=email.policy.default)
                    assert isinstance(parsed, EmailMessage)
                    self.messages.append((recipients, parsed))
                    await reply("250 queued")
                elif verb == "QUIT":
                    self.quits += 1
                    await reply("221 bye")
                    break
                else:
                    await reply("502 not implemented")
        except ConnectionError:
            pass  # hung up by hang_up, or by the client
        finally:
            self.open.discard(writer)
            writer.close()


@pytest.fixture
async def sink() -> AsyncIterator[MailSink]:
    s = MailSink()
    server = await asyncio.start_server(s.session, "127.0.0.1", 0)
    s.port = server.sockets[0].getsockname()[1]
    yield s
    server.close()
    with contextlib.suppress(Exception):
        await server.wait_closed()


@pytest.fixture
async def settings(
    infra: TestInfra,
    make_database: Callable[..., Any],
    topic_prefix: str,
    sink: MailSink,
) -> Settings:
    settings = Settings(
        database_url=await make_database(),
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=2,
        relay_poll_seconds=0.05,
        log_json=False,
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        incident_link_template="http://reporting.local/v1/incidents/{incident_id}",
        **TOKENS.settings(),
    )
    return settings


async def test_the_assignee_is_paged_by_email(settings: Settings, sink: MailSink) -> None:
    async with running_app(build(settings, ManualClock(T0))) as client:
        bad = await client.post(
            "/v1/subscriptions", json={"channel": "email", "target": "not-an-address"}, headers=MANAGER
        )
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.target"
        webhook_only = {"channel": "webhook", "target": "https://x.example/h", "filters": {"assignee_only": True}}
        refused = await client.post("/v1/subscriptions", json=webhook_only, headers=MANAGER)
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "body.filters.assignee_only"
        body = {
            "name": "page the assignee",
            "channel": "email",
            "target": "dba-team@example.com",
            "filters": {"event_types": ["IncidentAssigned", "IncidentEscalated"], "assignee_only": True},
        }
        created = await client.post("/v1/subscriptions", json=body, headers=MANAGER)
        assert created.status_code == 201, created.text

        incident_id = uuid.uuid4()
        bob = PersonRef(sub="bob", name="Bob Oncall", email="bob@example.com")
        await publish(
            settings,
            incident_id,
            IncidentLogged(
                source="alertmanager",
                occurred_at=T0,
                received_at=T0,
                title="db-1 disk 95% full in Zürich",  # not ASCII: encoded in the subject and the body
                severity="critical",  # type: ignore[arg-type]
                dedup_key=f"disk-{incident_id}",
            ),
            IncidentPrioritized(
                priority="P1", major=True, inputs=PriorityInputs(impact=1, urgency=1), matrix_version=1
            ),
            IncidentAssigned(team_id="dba", assignee=bob, reason="on call in DBA primary until 17:00 UTC"),
        )

        async def paged() -> bool:
            return len(sink.messages) >= 1

        await eventually(paged, timeout=60, what="the page emailed")
        (recipients, message), *others = sink.messages
        assert not others and recipients == ["bob@example.com"]
        assert message["To"] == "bob@example.com"
        assert message["Subject"] == "[P1] db-1 disk 95% full in Zürich: IncidentAssigned"
        text = message.get_content()
        for expected in (
            f"Incident {incident_id}",
            "Priority: P1",
            "Title: db-1 disk 95% full in Zürich",
            "Why you: on call in DBA primary until 17:00 UTC",
            f"Open it: http://reporting.local/v1/incidents/{incident_id}",
        ):
            assert expected in text, expected
        assert message["Message-ID"] == f"<{message['Idempotency-Key']}@opsledger>"


def page(to: str, incident_id: uuid.UUID, staged: datetime = T0) -> SimpleNamespace:
    """A due email delivery, as `Webhooks._mail` reads it."""
    key = uuid.uuid4().hex
    body = {"subject": f"[P2] page for {to}", "text": f"Incident {incident_id}\nthe incident\n"}
    return SimpleNamespace(
        body=body,
        target=to,
        idempotency_key=key,
        event_type="IncidentAssigned",
        incident_id=incident_id,
        created_at=staged,
    )


async def test_a_batch_of_pages_goes_over_a_few_connections_each_incident_in_order_a_refused_one_alone(
    settings: Settings, sink: MailSink
) -> None:
    incidents = [uuid.UUID(int=n) for n in range(6)]  # hashes 0..5: every one of 3 connections used
    pages = [page(f"p{n}-{i}@example.com", incident) for n in range(3) for i, incident in enumerate(incidents)]
    pages[4] = page("nobody@example.com", incidents[4])
    settings.smtp_connections = 3
    webhooks = Webhooks(settings, ManualClock(T0))
    outcomes = await webhooks._mail(pages, T0)
    await webhooks.close()
    assert [code for code, *_ in outcomes] == [None if p.target.startswith("nobody") else 250 for p in pages]
    assert "SMTPRecipientsRefused" in str(outcomes[4][1])
    assert sink.sessions == 3
    received = [to[0] for to, _ in sink.messages]
    assert sorted(received) == sorted(p.target for p in pages if not p.target.startswith("nobody"))
    for incident in incidents:
        sent = [p.target for p in pages if p.incident_id == incident and not p.target.startswith("nobody")]
        assert [to for to in received if to in sent] == sent, "one incident's pages in order"

    settings.smtp_connections = 1
    webhooks = Webhooks(settings, ManualClock(T0))
    await webhooks._mail(pages[:7], T0)
    await webhooks.close()
    assert sink.sessions == 4, "one connection for a whole batch"

    settings.smtp_port = free_port()  # nothing listens there: every page fails, and says why
    refused = await Webhooks(settings, ManualClock(T0))._mail(pages[:2], T0)
    assert [code for code, *_ in refused] == [None, None]
    assert all("ConnectionRefusedError" in str(error) for _, error, *_ in refused)


async def test_connections_stay_open_between_batches_and_one_the_server_closed_is_replaced(
    settings: Settings, sink: MailSink
) -> None:
    settings.smtp_connections = 1
    webhooks = Webhooks(settings, ManualClock(T0))

    async def delivered(n: int) -> None:
        pages = [page(f"p{i}@example.com", uuid.uuid4()) for i in range(n)]
        outcomes = await webhooks._mail(pages, T0)
        assert [(code, error) for code, error, *_ in outcomes] == [(250, None)] * n
        assert [to for to, _ in sink.messages[-n:]] == [[p.target] for p in pages]

    try:
        await delivered(2)
        await delivered(3)
        assert sink.sessions == 1 and sink.quits == 0, "the second batch reuses the first's connection"

        await sink.hang_up(reply="421 idle for too long, closing")
        await delivered(2)
        assert sink.sessions == 2, "a new connection, and the page the closed one refused went over it"
        await sink.hang_up(reply=None)
        await delivered(2)
        assert sink.sessions == 3

        settings.smtp_idle_seconds = 1e-9  # every connection has now been idle too long
        await delivered(1)
        assert (sink.sessions, sink.quits) == (4, 1), "the idle one said goodbye, a new one sent"
        assert len(sink.messages) == 10, "none twice"
    finally:
        await webhooks.close()
    assert sink.quits == 2 and not sink.open, "closing says goodbye"

    await delivered(1)  # after closing, a batch still goes, over a connection of its own
    assert (sink.sessions, sink.quits) == (5, 3)


async def test_a_person_owed_many_pages_at_once_gets_one_digest_listing_them(
    settings: Settings, sink: MailSink
) -> None:
    settings.smtp_connections = 2
    settings.digest_after = 3
    webhooks = Webhooks(settings, ManualClock(T0))
    storm = [page("riley@example.com", uuid.uuid4(), T0 + timedelta(seconds=n)) for n in range(5)]
    calm = [page("sam@example.com", uuid.uuid4()) for _ in range(3)]  # not more than 3: one email each
    due = [calm[0], *reversed(storm[2:]), calm[1], *reversed(storm[:2]), calm[2]]  # in no particular order
    try:
        outcomes = await webhooks._mail(due, T0)
        assert [(code, error) for code, error, *_ in outcomes] == [(250, None)] * len(due)
        to_riley = [m for to, m in sink.messages if to == ["riley@example.com"]]
        to_sam = [m for to, m in sink.messages if to == ["sam@example.com"]]
        assert len(to_riley) == 1 and len(to_sam) == 3
        digest = to_riley[0]
        assert digest["Subject"] == "5 notifications: [P2] page for riley@example.com and 4 more"
        assert digest["X-OpsLedger-Digest"] == "5" and digest["X-OpsLedger-Event-Type"] == "IncidentAssigned"
        listed = re.findall(r"^Incident (\S+)$", digest.get_content(), re.M)
        assert listed == [str(p.incident_id) for p in storm], "every page, oldest first"

        again = await webhooks._mail(storm, T0)  # the same deliveries tried again: the same message
        assert [code for code, *_ in again] == [250] * 5
        assert sink.messages[-1][1]["Message-ID"] == digest["Message-ID"]

        refused = [page("nobody@example.com", uuid.uuid4()) for _ in range(4)]
        failed = await webhooks._mail(refused, T0)  # one digest, refused: every page it lists failed
        assert len({error for _, error, *_ in failed}) == 1 and "SMTPRecipientsRefused" in str(failed[0][1])
    finally:
        await webhooks.close()


async def publish(settings: Settings, incident_id: uuid.UUID, *payloads: EventPayload) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for p in payloads:
            e = new_event(p, producer="test", actor="system:test", incident_id=incident_id, occurred_at=T0)
            await producer.send_and_wait(settings.topic(Stream.INCIDENTS), e.to_bytes(), key=e.key)
    finally:
        await producer.stop()
