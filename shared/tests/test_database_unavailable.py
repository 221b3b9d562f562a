"""What counts as "the database is away" (answered 503 + Retry-After, retried later), however the
driver's error reaches the caller."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc

from opsledger.db import unavailable


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
