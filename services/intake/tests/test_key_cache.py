"""Unit tests of the per-process cache of integration key lookups."""

from __future__ import annotations

import asyncio
import uuid

from intake.integration_keys import Integration, KeyCache


async def test_a_read_in_flight_when_the_key_is_forgotten_is_not_cached() -> None:
    """The bootstrap key upserted while a request's read (begun before) is in flight: that read's
    'unknown' must not be remembered, or the key is refused for a whole cache period."""
    cache = KeyCache(ttl=60)
    started, release = asyncio.Event(), asyncio.Event()
    reads: list[str] = []

    async def before_upsert() -> Integration | None:
        reads.append("before")
        started.set()
        await release.wait()
        return None

    async def after_upsert() -> Integration | None:
        reads.append("after")
        return Integration(integration_id=uuid.uuid4(), name="demo", kind="any", disabled=False)

    early = asyncio.create_task(cache.get_or_load("k", before_upsert))
    await started.wait()
    cache.forget_key("k")
    release.set()
    assert await early is None, "the early request gets what its read saw"
    found = await cache.get_or_load("k", after_upsert)
    assert found is not None and found.name == "demo"
    assert reads == ["before", "after"]
    assert await cache.get_or_load("k", before_upsert) is found, "and that answer is cached"
