"""An endpoint that writes through `UnitOfWorkDep` has committed (state and events) before its
answer is sent, and one that fails after staging writes nothing. The body limit answers 413 as a
problem document."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import APIRouter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsledger.db import outbox_table
from opsledger.events import EventPayload, Stream, event, new_event, registry
from opsledger.problems import Problem
from opsledger.service import UnitOfWorkDep, create_app
from opsledger.settings import ServiceSettings
from opsledger.testing import TestInfra, running_app

from .test_service_startup import MIGRATIONS

pytestmark = pytest.mark.integration

if not registry.knows("UowNoted"):

    @event("UowNoted", 1, Stream.INCIDENTS)
    class UowNoted(EventPayload):
        text: str


router = APIRouter()


@router.post("/notes/{text}", status_code=201)
async def note(text: str, uow: UnitOfWorkDep) -> dict[str, str]:
    envelope = new_event(registry.model("UowNoted")(text=text), producer="t", actor="t", incident_id=uuid.uuid4())
    uow.emit(envelope)
    if text == "refused":
        raise Problem(409, "refused after staging: nothing may be written")
    return {"event_id": str(envelope.event_id)}


async def outbox_ids(app: Any) -> list[str]:
    async with app.state.runtime.engine.connect() as conn:
        return [str(i) for i in (await conn.execute(sa.select(outbox_table.c.event_id))).scalars()]


async def test_a_unit_of_work_commits_before_the_answer_and_not_at_all_on_failure(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = ServiceSettings(
        service_name="uow-test",
        database_url=await make_database(),
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topic_prefix,
    )
    app = create_app(settings, title="t", migrations_dir=MIGRATIONS, routers=[router], max_body_bytes=100)
    at_answer: list[list[str]] = []

    class LookWhenAnswering:
        """What the database holds at the moment the answer starts going out."""

        def __init__(self, inner: ASGIApp) -> None:
            self.inner = inner

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async def watched(message: Message) -> None:
                if message["type"] == "http.response.start" and scope["path"] == "/notes/hello":
                    at_answer.append(await outbox_ids(app))
                await send(message)

            await self.inner(scope, receive, watched)

    app.add_middleware(LookWhenAnswering)
    async with running_app(app) as client:
        created = await client.post("/notes/hello")
        assert created.status_code == 201, created.text
        assert at_answer == [[created.json()["event_id"]]], "committed before the answer was sent"

        refused = await client.post("/notes/refused")
        assert refused.status_code == 409
        assert refused.headers["content-type"] == "application/problem+json"
        assert await outbox_ids(app) == [created.json()["event_id"]]

        too_large = await client.post("/notes/big", content=b"x" * 101)
        assert too_large.status_code == 413
        assert too_large.headers["content-type"] == "application/problem+json"
        assert too_large.json()["errors"] == [{"field": "body", "message": "request body is larger than 100 bytes"}]
