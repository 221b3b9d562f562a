"""Alembic wiring shared by every service: each service's migrations/env.py calls run_env(), and
upgrade() runs a service's migrations to head from code (at start, or from `make migrate`)."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import sqlalchemy as sa
from alembic import command, context
from alembic.config import Config
from alembic.operations import Operations
from sqlalchemy.ext.asyncio import create_async_engine

from opsledger.db import backbone_metadata

# Several replicas starting at once must not run the same migration twice.
MIGRATION_LOCK_ID = zlib.crc32(b"opsledger.migrations")


def create_backbone(op: Operations) -> None:
    """Create the outbox and inbox tables (call from a service's first migration)."""
    backbone_metadata.create_all(op.get_bind())


def drop_backbone(op: Operations) -> None:
    backbone_metadata.drop_all(op.get_bind())


def _config(script_location: Path, database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(script_location: Path, database_url: str, revision: str = "head") -> None:
    """Blocking: call from a thread (asyncio.to_thread) when a loop is already running."""
    command.upgrade(_config(script_location, database_url), revision)


def run_env(target_metadata: sa.MetaData | None = None) -> None:
    """Body of a service's migrations/env.py (online mode, async engine, advisory lock)."""
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"

    def do_run(connection: sa.Connection) -> None:
        connection.execute(sa.select(sa.func.pg_advisory_lock(MIGRATION_LOCK_ID)))
        connection.commit()  # the lock is session-level; let Alembic own the transactions
        try:
            context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            connection.execute(sa.select(sa.func.pg_advisory_unlock(MIGRATION_LOCK_ID)))
            connection.commit()

    async def main() -> None:
        engine = create_async_engine(url, poolclass=sa.pool.NullPool)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(do_run)
        finally:
            await engine.dispose()

    asyncio.run(main())
