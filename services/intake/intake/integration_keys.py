"""What an integration key identifies, and the per-process cache of key lookups."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

PRODUCER = "intake"  # the producer named on intake's events


@dataclass(frozen=True)
class Integration:
    integration_id: uuid.UUID
    name: str
    kind: str
    disabled: bool

    @property
    def actor(self) -> str:
        return f"integration:{self.name}"

    def allows(self, kind: str) -> bool:
        return self.kind in ("any", kind)


def new_key() -> str:
    # 128 random bits as 32 hex characters: the shape of a PagerDuty routing key, so clients that
    # check it accept ours. High entropy makes a plain (unsalted) sha256 safe to store.
    return secrets.token_hex(16)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyCache:
    """Per-process cache of key lookups (the hot path should not read the integrations table on
    every request). Entries live `ttl` seconds; the replica that disables a key forgets it at once.
    A key that matched no integration is remembered as unknown for as long: a sender posting with
    a wrong key (a typo in Alertmanager's config, during a storm) would otherwise cost a read of
    the table per request. It cannot hide a new integration: a created key is 128 random bits no
    one posted with before, and the bootstrap key, known in advance, is forgotten by `bootstrap`."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[Integration | None, float]] = {}
        self._loading: dict[str, asyncio.Task[Integration | None]] = {}

    async def get_or_load(self, key_hash: str, load: Callable[[], Awaitable[Integration | None]]) -> Integration | None:
        """The cached answer (an integration, or None for an unknown key), else `load`'s, cached.
        One load per key at a time: when an entry expires under load, the requests in flight for
        that key wait for one read of the table instead of each taking a database connection for
        the same row."""
        entry = self._entries.get(key_hash)
        if entry is not None and entry[1] >= time.monotonic():
            return entry[0]
        loading = self._loading.get(key_hash)
        if loading is None:
            loading = self._loading[key_hash] = asyncio.ensure_future(self._load(key_hash, load))
            loading.add_done_callback(_retrieved)  # its error is its callers' (none, if all went away)
        # Shielded: a caller that goes away (its client hung up) does not cancel the others' read.
        return await asyncio.shield(loading)

    async def _load(self, key_hash: str, load: Callable[[], Awaitable[Integration | None]]) -> Integration | None:
        try:
            found = await load()
        finally:
            # Not ours any more if the key was forgotten meanwhile: what this read saw may be stale.
            current = self._loading.get(key_hash) is asyncio.current_task()
            if current:
                del self._loading[key_hash]
        if current:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key_hash] = (found, time.monotonic() + self.ttl)
        return found

    def forget(self, integration_id: uuid.UUID) -> None:
        for key_hash, (integration, _) in list(self._entries.items()):
            if integration is not None and integration.integration_id == integration_id:
                del self._entries[key_hash]

    def forget_key(self, key_hash: str) -> None:
        """Forget what is known of the key, and what a read in flight will find (it may have
        begun before the change that calls this)."""
        self._entries.pop(key_hash, None)
        self._loading.pop(key_hash, None)


def _retrieved(task: asyncio.Task[Integration | None]) -> None:
    if not task.cancelled():
        task.exception()
