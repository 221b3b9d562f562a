"""Planner statistics that keep up with a young database.

PostgreSQL keeps one generic plan per prepared statement once it finds it no dearer than the
custom ones, and replans only when the statistics of a table it reads change. A service starts on
empty tables, so its statements are planned for tables a page long: the relay's "mark sent"
UPDATE read the whole outbox (1,500 buffers a pass in triage at 200 alerts/s). Autovacuum takes
the statistics that end it at its own pace: a minute or more after the load began, when a storm
that hit a fresh deployment (or a benchmark run right after `make up`) has been served by those
plans throughout (README, design note "Planner statistics of a young database", has the figures).

So each service looks every second for tables of its database whose statistics lag far
behind them, and analyses them: a table of at least MIN_ROWS rows that has changed, since it was
last analysed, by as many rows as it then held (never analysed; doubled since). That is about a
dozen analyses of a table on its way to a million rows; past its youth autovacuum's own threshold
(a tenth of the table) comes first."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from opsledger.db import pooled_driver

log = logging.getLogger(__name__)

MIN_ROWS = 500

# reltuples is -1 for a table never analysed (nor vacuumed).
_LAGGING = (
    "SELECT format('%I.%I', s.schemaname, s.relname) FROM pg_stat_user_tables AS s"
    " JOIN pg_class AS c ON c.oid = s.relid"
    " WHERE s.n_live_tup >= $1 AND s.n_mod_since_analyze >= greatest(c.reltuples, 0)"
    " ORDER BY s.relname"
)


async def analyze_lagging(engine: AsyncEngine) -> list[str]:
    """Analyse the tables whose statistics lag behind them (see the module's note); their names.
    A table another session is vacuuming or analysing is skipped (its turn comes again)."""
    async with pooled_driver(engine) as conn:
        tables = [str(r[0]) for r in await conn.fetch(_LAGGING, MIN_ROWS)]
        if tables:
            await conn.execute(f"ANALYZE (SKIP_LOCKED) {', '.join(tables)}")
    return tables


async def keep_statistics(engine: AsyncEngine, stop: asyncio.Event, every_seconds: float) -> None:
    """Analyse lagging tables every `every_seconds` until `stop` is set. A failure waits for the
    next round and is reported once, when the looks start failing, and once more when they work
    again: during a database outage the service's other loops report it (a warning a second from
    here too only buried theirs)."""
    failing = False
    while not stop.is_set():
        try:
            analysed = await analyze_lagging(engine)
        except Exception as exc:
            if not failing:
                log.warning("could not look for tables with lagging statistics (again once it can): %s", exc)
            failing = True
        else:
            if failing:
                log.info("looking for tables with lagging statistics again")
            failing = False
            if analysed:
                log.info("statistics taken anew for %s", ", ".join(analysed))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_seconds)
