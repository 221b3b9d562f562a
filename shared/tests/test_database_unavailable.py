"""What counts as "the database is away" (answered 503 + Retry-After, retried later), however the
driver's error reaches the caller."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from opsledger.db import make_engine, unavailable
from opsledger.settings import ServiceSettings
from opsledger.testing import eventually


def wrapped(cause: Exception) -> sa_exc.DBAPIError:
    """The error as SQLAlchemy raises it when opening a connection fails: its generic DBAPIError."""
    try:
        try:
            raise cause
        except Exception as error:
            raise sa_exc.DBAPIError("connect", None, error) from error
    except sa_exc.DBAPIError as outer:
        return outer


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
)
def test_the_database_going_away_is_recognised_plain_or_wrapped(error: Exception) -> None:
    assert unavailable(error)
    assert unavailable(wrapped(error))


def test_an_error_of_the_request_itself_is_not_the_database_away() -> None:
    duplicate = asyncpg.exceptions.UniqueViolationError("duplicate key value violates unique constraint")
    assert not unavailable(duplicate)
    assert not unavailable(wrapped(duplicate))
    assert not unavailable(ValueError("no"))


@pytest.mark.integration
async def test_a_pooled_connection_the_server_closed_is_replaced_at_checkout(
    make_database: Callable[..., Any],
) -> None:
    """No ping round trip, yet a connection whose backend was terminated (as a restart does) is
    never handed out: the next checkout opens a fresh one and its statement runs."""
    engine = make_engine(ServiceSettings(database_url=await make_database(), db_pool_size=1))
    try:
        async with engine.connect() as other:  # held: the pool's overflow, used to terminate
            async with engine.connect() as conn:
                first = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
                driver = (await conn.get_raw_connection()).driver_connection
            await other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": first})

        async def noticed() -> bool:
            await asyncio.sleep(0)  # the event loop reads the server's goodbye
            return bool(driver.is_closed())

        await eventually(noticed, timeout=10, what="the driver saw its connection closed")
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT pg_backend_pid()")) != first
    finally:
        await engine.dispose()
