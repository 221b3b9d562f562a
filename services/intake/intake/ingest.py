"""The write path of an alert or a report: lock the keys' state, decide, and commit the new state
with its events in one transaction (alerts: shared with concurrent requests, see group_commit).
Returning means the events are durable in the outbox."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from intake import store
from intake.domain import (
    MAX_PAYLOAD_BYTES,
    Action,
    AlertSignal,
    AlertState,
    FlapPolicy,
    Report,
    Status,
    closed_downstream,
    decide,
    fit_for_log,
    refused_signal,
    report_logged,
)
from intake.errors import FieldError, Rejected
from intake.integration_keys import PRODUCER, Integration
from opsledger.bus.outbox import Outbox
from opsledger.db import CombinedWrites, driver_connection
from opsledger.events import Envelope, EventPayload, derived_event_id, new_event
from opsledger.events.resolution import CorrelationRefused
from opsledger.ids import uuid7

if TYPE_CHECKING:
    from intake.runtime import IntakeRuntime


@dataclass(frozen=True)
class Result:
    dedup_key: str
    action: Action
    incident_id: uuid.UUID | None

    def json(self) -> dict[str, str | None]:
        return {
            "dedup_key": self.dedup_key,
            "action": self.action.value,
            "incident_id": str(self.incident_id) if self.incident_id else None,
        }


@dataclass(frozen=True)
class AlertRequest:
    """The signals of one request (in its order), from one integration."""

    integration: Integration
    signals: list[AlertSignal]
    correlation_id: str

    @property
    def scope(self) -> str:
        return str(self.integration.integration_id)


async def ingest_alerts(
    runtime: IntakeRuntime, integration: Integration, signals: list[AlertSignal], correlation_id: str
) -> list[Result]:
    """Apply a request's signals (in order) to their keys' state. It shares a transaction with the
    requests that arrive meanwhile (group commit); returning means its events are durable."""
    return await runtime.group_commit.submit(AlertRequest(integration, signals, correlation_id))


async def apply_alerts(
    conn: asyncpg.Connection,
    outbox: Outbox,
    requests: Sequence[AlertRequest],
    *,
    now: datetime,
    policy: FlapPolicy,
) -> list[list[Result]]:
    """Apply several requests in the caller's transaction, one after the other, as if each had
    its own: one lock statement per integration, one write per table. A request that raises (413:
    an event too large for the log) raises for all; the caller then retries them one by one. The
    caller wakes the outbox relay once the transaction has committed."""
    keys: dict[str, set[str]] = {}
    for request in requests:
        keys.setdefault(request.scope, set()).update(s.dedup_key for s in request.signals)
    states: dict[tuple[str, str], AlertState] = {}
    # One lock order for everyone, (integration, key): two transactions sharing keys cannot deadlock.
    for scope in sorted(keys):
        for key, state in (await store.lock_states(conn, scope, sorted(keys[scope]))).items():
            states[(scope, key)] = state
    before = dict(states)
    answers: list[list[Result]] = []
    envelopes: list[Envelope] = []
    opened: list[store.LoggedIncident] = []
    for request in requests:
        results: list[Result] = []
        for signal in request.signals:
            signal = _with_integration(signal, request.integration)
            where = (request.scope, signal.dedup_key)
            outcome = decide(states[where], signal, now=now, policy=policy, new_incident_id=uuid7())
            states[where] = outcome.state
            envelopes.extend(
                _event(
                    payload,
                    actor=request.integration.actor,
                    incident_id=outcome.incident_id,
                    correlation_id=request.correlation_id,
                    now=now,
                )
                for payload in outcome.events
            )
            if outcome.opened:
                assert outcome.incident_id is not None
                opened.append(
                    store.LoggedIncident(
                        outcome.incident_id, signal.source, request.scope, signal.dedup_key, signal.title, now
                    )
                )
            results.append(Result(signal.dedup_key, outcome.action, outcome.incident_id))
        answers.append(results)
    writes = CombinedWrites(conn)  # one statement for the three tables (one round trip)
    for scope in sorted(keys):
        changed = {k: st for (sc, k), st in states.items() if sc == scope and st != before[(sc, k)]}
        await store.save_states(writes, scope, changed)
    await store.record_incidents(writes, opened)
    await outbox.stage(writes, envelopes)
    await writes.send()
    return answers


def _event(
    payload: EventPayload, *, actor: str, incident_id: uuid.UUID | None, correlation_id: str, now: datetime
) -> Envelope:
    """The event, sized for the log (see `fit_for_log`); raises 413 if it cannot be (the
    transaction then rolls back: nothing of the request is kept)."""
    envelope = new_event(
        payload, producer=PRODUCER, actor=actor, incident_id=incident_id, correlation_id=correlation_id, occurred_at=now
    )
    return _fitted(envelope)


def _fitted(envelope: Envelope) -> Envelope:
    fitted = fit_for_log(envelope.payload)
    if fitted is None:
        message = f"the alert would make an event over {MAX_PAYLOAD_BYTES} bytes even without its raw copy"
        raise Rejected(413, f"body: {message}", [FieldError("body", message)])
    return envelope if fitted is envelope.payload else envelope.model_copy(update={"payload": fitted})


async def open_for_refused(
    conn: asyncpg.Connection,
    outbox: Outbox,
    refusal: Envelope,
    refused: CorrelationRefused,
    *,
    now: datetime,
    policy: FlapPolicy,
) -> bool:
    """Open the incident an alert belongs to that the resolution stage refused: intake attached it
    to an incident closed before it knew. In the caller's transaction; False (nothing staged) when
    the key has moved on since: a newer incident, or a flapping key, holds its alerts now."""
    alert = refused.alert
    if alert.integration_id is None:
        return False
    scope = alert.integration_id  # the integration's id is the scope of its keys (AlertRequest.scope)
    state = (await store.lock_states(conn, scope, [alert.dedup_key]))[alert.dedup_key]
    if state.incident_id != refusal.incident_id or state.status is Status.FIRING:
        return False
    # Over for good, whatever intake thought of its reopen window: resolution has the last word.
    signal = refused_signal(alert)
    new_id = derived_event_id(refusal.event_id, "incident")
    outcome = decide(closed_downstream(state), signal, now=now, policy=policy, new_incident_id=new_id)
    actor = f"integration:{alert.integration_name}" if alert.integration_name else f"system:{PRODUCER}"
    envelopes = []
    for ordinal, payload in enumerate(outcome.events):
        envelope = new_event(
            payload,
            producer=PRODUCER,
            actor=actor,
            incident_id=outcome.incident_id,
            cause=refusal,
            ordinal=ordinal,
            occurred_at=now,
        )
        envelopes.append(_fitted(envelope))
    await store.save_states(conn, scope, {alert.dedup_key: outcome.state})
    if outcome.opened:
        assert outcome.incident_id is not None
        logged = store.LoggedIncident(outcome.incident_id, signal.source, scope, signal.dedup_key, signal.title, now)
        await store.record_incidents(conn, [logged])
    await outbox.stage(conn, envelopes)
    return bool(envelopes)


def _with_integration(signal: AlertSignal, integration: Integration) -> AlertSignal:
    """The signal attributed to `integration` (the formats do it when given the integration:
    `replace` copies all twenty fields: about 10 µs an alert)."""
    integration_id = str(integration.integration_id)
    if signal.integration_id == integration_id and signal.integration_name == integration.name:
        return signal
    return replace(signal, integration_id=integration_id, integration_name=integration.name)


async def ingest_report(runtime: IntakeRuntime, report: Report, actor: str, correlation_id: str) -> uuid.UUID:
    """A person's report always opens a new incident."""
    incident_id = uuid7()
    now = runtime.clock.now()
    payload = report_logged(report, incident_id=incident_id, received_at=now)
    envelope = _event(payload, actor=actor, incident_id=incident_id, correlation_id=correlation_id, now=now)
    async with runtime.admission.slot(), runtime.sessionmaker() as session, session.begin():
        logged = store.LoggedIncident(incident_id, "manual", None, payload.dedup_key, report.title, now)
        await store.record_incidents(await driver_connection(session), [logged])
        await runtime.outbox.add(session, [envelope])
    return incident_id
