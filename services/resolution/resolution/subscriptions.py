"""Subscriptions over HTTP: who hears about which incident events, through which channel (create,
list, change, delete, each announced on the configuration stream without its secret), and the
deliveries made for one, with every attempt."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from opsledger.auth import Principal, require_roles
from opsledger.events import EventPayload, new_event
from opsledger.events.resolution import (
    Audience,
    ChannelKind,
    SubscriptionChanged,
    SubscriptionDeleted,
    SubscriptionFilter,
)
from opsledger.problems import FieldError, Problem, ProblemDetails
from opsledger.service import UnitOfWorkDep
from resolution import domain, notify, store
from resolution.runtime import ResolutionRuntimeDep
from resolution.settings import Settings

router = APIRouter(prefix="/v1/subscriptions", tags=["subscriptions"])
manage_access = require_roles("admin", "manager")
CHANGE = ProblemDetails.responses(401, 403, 404, 409, 422)
READ = ProblemDetails.responses(401, 403, 404, 422)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilterBody(_Body):
    event_types: list[str] = Field(default_factory=list, max_length=100, description="empty: every type")
    teams: list[str] = Field(default_factory=list, max_length=100)
    services: list[str] = Field(default_factory=list, max_length=100)
    priorities: list[str] = Field(default_factory=list, max_length=5)
    audiences: list[Audience] = Field(default_factory=list, max_length=2, description="for IncidentStatusUpdated")
    assignee_only: StrictBool = Field(
        default=False, description="email only: send to the incident's assignee (paging); the target is the fallback"
    )


class SubscriptionBody(_Body):
    name: str | None = Field(default=None, max_length=200)
    channel: ChannelKind
    target: str = Field(min_length=1, max_length=2048, description="the webhook URL, or the email address")
    filters: FilterBody = Field(default_factory=FilterBody)
    enabled: StrictBool = True
    comment: str | None = Field(default=None, max_length=2000)
    secret: str | None = Field(
        default=None, min_length=16, max_length=200, description="the signing secret; default: generated"
    )


class ChangeBody(SubscriptionBody):
    expected_version: StrictInt | None = Field(default=None, ge=1, description="refused (409) when no longer current")
    rotate_secret: StrictBool = Field(
        default=False, description="a new secret; the old one keeps signing too until the next rotation"
    )


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubscriptionOut(_Out):
    subscription_id: str
    version: int
    name: str | None
    channel: ChannelKind
    target: str
    filters: SubscriptionFilter
    enabled: bool
    comment: str | None
    changed_by: str
    changed_at: datetime
    rotating: bool = Field(description="two secrets sign (the previous one is being rotated out)")


class SubscriptionSaved(SubscriptionOut):
    secret: str | None = Field(description="the signing secret, shown once when it is created or rotated")


class SubscriptionList(_Out):
    subscriptions: list[SubscriptionOut]


class Deleted(_Out):
    subscription_id: str
    version: int
    deleted: bool


class AttemptOut(_Out):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryOut(_Out):
    event_id: uuid.UUID
    event_type: str
    incident_id: uuid.UUID | None
    idempotency_key: str
    target: str
    status: str = Field(description="pending | delivered | failed")
    attempts: list[AttemptOut]
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None


class DeliveryList(_Out):
    subscription_id: str
    deliveries: list[DeliveryOut] = Field(description="newest first")


def _invalid(field: str, message: str) -> Problem:
    return Problem(422, f"field '{field}': {message}", [FieldError(field, message)])


def _definition(subscription_id: str, version: int, body: SubscriptionBody, settings: Settings) -> SubscriptionChanged:
    try:
        if body.channel is ChannelKind.EMAIL:
            if settings.smtp_host is None:
                raise _invalid(
                    "body.channel", "email needs an SMTP server, and none is configured (OPSLEDGER_SMTP_HOST)"
                )
            notify.check_email(body.target)
        else:
            notify.check_webhook_url(body.target, settings.webhook_allowed_hosts)
    except notify.InvalidTarget as exc:
        raise _invalid("body.target", str(exc)) from exc
    if body.filters.assignee_only and body.channel is not ChannelKind.EMAIL:
        raise _invalid("body.filters.assignee_only", "applies to email subscriptions only")
    unknown = sorted(set(body.filters.event_types) - notify.NOTIFY_TYPES)
    if unknown:
        raise _invalid("body.filters.event_types", f"unknown {unknown}; expected some of {sorted(notify.NOTIFY_TYPES)}")
    bad = [p for p in body.filters.priorities if p not in ("P1", "P2", "P3", "P4", "P5")]
    if bad:
        raise _invalid("body.filters.priorities", f"expected P1..P5, got {bad}")
    return SubscriptionChanged(
        subscription_id=subscription_id,
        version=version,
        name=body.name,
        channel=body.channel,
        target=body.target,
        filters=SubscriptionFilter(**body.filters.model_dump()),
        enabled=body.enabled,
        comment=body.comment,
    )


def _announce(uow: UnitOfWorkDep, payload: EventPayload, subscription_id: str, actor: str) -> None:
    subject = f"resolution.subscriptions.{subscription_id}"
    uow.emit(new_event(payload, producer=domain.PRODUCER, actor=actor, subject=subject, occurred_at=uow.now))


def _out(row: Any) -> dict[str, Any]:
    """A stored subscription as answered (a result row, or the mapping just saved), without secrets."""
    values: Mapping[str, Any] = row if isinstance(row, Mapping) else row._mapping
    d = values["definition"]
    return {
        **{k: d.get(k) for k in ("subscription_id", "version", "name", "channel", "target", "filters", "enabled")},
        "comment": d.get("comment"),
        "changed_by": values["changed_by"],
        "changed_at": values["changed_at"],
        "rotating": values["previous_secret"] is not None,
    }


async def _current(uow: UnitOfWorkDep, subscription_id: str) -> Any:
    await store.lock_subscriptions(uow.session)
    rows = await store.subscription_rows(uow.session, [subscription_id])
    if not rows:
        raise Problem(404, f"no subscription {subscription_id}", [FieldError("path.subscription_id", "unknown")])
    return rows[0]


async def _save(
    uow: UnitOfWorkDep, definition: SubscriptionChanged, secret: str, previous: str | None, actor: str
) -> dict[str, Any]:
    row = {
        "subscription_id": definition.subscription_id,
        "version": definition.version,
        "definition": definition.model_dump(mode="json"),
        "enabled": definition.enabled,
        "secret": secret,
        "previous_secret": previous,
        "changed_by": actor,
        "changed_at": uow.now,
    }
    await store.save_subscription(uow.session, row)
    _announce(uow, definition, definition.subscription_id, actor)
    return row


@router.post("", response_model=SubscriptionSaved, status_code=status.HTTP_201_CREATED, responses=CHANGE)
async def create_subscription(
    body: SubscriptionBody, runtime: ResolutionRuntimeDep, uow: UnitOfWorkDep, who: Principal = Depends(manage_access)
) -> dict[str, Any]:
    """Subscribe a webhook or an email address to incident events -> SubscriptionChanged (version 1).
    The signing secret (webhooks) is answered once."""
    subscription_id = f"sub-{uuid.uuid4().hex[:12]}"
    definition = _definition(subscription_id, 1, body, runtime.settings)
    secret = body.secret or secrets.token_urlsafe(32)
    row = await _save(uow, definition, secret, None, who.actor)
    return {**_out(row), "secret": secret}


@router.get("", response_model=SubscriptionList, responses=READ)
async def list_subscriptions(runtime: ResolutionRuntimeDep, _: Principal = Depends(manage_access)) -> dict[str, Any]:
    """Every subscription (secrets are never shown again)."""
    async with runtime.sessionmaker() as session:
        rows = await store.subscription_rows(session)
    return {"subscriptions": [_out(r) for r in rows]}


@router.put("/{subscription_id}", response_model=SubscriptionSaved, responses=CHANGE)
async def change_subscription(
    subscription_id: str,
    body: ChangeBody,
    runtime: ResolutionRuntimeDep,
    uow: UnitOfWorkDep,
    who: Principal = Depends(manage_access),
) -> dict[str, Any]:
    """Change a subscription (a new version) -> SubscriptionChanged; optionally rotate its secret."""
    current = await _current(uow, subscription_id)
    if body.expected_version is not None and body.expected_version != current.version:
        message = f"version {current.version} is current, not {body.expected_version}; reload and reapply"
        raise Problem(409, f"field 'body.expected_version': {message}", [FieldError("body.expected_version", message)])
    definition = _definition(subscription_id, current.version + 1, body, runtime.settings)
    if body.rotate_secret or body.secret is not None:
        secret, previous, shown = body.secret or secrets.token_urlsafe(32), current.secret, True
    else:
        secret, previous, shown = current.secret, current.previous_secret, False
    row = await _save(uow, definition, secret, previous, who.actor)
    return {**_out(row), "secret": secret if shown else None}


@router.delete("/{subscription_id}", response_model=Deleted, responses=CHANGE)
async def delete_subscription(
    subscription_id: str,
    runtime: ResolutionRuntimeDep,
    uow: UnitOfWorkDep,
    reason: str | None = Query(None, max_length=2000),
    who: Principal = Depends(manage_access),
) -> dict[str, Any]:
    """Remove a subscription -> SubscriptionDeleted; its pending deliveries are given up."""
    current = await _current(uow, subscription_id)
    await store.delete_subscription(uow.session, subscription_id)
    deleted = SubscriptionDeleted(subscription_id=subscription_id, version=current.version, reason=reason)
    _announce(uow, deleted, subscription_id, who.actor)
    return {"subscription_id": subscription_id, "version": current.version, "deleted": True}


@router.get("/{subscription_id}/deliveries", response_model=DeliveryList, responses=READ)
async def subscription_deliveries(
    subscription_id: str,
    runtime: ResolutionRuntimeDep,
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = Depends(manage_access),
) -> dict[str, Any]:
    """The subscription's latest deliveries, each with every attempt made."""
    async with runtime.sessionmaker() as session:
        found = await store.deliveries_of(session, subscription_id, limit)
    return {
        "subscription_id": subscription_id,
        "deliveries": [
            {
                "event_id": d.event_id,
                "event_type": d.event_type,
                "incident_id": d.incident_id,
                "idempotency_key": d.idempotency_key,
                "target": d.target,
                "status": d.status,
                "attempts": [
                    {
                        "attempt": a.attempt,
                        "at": a.at,
                        "status_code": a.status_code,
                        "error": a.error,
                        "duration_ms": a.duration_ms,
                    }
                    for a in attempts
                ],
                "created_at": d.created_at,
                "next_attempt_at": d.next_attempt_at,
                "delivered_at": d.delivered_at,
            }
            for d, attempts in found
        ],
    }
