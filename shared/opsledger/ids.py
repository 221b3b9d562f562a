"""Time-ordered ids (UUIDv7, RFC 9562) for what OpsLedger mints: incidents, events that start a
chain (a derived event keeps its deterministic uuid5), tasks.

A random (v4) id lands anywhere in a B-tree, so every table and index keyed by it takes its inserts
on random pages: with 2,000,000 rows, inserts wrote 3.4 times the WAL (a full-page image for each
page first touched after a checkpoint: 1,551 bytes a row against 455) and ran 12-17 % slower
(bench/ids.py). A v7 id starts with its millisecond: new rows go to the right-hand edge of the
index, and recent incidents, the ones being updated, share their pages. (Python 3.14 has uuid.uuid7.)"""

from __future__ import annotations

import os
import time
import uuid

_VERSION = 0x7 << 76  # bits 76-79
_VARIANT = 0x2 << 62  # bits 62-63: the RFC's variant (10)
_CLEAR = ~((0xF << 76) | (0x3 << 62))


def uuid7() -> uuid.UUID:
    """48 bits of Unix milliseconds, then the version and 74 random bits around the variant."""
    millis = time.time_ns() // 1_000_000
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10), "big")
    return uuid.UUID(int=value & _CLEAR | _VERSION | _VARIANT)
