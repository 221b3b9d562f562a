"""Per-service async engine, sessions, after-commit hooks, and the backbone tables (outbox, inbox,
timers, leases) every service has."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import asyncpg
import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import PoolProxiedConnection

from opsledger.settings import ServiceSettings


def make_engine(settings: ServiceSettings) -> AsyncEngine:
    # A warm pool: opening a connection per request is what caps typical Python servers.
    engine = create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=settings.db_pool_pre_ping,
        connect_args={"server_settings": {"plan_cache_mode": settings.db_plan_cache_mode}},
        # JSON columns (a stage's incident states, timers' data) through orjson, not the standard
        # library: a state of 2 kB decodes in 4 µs instead of 9, and every batch reads its states.
        json_serializer=_json_text,
        json_deserializer=orjson.loads,
    )
    event.listen(engine.sync_engine, "checkout", _refuse_closed)
    return engine


def _json_text(value: object) -> str:
    return orjson.dumps(value, option=_JSON).decode()


def _refuse_closed(dbapi_connection: object, record: object, proxy: object) -> None:
    """A pooled connection the server closed is replaced before use, as a ping would, but with no
    round trip: the driver saw the close. (SQLAlchemy's ping for asyncpg is BEGIN, ';' and
    ROLLBACK: a tenth of intake's CPU at 200 alerts/s, and as many statements for PostgreSQL.)"""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if isinstance(driver, asyncpg.Connection) and driver.is_closed():
        raise sa_exc.DisconnectionError("the server closed this connection")


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# What a statement raises when the database is away (down, restarting, shutting down) or the pool
# is exhausted, through SQLAlchemy or on a driver connection: nothing was committed, retry later.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    OSError,
    TimeoutError,
)


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database is away: one of DATABASE_UNAVAILABLE, or an error caused by
    one. SQLAlchemy wraps some in its generic DBAPIError: asyncpg's "the database system is shutting
    down", met when a connection is opened while PostgreSQL stops, comes that way."""
    seen: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; never follow a cycle for ever
        if seen is None:
            return False
        if isinstance(seen, DATABASE_UNAVAILABLE):
            return True
        seen = seen.__cause__
    return False


@contextlib.asynccontextmanager
async def pooled_driver(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """The asyncpg connection of a pooled one, outside any SQLAlchemy transaction: each statement
    commits on its own unless the caller opens `conn.transaction()`. A connection the database
    dropped is invalidated, never handed to the next caller."""
    async with engine.connect() as pooled:
        conn = (await pooled.get_raw_connection()).driver_connection
        assert isinstance(conn, asyncpg.Connection)
        try:
            yield conn
        except Exception as exc:
            if unavailable(exc):
                await pooled.invalidate()
            raise


async def _pooled(session: AsyncSession) -> tuple[AsyncConnection, PoolProxiedConnection, bool]:
    """The session's connection, its pooled raw connection, and whether its transaction has begun.
    SQLAlchemy's asyncpg adapter sends BEGIN lazily, with the first statement it runs: until then,
    a statement sent on the driver connection would run (and commit) on its own."""
    conn = await session.connection()
    fairy = await conn.get_raw_connection()
    return conn, fairy, getattr(fairy.dbapi_connection, "_transaction", None) is not None


async def driver_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under `session`, inside the session's transaction: for hot or
    set-based statements (unnest, COPY) that SQLAlchemy's per-statement work would slow down.
    asyncpg prepares each statement once per connection and caches it. Writes held back by
    `combined_writes` are sent first, so what the caller runs next sees them."""
    held: CombinedWrites | None = session.info.get(_HELD_WRITES)
    if held is not None:
        await held.send()
    return await _driver(session)


async def _driver(session: AsyncSession) -> asyncpg.Connection:
    conn, fairy, begun = await _pooled(session)
    if not begun:
        await conn.exec_driver_sql("SELECT 1")
    driver = fairy.driver_connection
    assert isinstance(driver, asyncpg.Connection)
    return driver


class Executor(Protocol):
    """What writes statements: an asyncpg connection, or `CombinedWrites` holding them back."""

    async def execute(self, query: str, *args: Any) -> Any: ...

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...


# The table a write statement changes: its first INSERT INTO, UPDATE or DELETE FROM.
_WRITE_TARGET = re.compile(r'\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"?([A-Za-z_][A-Za-z0-9_]*)', re.IGNORECASE)
_PARAMETER = re.compile(r"\$(\d+)")


class CombinedWrites:
    """Writes (statements whose result nobody reads) held back, then sent to PostgreSQL as one
    statement, each a data-modifying WITH query of it: one round trip instead of one each. Under
    load each round trip of a transaction is a wait for a PostgreSQL backend to get the CPU, on
    every hop of the pipeline (one more per stage batch cost 3-9 ms of logged -> prioritized p50
    at 200 alerts/s, measured).

    The parts of one statement share its snapshot and cannot see each other's changes, so a write
    to a table that a held write changes sends the held ones first, and so does a read (`fetch`).
    Each held statement must read no table but its own target. One that cannot be held (with no
    INSERT, UPDATE or DELETE, or with a WITH query that writes) is sent in turn. Nothing is sent
    unless `send` is called: the caller sends before committing."""

    def __init__(self, conn: asyncpg.Connection | Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        self._conn = conn  # or how to get it, once there is something to send
        self._held: list[tuple[str, tuple[Any, ...]]] = []
        self._tables: set[str] = set()

    async def _connection(self) -> asyncpg.Connection:
        if not isinstance(self._conn, asyncpg.Connection):
            self._conn = await self._conn()
        return self._conn

    async def execute(self, query: str, *args: Any) -> None:
        table = _held_target(query)
        if table is None:  # not a write we can hold: in turn, now
            await self.send()
            await (await self._connection()).execute(query, *args)
            return
        if table in self._tables:
            await self.send()
        self._held.append((query, args))
        self._tables.add(table)

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        await self.send()
        return list(await (await self._connection()).fetch(query, *args))

    async def send(self) -> None:
        held, self._held, self._tables = self._held, [], set()
        if len(held) == 1:
            await (await self._connection()).execute(held[0][0], *held[0][1])
        elif held:
            await (await self._connection()).execute(*combined_statement(held))


@functools.lru_cache(maxsize=512)  # a service's statements are a few constant strings
def _held_target(query: str) -> str | None:
    """The table a write changes, if `CombinedWrites` can hold it: not with `$$` quoting, nor with a
    WITH query that writes (PostgreSQL takes those only at the top level, never inside another)."""
    targets = _WRITE_TARGET.findall(query)
    if not targets or "$$" in query or (query.lstrip()[:4].upper() == "WITH" and len(targets) > 1):
        return None
    return str(targets[0]).lower()


def combined_statement(statements: Sequence[tuple[str, Sequence[Any]]]) -> tuple[Any, ...]:
    """One statement running `statements` (SQL with $n parameters, and their values): each becomes
    a WITH query, its parameters renumbered after those before it. PostgreSQL runs every
    data-modifying WITH query to completion, read or not."""
    parts: list[str] = []
    values: list[Any] = []
    for n, (query, args) in enumerate(statements):
        parts.append(f"w{n} AS ({_PARAMETER.sub(functools.partial(_shifted, len(values)), query)})")
        values.extend(args)
    return ("WITH " + ", ".join(parts) + " SELECT", *values)


def _shifted(offset: int, parameter: re.Match[str]) -> str:
    return f"${int(parameter[1]) + offset}"


_HELD_WRITES = "opsledger.db.held-writes"


@contextlib.asynccontextmanager
async def combined_writes(session: AsyncSession) -> AsyncIterator[None]:
    """Within the block, writes made through `execute_write` (write_rows, timers, the outbox) in
    the session's transaction reach PostgreSQL as one statement when the block ends (see
    `CombinedWrites`); any statement run through `driver_connection` or `driver_fetch` sends them
    first. Statements run through the session itself do not: keep reads of the tables written
    out of the block. Nested blocks are the outer one. If the block raises, what it held is
    dropped with the transaction it was meant for."""
    if _HELD_WRITES in session.info:
        yield
        return
    held = session.info[_HELD_WRITES] = CombinedWrites(functools.partial(_driver, session))
    try:
        yield
        await held.send()
    finally:
        session.info.pop(_HELD_WRITES, None)


async def execute_write(session: AsyncSession, query: str, *args: Any) -> None:
    """Run a write (its result unread) in the session's transaction, or hold it back for the
    `combined_writes` block around it."""
    held: CombinedWrites | None = session.info.get(_HELD_WRITES)
    if held is not None:
        await held.execute(query, *args)
    else:
        await (await _driver(session)).execute(query, *args)


async def driver_fetch(session: AsyncSession, query: str, *args: Any) -> list[Sequence[Any]]:
    """The rows of `query` (parameters $1, $2...) in the session's transaction: on the driver
    connection, or, when it is the transaction's first statement, through SQLAlchemy, which begins
    the transaction with it (`driver_connection` would spend a round trip on SELECT 1 first)."""
    held: CombinedWrites | None = session.info.get(_HELD_WRITES)
    if held is not None:
        await held.send()
    conn, fairy, begun = await _pooled(session)
    if not begun:
        return list((await conn.exec_driver_sql(query, args)).all())
    driver = fairy.driver_connection
    assert isinstance(driver, asyncpg.Connection)
    return list(await driver.fetch(query, *args))


_PG = pg.dialect()  # type: ignore[no-untyped-call]
_JSON = orjson.OPT_NON_STR_KEYS


@functools.cache
def _write_rows_sql(table: sa.Table, columns: tuple[str, ...], key: tuple[str, ...], update: tuple[str, ...]) -> str:
    casts = []
    for n, name in enumerate(columns, 1):
        column_type = table.c[name].type
        if isinstance(column_type, sa.ARRAY):
            # unnest flattens an array of arrays into one list of elements.
            raise ValueError(f"{table.name}.{name}: an array column cannot travel through unnest")
        casts.append(f"${n}::{column_type.compile(dialect=_PG)}[]")
    names = ", ".join(f'"{c}"' for c in columns)
    sql = f'INSERT INTO "{table.name}" ({names}) SELECT * FROM unnest({", ".join(casts)})'
    if key:
        target = ", ".join(f'"{c}"' for c in key)
        sql += f" ON CONFLICT ({target}) DO " + ("UPDATE SET " + ", ".join(update) if update else "NOTHING")
    return sql


async def write_rows(
    session: AsyncSession,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str] = (),
    update: Sequence[str] = (),
    constants: Mapping[str, str] | None = None,
) -> None:
    """Insert `rows` (mappings with the same keys) in the session's transaction with one
    statement whatever their count: one array a column, through unnest, on the driver connection.
    With `key` (the conflict target), a row whose key exists updates the `update` columns from the
    new row, and sets each of `constants` (column -> SQL expression); without `update` or
    `constants` it is skipped. Rows of one statement must not share a key when they update. JSON
    columns take Python values. SQLAlchemy's executemany ran, and PostgreSQL executed, a
    statement a row: most of a stage's statements under load."""
    if not rows:
        return
    columns = tuple(rows[0])
    sets = tuple(f'"{c}" = EXCLUDED."{c}"' for c in update) + tuple(
        f'"{c}" = {expr}' for c, expr in (constants or {}).items()
    )
    sql = _write_rows_sql(table, columns, tuple(key), sets)
    arrays: list[list[Any]] = []
    for name in columns:
        values = [row[name] for row in rows]
        column_type = table.c[name].type
        if isinstance(column_type, sa.JSON):
            # As SQLAlchemy writes them: None is JSON null unless the column says SQL NULL.
            sql_null = column_type.none_as_null
            values = [None if v is None and sql_null else orjson.dumps(v, option=_JSON).decode() for v in values]
        arrays.append(values)
    await execute_write(session, sql, *arrays)


_AFTER_COMMIT = "opsledger.after_commit"


def after_commit(session: AsyncSession | Session, callback: Callable[[], None]) -> None:
    """Run `callback` once the session's current transaction commits (dropped on rollback).
    Callbacks are wake-up hints (the relay, the timer runner): cheap, synchronous, repeatable."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    callbacks: list[Callable[[], None]] = sync.info.setdefault(_AFTER_COMMIT, [])
    if callback not in callbacks:
        callbacks.append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for callback in session.info.pop(_AFTER_COMMIT, []):
        callback()


@event.listens_for(Session, "after_rollback")
def _drop_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


def backbone_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table, sa.Table]:
    """Declare the outbox, inbox, timers and leases tables on a metadata."""
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
        # Sent as the record's `event_type` header (see bus.consumer); null in rows staged before it.
        sa.Column("event_type", sa.Text),
    )
    sa.Index("outbox_unsent", outbox.c.id, postgresql_where=outbox.c.sent_at.is_(None))
    inbox = sa.Table(
        "inbox",
        metadata,
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    sa.Index("inbox_processed_at", inbox.c.processed_at)
    timers = sa.Table(
        "timers",
        metadata,
        # '<kind>:<what>': the kind picks the handler; rescheduling a key replaces its timer.
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),  # what the timer is for
        # When to fire: due_at, or later while a failing handler is retried (due_at stays, so the
        # events it causes keep their ids). The count and error are kept for inspection.
        sa.Column("fire_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", pg.JSONB, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
    )
    sa.Index("timers_fire_at", timers.c.fire_at)
    sa.Table(
        "leases",
        metadata,
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("holder", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    return outbox, inbox, timers


# The backbone tables live on their own metadata so every service's migration can create them
# with one call and the bus code can address them without knowing the service.
backbone_metadata = sa.MetaData()
outbox_table, inbox_table, timers_table = backbone_tables(backbone_metadata)
