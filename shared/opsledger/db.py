"""Per-service async engine, sessions, and the backbone tables (outbox, inbox) every service has."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from opsledger.settings import ServiceSettings


def make_engine(settings: ServiceSettings) -> AsyncEngine:
    # A warm pool: opening a connection per request is what caps typical Python servers.
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=settings.db_pool_pre_ping,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def backbone_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """Declare the outbox and inbox tables on a service's metadata."""
    outbox = sa.Table(
        "outbox",
        metadata,
        # Relay order = insertion order = causal order for one incident.
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
    )
    sa.Index("outbox_unsent", outbox.c.id, postgresql_where=outbox.c.sent_at.is_(None))
    inbox = sa.Table(
        "inbox",
        metadata,
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    return outbox, inbox


# The backbone tables live on their own metadata so every service's migration can create them
# with one call and the bus code can address them without knowing the service.
backbone_metadata = sa.MetaData()
outbox_table, inbox_table = backbone_tables(backbone_metadata)
