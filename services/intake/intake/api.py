"""Alert and report endpoints. Each answers 2xx only after its events are committed to the outbox
in the same transaction as intake's state; bad input gets a 4xx naming the field, never a 5xx."""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc

from intake import errors, formats
from intake.errors import FieldError, JSONAnswer, Rejected
from intake.ingest import ingest_alerts, ingest_report
from intake.integrations import Integration, authenticate
from opsledger.auth import bearer_token
from opsledger.logs import current_correlation_id
from opsledger.service import Runtime

log = logging.getLogger(__name__)
router = APIRouter(tags=["alerts"])


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _correlation(request: Request) -> str:
    # The id the request's log lines carry and the answer's `x-correlation-id` header echoes (the
    # caller's X-Correlation-ID / X-Request-ID when it sent a clean one), so a caller can find
    # the events its request caused.
    return current_correlation_id() or str(uuid.uuid4())


async def _guard(
    request: Request, render: Callable[[Rejected], JSONAnswer], work: Callable[[], Awaitable[JSONAnswer]]
) -> JSONAnswer:
    runtime = _runtime(request)
    if not runtime.ready:
        return render(Rejected(503, f"not ready: {runtime.not_ready_reason}", headers={"Retry-After": "1"}))
    try:
        return await work()
    except Rejected as rejected:
        return render(rejected)
    except formats.Invalid as exc:
        return render(Rejected(422, f"invalid request: {exc}", [FieldError(exc.field, exc.message)]))
    except ValidationError as exc:
        # A value passed the edge but not an event schema: still the input's fault, never a 500.
        log.warning("input accepted at the edge failed an event schema: %s", exc)
        return render(errors.invalid(exc))
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError, TimeoutError) as exc:
        # The database is unreachable or its pool is exhausted: nothing was committed; retry.
        log.warning("database unavailable: %r", exc)
        return render(Rejected(503, "database unavailable, retry later", headers={"Retry-After": "1"}))


def _json_schema(model: type[Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"title": model.__name__}}}}}


@router.post("/v1/alerts", status_code=202, openapi_extra=_json_schema(formats.GenericAlert))
async def post_alert(request: Request) -> JSONAnswer:
    """A generic JSON alert (see README). `Authorization: Bearer <integration key>`."""

    async def work() -> JSONAnswer:
        runtime = _runtime(request)
        integration = await authenticate(runtime, bearer_token(request), "generic")
        raw = await errors.json_body(request)
        alert = errors.parse(formats.GenericAlert, raw)
        signal = formats.generic_signal(alert, raw, runtime.clock.now())
        [result] = await ingest_alerts(runtime, integration, [signal], _correlation(request))
        return JSONAnswer({"status": "accepted", **result.json()}, status_code=202)

    return await _guard(request, errors.standard, work)


@router.post("/v1/integrations/alertmanager", status_code=202, openapi_extra=_json_schema(formats.AlertmanagerWebhook))
async def post_alertmanager(request: Request) -> JSONAnswer:
    """Prometheus Alertmanager webhook (version 4) or Grafana-managed alerting webhook, as sent."""

    async def work() -> JSONAnswer:
        runtime = _runtime(request)
        integration = await authenticate(runtime, bearer_token(request), "alertmanager")
        raw = await errors.json_body(request)
        hook = errors.parse(formats.AlertmanagerWebhook, raw)
        if hook.truncatedAlerts:
            # Alertmanager's `max_alerts` cut the group: those alerts never reach us.
            log.warning("%s webhook dropped %d alerts (max_alerts)", hook.source, hook.truncatedAlerts)
        signals = formats.alertmanager_signals(hook, raw, runtime.clock.now())
        results = await ingest_alerts(runtime, integration, signals, _correlation(request))
        incident_ids = list(dict.fromkeys(str(r.incident_id) for r in results if r.incident_id))
        return JSONAnswer(
            {"status": "accepted", "incident_ids": incident_ids, "alerts": [r.json() for r in results]},
            status_code=202,
        )

    return await _guard(request, errors.standard, work)


@router.post("/v2/enqueue", status_code=202, openapi_extra=_json_schema(formats.PagerDutyEvent))
async def post_pagerduty(request: Request) -> JSONAnswer:
    """PagerDuty Events API v2: `routing_key` is the integration key. Answers as PagerDuty does."""

    async def work() -> JSONAnswer:
        runtime = _runtime(request)
        raw = await errors.json_body(request)
        event = errors.parse(formats.PagerDutyEvent, raw)
        integration = await authenticate(runtime, event.routing_key, "pagerduty", where="routing_key")
        signal = formats.pagerduty_signal(event, raw, runtime.clock.now())
        [result] = await ingest_alerts(runtime, integration, [signal], _correlation(request))
        return JSONAnswer(
            {
                "status": "success",
                "message": "Event processed",
                "dedup_key": result.dedup_key,
                "incident_id": str(result.incident_id) if result.incident_id else None,
                "action": result.action.value,
            },
            status_code=202,
        )

    return await _guard(request, errors.pagerduty, work)


@router.post("/v1/incidents", status_code=201, openapi_extra=_json_schema(formats.ReportIn))
async def post_report(request: Request) -> JSONAnswer:
    """A person reports an incident. Bearer: the analyst/admin token, or an integration key."""

    async def work() -> JSONAnswer:
        runtime = _runtime(request)
        token = bearer_token(request)
        settings = runtime.settings
        roles = (("admin", settings.admin_token), ("analyst", settings.analyst_token))
        role = next((r for r, t in roles if token and hmac.compare_digest(token.encode(), t.encode())), None)
        integration: Integration | None = None
        if role is None:
            integration = await authenticate(runtime, token, "generic")
        who = f"role:{role}" if integration is None else integration.actor
        raw = await errors.json_body(request)
        body = errors.parse(formats.ReportIn, raw)
        report = formats.report_of(body, raw, runtime.clock.now(), authenticated=who)
        if integration is not None:
            report = replace(report, integration_id=str(integration.integration_id), integration_name=integration.name)
        # The actor is who authenticated; the reporter named in the body is a claim, kept as such
        # in the payload (anyone with a key could otherwise write events as any person).
        incident_id = await ingest_report(runtime, report, who, _correlation(request))
        return JSONAnswer({"status": "logged", "incident_id": str(incident_id)}, status_code=201)

    return await _guard(request, errors.standard, work)
