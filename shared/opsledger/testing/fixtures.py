"""Pytest plugin (registered as an entry point): the session's real infrastructure, and per-test
databases and topic prefixes so tests never see each other's events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from opsledger.testing.helpers import TestInfra
from opsledger.testing.tokens import TestTokens, session_tokens


@pytest.fixture(scope="session")
def infra() -> TestInfra:
    return TestInfra.from_env()


@pytest.fixture(scope="session")
def tokens() -> TestTokens:
    """Mint bearer tokens services trust: `Settings(**tokens.settings())`, `tokens.headers(sub, *roles)`."""
    return session_tokens()


@pytest.fixture
def topic_prefix(infra: TestInfra) -> str:
    return infra.unique("t")


@pytest.fixture
async def make_database(infra: TestInfra) -> AsyncIterator[Callable[..., object]]:
    """Factory: `url = await make_database()` creates a fresh database, dropped after the test."""
    created: list[str] = []

    async def make(name: str | None = None) -> str:
        name = name or infra.unique("db_")
        created.append(name)
        return await infra.create_database(name)

    yield make
    for name in created:
        await infra.drop_database(name)
