"""The two baselines bench/intake.py measures intake against, on the same machine in the same run:
`ceiling` only reads and parses the body and answers (what HTTP on this stack can do), and
`one_upsert` also does one upsert per request on the same PostgreSQL (what a typical
one-transaction-per-alert server can do). Run with uvicorn (`--app-dir bench/support`)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response


def _accepted() -> Response:
    return Response(b'{"status":"accepted"}', status_code=202, media_type="application/json")


ceiling = FastAPI()


@ceiling.post("/v1/alerts")
async def parse_and_answer(request: Request) -> Response:
    orjson.loads(await request.body())
    return _accepted()


@asynccontextmanager
async def _pool(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(os.environ["BASELINE_DSN"], min_size=10, max_size=20)
    async with app.state.pool.acquire() as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS baseline_alerts (dedup_key text PRIMARY KEY, body jsonb, n int)")
    yield
    await app.state.pool.close()


one_upsert = FastAPI(lifespan=_pool)


@one_upsert.post("/v1/alerts")
async def upsert(request: Request) -> Response:
    body = orjson.loads(await request.body())
    async with request.app.state.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO baseline_alerts VALUES ($1, $2, 1)"
            " ON CONFLICT (dedup_key) DO UPDATE SET n = baseline_alerts.n + 1",
            body["dedup_key"],
            orjson.dumps(body).decode(),
        )
    return _accepted()
