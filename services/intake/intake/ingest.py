"""The write path of an alert or a report: lock the keys' state, decide, and commit the new state
with its events in one transaction. Returning means the events are durable in the outbox."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from intake import store
from intake.domain import MAX_PAYLOAD_BYTES, Action, AlertSignal, FlapPolicy, Report, decide, fit_for_log, report_logged
from intake.errors import FieldError, Rejected
from intake.integration_keys import Integration
from intake.integrations import PRODUCER
from intake.runtime import IntakeRuntime
from intake.settings import Settings
from opsledger.events import Envelope, EventPayload, new_event


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


def flap_policy(settings: Settings) -> FlapPolicy:
    return FlapPolicy(settings.flap_max_transitions, timedelta(minutes=settings.flap_window_minutes))


async def ingest_alerts(
    runtime: IntakeRuntime, integration: Integration, signals: list[AlertSignal], correlation_id: str
) -> list[Result]:
    """Apply signals (in order) to their keys' state; one transaction for the whole request."""
    policy = flap_policy(runtime.settings)
    now = runtime.clock.now()
    scope = str(integration.integration_id)
    results: list[Result] = []
    envelopes: list[Envelope] = []
    opened: list[dict[str, object]] = []
    async with runtime.admission.slot(), runtime.sessionmaker() as session, session.begin():
        states = await store.lock_states(session, scope, [s.dedup_key for s in signals])
        before = dict(states)
        for signal in signals:
            signal = _with_integration(signal, integration)
            outcome = decide(states[signal.dedup_key], signal, now=now, policy=policy, new_incident_id=uuid.uuid4())
            states[signal.dedup_key] = outcome.state
            envelopes.extend(
                _event(
                    payload,
                    actor=integration.actor,
                    incident_id=outcome.incident_id,
                    correlation_id=correlation_id,
                    now=now,
                )
                for payload in outcome.events
            )
            if outcome.opened:
                opened.append(
                    {
                        "incident_id": outcome.incident_id,
                        "source": signal.source,
                        "scope": scope,
                        "dedup_key": signal.dedup_key,
                        "title": signal.title,
                        "logged_at": now,
                    }
                )
            results.append(Result(signal.dedup_key, outcome.action, outcome.incident_id))
        await store.save_states(session, scope, {k: s for k, s in states.items() if s != before[k]})
        await store.record_incidents(session, opened)
        await runtime.outbox.add(session, envelopes)
    return results


def _event(
    payload: EventPayload, *, actor: str, incident_id: uuid.UUID | None, correlation_id: str, now: datetime
) -> Envelope:
    """The event, sized for the log (see `fit_for_log`); raises 413 if it cannot be (the
    transaction then rolls back: nothing of the request is kept)."""
    envelope = new_event(
        payload, producer=PRODUCER, actor=actor, incident_id=incident_id, correlation_id=correlation_id, occurred_at=now
    )
    fitted = fit_for_log(envelope.payload)
    if fitted is None:
        message = f"the alert would make an event over {MAX_PAYLOAD_BYTES} bytes even without its raw copy"
        raise Rejected(413, f"body: {message}", [FieldError("body", message)])
    return envelope if fitted is envelope.payload else envelope.model_copy(update={"payload": fitted})


def _with_integration(signal: AlertSignal, integration: Integration) -> AlertSignal:
    return replace(signal, integration_id=str(integration.integration_id), integration_name=integration.name)


async def ingest_report(runtime: IntakeRuntime, report: Report, actor: str, correlation_id: str) -> uuid.UUID:
    """A person's report always opens a new incident."""
    incident_id = uuid.uuid4()
    now = runtime.clock.now()
    payload = report_logged(report, incident_id=incident_id, received_at=now)
    envelope = _event(payload, actor=actor, incident_id=incident_id, correlation_id=correlation_id, now=now)
    async with runtime.admission.slot(), runtime.sessionmaker() as session, session.begin():
        await store.record_incidents(
            session,
            [
                {
                    "incident_id": incident_id,
                    "source": "manual",
                    "scope": None,
                    "dedup_key": payload.dedup_key,
                    "title": report.title,
                    "logged_at": now,
                }
            ],
        )
        await runtime.outbox.add(session, [envelope])
    return incident_id
