"""PostgreSQL dies while intake is under load (an immediate shutdown: every session cut, no
checkpoint, crash recovery on restart): every answer is a 202 or a 503 with
Retry-After (never a 500), and every alert answered 202 opens exactly one incident on the log once
the database is back. Intake runs as a real process against a PostgreSQL cluster of this test's own."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsledger.testing import ServiceProcess, TestInfra, eventually
from opsledger.testing.helpers import free_port

from .harness import process_env, topic_events
from .samples import generic_alert

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
KEY = "pg-dies-test-key-0123456789abcdef"
ALERTS, CONCURRENCY = 1200, 32


class PrivatePostgres:
    """A throwaway cluster (deploy/local/postgres.sh), so killing it disturbs no other test."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, "PG_PORT": str(self.port), "PG_DIR": str(root / "pg")}

    def run(self, *args: str) -> None:
        subprocess.run([str(REPO / "deploy/local/postgres.sh"), *args], env=self.env, check=True, capture_output=True)

    def crash(self) -> None:
        # Not a SIGKILL of the postmaster: where nothing reaps it, its zombie keeps the lock file
        # "alive" and the restart is refused.
        self.run("crash")


@pytest.fixture
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(tmp_path_factory.mktemp("pgdies"))
    pg.run("start")
    pg.run("createdb", "intake")
    yield pg
    subprocess.run([str(REPO / "deploy/local/postgres.sh"), "stop"], env=pg.env, capture_output=True)


async def test_postgres_dying_under_load_answers_503_never_500_and_loses_nothing(
    infra: TestInfra, topic_prefix: str, postgres: PrivatePostgres
) -> None:
    url = f"postgresql+asyncpg://opsledger@127.0.0.1:{postgres.port}/intake"
    env = process_env(infra, url, topic_prefix, KEY, max_wait_seconds="1")
    process = ServiceProcess("intake", env)
    process.start()
    answers: dict[str, int] = {}
    retry_after: list[bool] = []
    try:
        await process.wait_ready()
        keys = iter(range(ALERTS))
        killed = asyncio.Event()

        async def post(client: httpx.AsyncClient) -> None:
            for n in keys:
                dedup = f"pg-dies-{n}"
                try:
                    response = await client.post("/v1/alerts", json=generic_alert(dedup_key=dedup))
                except httpx.TransportError:
                    continue  # no answer at all is not an answer
                answers[dedup] = response.status_code
                if response.status_code == 503:
                    retry_after.append("retry-after" in response.headers)
                if len(answers) == ALERTS // 4 and not killed.is_set():
                    killed.set()
                    await asyncio.to_thread(postgres.crash)

        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=process.url, headers=headers, timeout=30) as client:
            await asyncio.gather(*(post(client) for _ in range(CONCURRENCY)))
        assert killed.is_set()
        statuses = Counter(answers.values())
        assert set(statuses) <= {202, 503}, f"answers: {statuses} (see {process.log_path})"
        assert statuses[202] >= ALERTS // 4 and statuses[503] > 0, statuses
        assert all(retry_after), "every 503 says when to retry"

        await asyncio.to_thread(postgres.run, "start")  # crash recovery; intake reconnects by itself
        accepted = {k for k, status in answers.items() if status == 202}

        async def all_on_the_log() -> list[Any]:
            events = await topic_events(infra.kafka_bootstrap, f"{topic_prefix}.incidents")
            logged = [e for e in events if e.event_type == "IncidentLogged"]
            return logged if {e.payload["dedup_key"] for e in logged} >= accepted else []

        logged = await eventually(all_on_the_log, timeout=60, interval=0.5, what="every 202 on the log")
    finally:
        process.kill(signal.SIGKILL)
    # One incident per accepted alert. The same event may be on the log twice: the relay's "sent"
    # marks commit without waiting for the disk (outbox._PASS), so the crash can take the last of
    # them, and those rows are published again; consumers' inboxes absorb a repeat by its event id.
    events_per_key: dict[str, set[Any]] = {}
    for e in logged:
        events_per_key.setdefault(e.payload["dedup_key"], set()).add((e.event_id, e.incident_id))
    assert all(len(events_per_key[k]) == 1 for k in accepted), "no accepted alert logged twice"
