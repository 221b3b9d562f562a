"""Integration keys: created by an admin, shown once, stored as a sha256 hash, disabled by DELETE.
Alert endpoints authenticate with them (`Authorization: Bearer <key>`, or PagerDuty's
`routing_key`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path
from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints
from sqlalchemy.dialects.postgresql import insert as pg_insert

from intake.errors import FieldError, Rejected
from intake.formats import single_line
from intake.integration_keys import PRODUCER, Integration, hash_key, new_key
from intake.runtime import IntakeRuntime, IntakeRuntimeDep
from intake.store import integrations as table
from opsledger.auth import Principal, require_roles
from opsledger.events import new_event
from opsledger.events.envelope import derived_event_id
from opsledger.events.intake import IntegrationCreated, IntegrationDisabled
from opsledger.problems import Problem, ProblemDetails

Kind = Literal["alertmanager", "pagerduty", "generic", "any"]
BOOTSTRAP_NAMESPACE = uuid.UUID("0b9f8a4e-2d51-4c4e-9d0c-5c3a3f1e7a10")


async def lookup(runtime: IntakeRuntime, key: str) -> Integration | None:
    key_hash = hash_key(key)

    async def read() -> Integration | None:
        async with runtime.admission.slot(), runtime.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(table.c.integration_id, table.c.name, table.c.kind, table.c.disabled_at).where(
                        table.c.key_hash == key_hash
                    )
                )
            ).first()
        if row is None:
            return None
        return Integration(row.integration_id, row.name, row.kind, row.disabled_at is not None)

    return await runtime.key_cache.get_or_load(key_hash, read)


async def authenticate(runtime: IntakeRuntime, key: str | None, kind: str, where: str = "authorization") -> Integration:
    """The enabled integration owning `key`, allowed to post `kind`; else 401/403."""
    if not key:
        raise Rejected(
            401,
            f"{where}: missing integration key",
            [FieldError(where, "missing integration key")],
            {"WWW-Authenticate": "Bearer"},
        )
    integration = await lookup(runtime, key)
    if integration is None:
        raise Rejected(
            401,
            f"{where}: unknown integration key",
            [FieldError(where, "unknown integration key")],
            {"WWW-Authenticate": "Bearer"},
        )
    if integration.disabled:
        raise Rejected(
            403,
            f"{where}: integration {integration.name!r} is disabled",
            [FieldError(where, "integration is disabled")],
        )
    if not integration.allows(kind):
        raise Rejected(
            403,
            f"{where}: integration {integration.name!r} is for {integration.kind} alerts, not {kind}",
            [FieldError(where, f"integration kind {integration.kind} cannot post {kind}")],
        )
    return integration


# --- admin API -----------------------------------------------------------------------------------------

router = APIRouter(prefix="/v1/integrations", tags=["integrations"])
admin_only = require_roles("admin")


class IntegrationIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[
        str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True), AfterValidator(single_line)
    ]
    kind: Kind = "any"


class IntegrationOut(BaseModel):
    integration_id: uuid.UUID
    name: str
    kind: str
    key_prefix: str
    created_at: datetime
    created_by: str
    disabled_at: datetime | None = None


class IntegrationCreatedOut(IntegrationOut):
    key: str  # shown this once


def _out(row: sa.Row[tuple[object, ...]]) -> IntegrationOut:
    return IntegrationOut.model_validate(row._mapping, from_attributes=False)


@router.post(
    "", status_code=201, response_model=IntegrationCreatedOut, responses=ProblemDetails.responses(401, 403, 422)
)
async def create_integration(
    runtime: IntakeRuntimeDep, body: IntegrationIn, admin: Principal = Depends(admin_only)
) -> IntegrationCreatedOut:
    """Create an integration and its key. The key is in this answer only; store it now."""
    key = new_key()
    now = runtime.clock.now()
    integration_id = uuid.uuid4()
    row = {
        "integration_id": integration_id,
        "name": body.name,
        "kind": body.kind,
        "key_hash": hash_key(key),
        "key_prefix": key[:6],
        "created_at": now,
        "created_by": admin.actor,
    }
    event = new_event(
        IntegrationCreated(integration_id=str(integration_id), name=body.name, kind=body.kind, key_prefix=key[:6]),
        producer=PRODUCER,
        actor=admin.actor,
        subject=str(integration_id),
        occurred_at=now,
    )
    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(sa.insert(table).values(**row))
        await runtime.outbox.add(session, [event])
    return IntegrationCreatedOut(**{k: v for k, v in row.items() if k != "key_hash"}, key=key)


@router.get("", response_model=list[IntegrationOut], responses=ProblemDetails.responses(401, 403))
async def list_integrations(runtime: IntakeRuntimeDep, admin: Principal = Depends(admin_only)) -> list[IntegrationOut]:
    """Every integration, disabled ones included (never the keys)."""
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(table).order_by(table.c.created_at))).all()
    return [_out(r) for r in rows]


@router.delete(
    "/{integration_id}", response_model=IntegrationOut, responses=ProblemDetails.responses(401, 403, 404, 422)
)
async def disable_integration(
    runtime: IntakeRuntimeDep,
    integration_id: uuid.UUID = Path(description="the integration's id"),
    admin: Principal = Depends(admin_only),
) -> IntegrationOut:
    """Disable an integration: its key is refused from now on. Idempotent."""
    now = runtime.clock.now()
    async with runtime.sessionmaker() as session, session.begin():
        row = (
            await session.execute(sa.select(table).where(table.c.integration_id == integration_id).with_for_update())
        ).first()
        if row is None:
            raise Problem(
                404,
                f"path 'integration_id': no integration {integration_id}",
                [FieldError("path.integration_id", "no such integration")],
            )
        if row.disabled_at is None:
            await session.execute(
                sa.update(table).where(table.c.integration_id == integration_id).values(disabled_at=now)
            )
            event = new_event(
                IntegrationDisabled(integration_id=str(integration_id), reason=f"disabled by {admin.actor}"),
                producer=PRODUCER,
                actor=admin.actor,
                subject=str(integration_id),
                occurred_at=now,
            )
            await runtime.outbox.add(session, [event])
            row = (await session.execute(sa.select(table).where(table.c.integration_id == integration_id))).one()
    runtime.key_cache.forget(integration_id)
    return _out(row)


async def bootstrap(runtime: IntakeRuntime, key: str, name: str = "demo") -> None:
    """Idempotently make `key` a working integration (all replicas may race: one row, one event)."""
    key_hash = hash_key(key)
    integration_id = uuid.uuid5(BOOTSTRAP_NAMESPACE, key_hash)
    now = runtime.clock.now()
    async with runtime.sessionmaker() as session, session.begin():
        inserted = (
            await session.execute(
                pg_insert(table)
                .values(
                    integration_id=integration_id,
                    name=name,
                    kind="any",
                    key_hash=key_hash,
                    key_prefix=key[:6],
                    created_at=now,
                    created_by="system:intake",
                )
                .on_conflict_do_nothing()
                .returning(table.c.integration_id)
            )
        ).first()
        if inserted is not None:
            event = new_event(
                IntegrationCreated(integration_id=str(integration_id), name=name, kind="any", key_prefix=key[:6]),
                producer=PRODUCER,
                actor="system:intake",
                subject=str(integration_id),
                event_id=derived_event_id(integration_id, "IntegrationCreated"),
                occurred_at=now,
            )
            await runtime.outbox.add(session, [event])
    runtime.key_cache.forget_key(key_hash)  # a request that came first may have found it unknown
