"""Group commit: requests that arrive together share one transaction, yet each is answered as if
alone: a request that cannot be written (an event too large for the log) fails by itself."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from intake import store
from intake.domain import AlertState, Status
from intake.group_commit import BATCH_SIZE
from opsledger.db import make_engine, pooled_driver
from opsledger.testing import TestInfra, eventually

from .harness import intake, make_settings
from .samples import generic_alert

pytestmark = pytest.mark.integration


def _committed_batches() -> tuple[float, float]:
    """(transactions, requests) committed together so far, from the histogram."""
    samples = {s.name: s.value for s in next(iter(BATCH_SIZE.collect())).samples}
    return samples["opsledger_intake_group_commit_requests_count"], samples[
        "opsledger_intake_group_commit_requests_sum"
    ]


async def test_requests_waiting_together_commit_together_and_fail_alone(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:
        warm = await svc.post("/v1/alerts", generic_alert(dedup_key="warm"))  # caches the key
        assert warm.status_code == 202, warm.text
        before = _committed_batches()
        too_large = generic_alert(dedup_key="huge", annotations={f"n{i}": "x" * 60_000 for i in range(17)})
        bodies = [generic_alert(dedup_key=f"together-{i}") for i in range(20)]
        async with svc.runtime.group_commit.paused():
            posts = [
                asyncio.create_task(svc.post("/v1/alerts", body)) for body in [*bodies[:10], too_large, *bodies[10:]]
            ]

            async def all_waiting() -> bool:
                return svc.runtime.group_commit.waiting == len(posts)

            await eventually(all_waiting, what="every request waiting")
        answers = await asyncio.gather(*posts)
    assert [a.status_code for a in answers] == [202] * 10 + [413] + [202] * 10, [a.text for a in answers]
    transactions, requests = (after - b for after, b in zip(_committed_batches(), before, strict=True))
    # Whichever transaction held the big one failed, and its requests were committed one by one.
    assert requests == 20 and transactions in (2, 20, 21), (transactions, requests)
    engine = make_engine(settings)
    async with engine.connect() as conn:
        keys = set((await conn.execute(sa.select(store.alert_state.c.dedup_key))).scalars())
    await engine.dispose()
    assert keys == {"warm"} | {f"together-{i}" for i in range(20)}, "the refused request wrote nothing"


async def test_waiting_requests_share_one_transaction(infra: TestInfra, make_database: Any, topic_prefix: str) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:
        assert (await svc.post("/v1/alerts", generic_alert(dedup_key="warm"))).status_code == 202
        before = _committed_batches()
        async with svc.runtime.group_commit.paused():
            posts = [asyncio.create_task(svc.post("/v1/alerts", generic_alert(dedup_key=f"k{i}"))) for i in range(30)]

            async def all_waiting() -> bool:
                return svc.runtime.group_commit.waiting == len(posts)

            await eventually(all_waiting, what="every request waiting")
        answers = await asyncio.gather(*posts)
    assert all(a.status_code == 202 for a in answers)
    transactions, requests = (after - b for after, b in zip(_committed_batches(), before, strict=True))
    assert requests == 30 and transactions <= 2, f"{requests} requests took {transactions} transactions"


async def test_states_saved_together_read_back_as_saved_and_only_in_their_integration(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    t0 = datetime(2026, 11, 30, 9, 0, 0, 123456, tzinfo=UTC)
    saved = {
        "fresh": AlertState(Status.FIRING, uuid.uuid4(), occurrence_count=1, first_seen=t0, last_seen=t0),
        "flapping": AlertState(
            Status.RESOLVED,
            uuid.uuid4(),
            occurrence_count=7,
            first_seen=t0,
            last_seen=t0 + timedelta(minutes=9),
            transitions=(t0, t0 + timedelta(seconds=1, microseconds=5)),
            flapping_since=t0,
            resolved_episode=t0 - timedelta(hours=1),
            reopenable_until=t0 + timedelta(days=7),
        ),
    }
    keys = ["fresh", "flapping", "untouched"]
    async with intake(settings) as svc:
        async with pooled_driver(svc.runtime.engine) as conn, conn.transaction():
            before = await store.lock_states(conn, "integration-a", keys)
            await store.lock_states(conn, "integration-b", ["fresh"])  # the same key, another integration
            await store.save_states(conn, "integration-a", saved)
        async with pooled_driver(svc.runtime.engine) as conn, conn.transaction():
            after = await store.lock_states(conn, "integration-a", keys)
            other = await store.lock_states(conn, "integration-b", ["fresh"])
    assert before == dict.fromkeys(keys, AlertState())
    assert after == {**saved, "untouched": AlertState()}
    assert other == {"fresh": AlertState()}
