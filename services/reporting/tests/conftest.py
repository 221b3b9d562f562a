"""Fixtures of the reporting tests: a migrated reporting database of its own per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from opsledger import migrations
from opsledger.db import make_engine, make_sessionmaker
from reporting.app import MIGRATIONS
from reporting.settings import Settings


@pytest.fixture
async def reporting_db(make_database: Callable[..., Any]) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    url = await make_database()
    await migrations.upgrade_async(MIGRATIONS, url)
    engine = make_engine(Settings(database_url=url))
    yield make_sessionmaker(engine)
    await engine.dispose()
