"""Alert and report endpoints. Each answers 2xx only after its events are committed to the outbox
in the same transaction as intake's state; bad input gets a 4xx naming the field, never a 5xx."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from intake import errors, formats
from intake.domain import Action
from intake.errors import FieldError, JSONAnswer, PagerDutyError, Rejected
from intake.ingest import ingest_alerts, ingest_report
from intake.integration_keys import Integration
from intake.integrations import authenticate
from intake.runtime import IntakeRuntime
from opsledger.auth import Principal, bearer_token, check_roles, looks_like_jwt, verifier_of
from opsledger.db import unavailable
from opsledger.logs import current_correlation_id
from opsledger.problems import ProblemDetails

log = logging.getLogger(__name__)
router = APIRouter(tags=["alerts"])
# Who may report an incident with a person's token (an integration key may too).
REPORT_ROLES = ("reporter", "responder", "manager", "admin")


def _runtime(request: Request) -> IntakeRuntime:
    runtime: IntakeRuntime = request.app.state.runtime
    return runtime


def _correlation(request: Request) -> str:
    # The id the request's log lines carry and the answer's `x-correlation-id` header echoes (the
    # caller's X-Correlation-ID / X-Request-ID when it sent a clean one), so a caller can find
    # the events its request caused.
    return current_correlation_id() or str(uuid.uuid4())


async def _guard(
    request: Request, render: Callable[[Rejected], Response], work: Callable[[], Awaitable[Response]]
) -> Response:
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
    except Exception as exc:
        if not unavailable(exc):
            raise
        # The database is unreachable or its pool is exhausted: nothing was committed; retry.
        log.warning("database unavailable: %r", exc)
        return render(Rejected(503, "database unavailable, retry later", headers={"Retry-After": "1"}))


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON Schema as the route's documented request body. The routes read their bodies
    by hand (size, depth and error shapes matter), so FastAPI must not parse them: it only shows this."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        # Self-contained: FastAPI puts only the models it parses or answers in components, and
        # "#/$defs/..." would point at the root of the OpenAPI document.
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


# --- the answers (documentation: the hot paths answer orjson-encoded dicts, written below) ------------


class AlertResult(BaseModel):
    """What intake did with one alert."""

    dedup_key: str
    action: Action
    incident_id: uuid.UUID | None


class AlertAccepted(BaseModel):
    status: Literal["accepted"]
    dedup_key: str
    action: Action
    incident_id: uuid.UUID | None


class WebhookAccepted(BaseModel):
    status: Literal["accepted"]
    incident_ids: list[uuid.UUID]
    alerts: list[AlertResult]


class PagerDutyAccepted(BaseModel):
    """PagerDuty's own answer, plus what intake did."""

    status: Literal["success"]
    message: Literal["Event processed"]
    dedup_key: str
    incident_id: uuid.UUID | None
    action: Action


class ReportLogged(BaseModel):
    status: Literal["logged"]
    incident_id: uuid.UUID


# The routes alert sources post to: answered without the router's overhead (app.DirectIngestRoutes).
INGEST_PATHS = frozenset({"/v1/alerts", "/v1/integrations/alertmanager", "/v2/enqueue"})
# Every way a standard ingest route says no, as problem details.
INGEST_PROBLEMS = ProblemDetails.responses(400, 401, 403, 413, 415, 422, 503)
# /v2/enqueue says no as PagerDuty does; a body over the size limit is refused (413) before any
# route runs, as problem details.
PAGERDUTY_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": PagerDutyError} for status in (400, 401, 403, 413, 415, 503)
}
PAGERDUTY_ERRORS[413]["content"] = ProblemDetails.responses(413)[413]["content"]


@router.post(
    "/v1/alerts",
    status_code=202,
    response_model=AlertAccepted,
    responses=INGEST_PROBLEMS,
    openapi_extra=_request_body(formats.GenericAlert),
)
async def post_alert(request: Request) -> Response:
    """A generic JSON alert (see README). `Authorization: Bearer <integration key>`."""

    async def work() -> JSONAnswer:
        runtime = _runtime(request)
        integration = await authenticate(runtime, bearer_token(request), "generic")
        raw = await errors.json_body(request)
        alert = errors.parse(formats.GenericAlert, raw)
        signal = formats.generic_signal(alert, raw, runtime.clock.now(), integration)
        [result] = await ingest_alerts(runtime, integration, [signal], _correlation(request))
        return JSONAnswer({"status": "accepted", **result.json()}, status_code=202)

    return await _guard(request, errors.standard, work)


@router.post(
    "/v1/integrations/alertmanager",
    status_code=202,
    response_model=WebhookAccepted,
    responses=INGEST_PROBLEMS,
    openapi_extra=_request_body(formats.AlertmanagerWebhook),
)
async def post_alertmanager(request: Request) -> Response:
    """Prometheus Alertmanager webhook (version 4) or Grafana-managed alerting webhook, as sent."""

    async def work() -> JSONAnswer:
        runtime = _runtime(request)
        integration = await authenticate(runtime, bearer_token(request), "alertmanager")
        raw = await errors.json_body(request)
        hook = errors.parse(formats.AlertmanagerWebhook, raw)
        if hook.truncatedAlerts:
            # Alertmanager's `max_alerts` cut the group: those alerts never reach us.
            log.warning("%s webhook dropped %d alerts (max_alerts)", hook.source, hook.truncatedAlerts)
        signals = formats.alertmanager_signals(hook, raw, runtime.clock.now(), integration)
        results = await ingest_alerts(runtime, integration, signals, _correlation(request))
        incident_ids = list(dict.fromkeys(str(r.incident_id) for r in results if r.incident_id))
        return JSONAnswer(
            {"status": "accepted", "incident_ids": incident_ids, "alerts": [r.json() for r in results]},
            status_code=202,
        )

    return await _guard(request, errors.standard, work)


@router.post(
    "/v2/enqueue",
    status_code=202,
    response_model=PagerDutyAccepted,
    responses=PAGERDUTY_ERRORS,
    openapi_extra=_request_body(formats.PagerDutyEvent),
)
async def post_pagerduty(request: Request) -> Response:
    """PagerDuty Events API v2: `routing_key` is the integration key. Answers as PagerDuty does."""

    async def work() -> JSONAnswer:
        runtime = _runtime(request)
        raw = await errors.json_body(request)
        event = errors.parse(formats.PagerDutyEvent, raw)
        integration = await authenticate(runtime, event.routing_key, "pagerduty", where="routing_key")
        signal = formats.pagerduty_signal(event, raw, runtime.clock.now(), integration)
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


def _claimed_reporter(principal: Principal) -> formats.ReporterIn | None:
    """The reporter a person's token names (its name and email claims), as far as they are valid."""
    for claimed in (
        {"name": principal.name, "email": principal.email},
        {"name": principal.name},
        {"email": principal.email},
    ):
        try:
            reporter = formats.ReporterIn.model_validate(claimed)
        except ValidationError:
            continue
        if reporter.name or reporter.email:
            return reporter
    return None


@router.post(
    "/v1/incidents",
    status_code=201,
    response_model=ReportLogged,
    responses=INGEST_PROBLEMS,
    openapi_extra=_request_body(formats.ReportIn),
)
async def post_report(request: Request) -> Response:
    """A person reports an incident. Bearer: a person's JWT (roles reporter, responder, manager or
    admin), or an integration key."""

    async def work() -> JSONAnswer:
        runtime = _runtime(request)
        token = bearer_token(request)
        if token is None:
            message = "missing bearer token: a person's JWT or an integration key"
            raise Rejected(
                401,
                f"authorization: {message}",
                [FieldError("authorization", message)],
                {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{message}"'},
            )
        principal: Principal | None = None
        integration: Integration | None = None
        if looks_like_jwt(token):
            principal = check_roles(await verifier_of(request).verify(token), REPORT_ROLES)
            who = principal.actor
        else:
            integration = await authenticate(runtime, token, "generic")
            who = integration.actor
        raw = await errors.json_body(request)
        body = errors.parse(formats.ReportIn, raw)
        if principal is not None and (body.reporter is None or not (body.reporter.name or body.reporter.email)):
            body = body.model_copy(update={"reporter": _claimed_reporter(principal)})
        report = formats.report_of(body, raw, runtime.clock.now(), authenticated=who)
        if integration is not None:
            report = replace(report, integration_id=str(integration.integration_id), integration_name=integration.name)
        # The actor is who authenticated; the reporter named in the body is a claim, kept as such
        # in the payload (anyone with a key could otherwise write events as any person).
        incident_id = await ingest_report(runtime, report, who, _correlation(request))
        return JSONAnswer({"status": "logged", "incident_id": str(incident_id)}, status_code=201)

    return await _guard(request, errors.standard, work)
