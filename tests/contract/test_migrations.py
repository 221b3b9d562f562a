"""Each service's migrations (its own branch plus the shared backbone branch) create exactly the
tables its code declares: Alembic's autogenerate comparison finds nothing to change."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from opsledger import migrations
from opsledger.db import backbone_metadata
from opsledger.testing import TestInfra

pytestmark = pytest.mark.integration
SERVICES = ["intake", "triage", "assignment", "sla", "resolution", "reporting"]


def _differences(connection: sa.Connection, metadata: list[sa.MetaData]) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": False})
    return list(compare_metadata(context, metadata))


@pytest.mark.parametrize("service", SERVICES)
async def test_migrated_schema_matches_the_code(service: str, infra: TestInfra, make_database: Any) -> None:
    url = await make_database()
    app = importlib.import_module(f"{service}.app")
    store = importlib.import_module(f"{service}.store")
    await migrations.upgrade_async(app.MIGRATIONS, url)
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            found = await conn.run_sync(_differences, [store.metadata, backbone_metadata])
    finally:
        await engine.dispose()
    # alembic_version is Alembic's own; anything else is drift between the code and the migrations.
    drift = [d for d in found if not (d[0] == "remove_table" and d[1].name == "alembic_version")]
    assert drift == [], f"{service}: the migrations and the code disagree: {drift}"
