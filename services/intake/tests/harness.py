"""Running intake in-process against the real Kafka and PostgreSQL, and reading what it logged."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from intake.app import build
from intake.runtime import IntakeRuntime
from intake.settings import Settings
from opsledger.events import Envelope, Stream
from opsledger.testing import TestInfra, read_topic, running_app, session_tokens

TOKENS = session_tokens()
ADMIN = TOKENS.headers("test-admin", "admin", name="Test Admin")


@dataclass
class Intake:
    client: httpx.AsyncClient
    settings: Settings
    key: str  # an integration key of kind "any"
    app: FastAPI

    @property
    def runtime(self) -> IntakeRuntime:
        runtime: IntakeRuntime = self.app.state.runtime
        return runtime

    async def new_key(self, name: str, kind: str = "any", disabled: bool = False) -> str:
        """A further integration's key (disabled at once if asked)."""
        created = await self.client.post("/v1/integrations", json={"name": name, "kind": kind}, headers=ADMIN)
        assert created.status_code == 201, created.text
        if disabled:
            gone = await self.client.delete(f"/v1/integrations/{created.json()['integration_id']}", headers=ADMIN)
            assert gone.status_code == 200, gone.text
        key: str = created.json()["key"]
        return key

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def post(self, path: str, body: Any, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return await self.client.post(path, json=body, headers=headers)

    async def events(self, stream: Stream = Stream.INCIDENTS, at_least: int = 0) -> list[Envelope]:
        """Every event on the stream's topic, once there are at least `at_least`."""
        topic = self.settings.topic(stream)
        return await topic_events(self.settings.kafka_bootstrap, topic, at_least)


async def topic_events(bootstrap: str, topic: str, at_least: int = 0) -> list[Envelope]:
    if at_least:
        waited = await read_topic(bootstrap, topic, until=lambda rs: len(rs) >= at_least)
        assert len(waited) >= at_least, f"only {len(waited)} of the {at_least} events expected on {topic}"
    # Then read to the end, so a test also sees anything written beyond what it waited for.
    return [Envelope.from_bytes(r.value) for r in await read_topic(bootstrap, topic)]


def process_env(infra: TestInfra, database_url: str, topic_prefix: str, key: str, **settings: str) -> dict[str, str]:
    """The environment of intake run as a process (ServiceProcess) on the test servers, with
    `key` as its bootstrap integration key; `settings` by name (relay_lease_seconds="1")."""
    return {
        "OPSLEDGER_DATABASE_URL": database_url,
        "OPSLEDGER_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "OPSLEDGER_TOPIC_PREFIX": topic_prefix,
        "OPSLEDGER_TOPIC_PARTITIONS": "1",
        "OPSLEDGER_BOOTSTRAP_INTEGRATION_KEY": key,
        **{f"OPSLEDGER_{name.upper()}": value for name, value in settings.items()},
    }


async def make_settings(infra: TestInfra, make_database: Callable[..., Any], prefix: str, **overrides: Any) -> Settings:
    return Settings(
        database_url=await make_database(),
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=prefix,
        topic_partitions=1,
        relay_poll_seconds=0.05,
        log_json=False,
        **{**TOKENS.settings(), **overrides},
    )


@contextlib.asynccontextmanager
async def intake(settings: Settings) -> AsyncIterator[Intake]:
    app = build(settings)
    async with running_app(app) as client:
        created = await client.post("/v1/integrations", json={"name": "test"}, headers=ADMIN)
        assert created.status_code == 201, created.text
        yield Intake(client, settings, created.json()["key"], app)
