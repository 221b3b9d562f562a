"""Leases: which one of several replicas does a job only one may do at a time (the outbox relay),
without holding a lock or a transaction while it works. A lease is a row naming its holder and
when it expires (by the database's clock, so replicas' clocks do not matter); the holder renews it
on every pass, gives it up when it stops, and a replica that dies is replaced once it expires."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

# Take or renew: returns a row only if the caller holds the lease afterwards. Positional ($1 name,
# $2 holder, $3 ttl seconds) so that the outbox relay can run it inside its own statement.
ACQUIRE_SQL = (
    "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))"
    " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at"
    " WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now()"
    " RETURNING holder"
)
_ACQUIRE = sa.text(ACQUIRE_SQL.replace("$1", ":name").replace("$2", ":holder").replace("$3", ":ttl"))
_RELEASE = sa.text("DELETE FROM leases WHERE name = :name AND holder = :holder")


class Lease:
    def __init__(self, name: str, ttl_seconds: float) -> None:
        self.name = name
        self.ttl_seconds = ttl_seconds
        self.holder = uuid.uuid4()  # this process's claim; a restarted process is a new holder

    async def acquire(self, session: AsyncSession | AsyncConnection) -> bool:
        """Take or renew the lease (in the caller's transaction); False while another holds it."""
        params = {"name": self.name, "holder": self.holder, "ttl": self.ttl_seconds}
        return (await session.execute(_ACQUIRE, params)).first() is not None

    async def release(self, session: AsyncSession | AsyncConnection) -> None:
        await session.execute(_RELEASE, {"name": self.name, "holder": self.holder})
