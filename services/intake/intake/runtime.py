"""Intake's runtime: the shared one, typed by intake's settings, plus what one intake process
keeps for its lifetime (its admission gate and its cache of integration keys)."""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Annotated

from fastapi import Depends

from intake.admission import Admission
from intake.domain import FlapPolicy
from intake.group_commit import GroupCommit
from intake.integration_keys import KeyCache
from intake.settings import Settings
from opsledger.service import Runtime, runtime_of


class IntakeRuntime(Runtime[Settings]):
    @functools.cached_property
    def admission(self) -> Admission:
        """The process's admission gate, sized from the settings."""
        # Leave connections for the outbox relay, the consumer and /readyz (pool + overflow).
        default = max(1, 2 * self.settings.db_pool_size - 4)
        return Admission(
            self.settings.max_in_flight or default, self.settings.max_waiting, self.settings.max_wait_seconds
        )

    @functools.cached_property
    def key_cache(self) -> KeyCache:
        return KeyCache(self.settings.integration_cache_seconds)

    @functools.cached_property
    def flap_policy(self) -> FlapPolicy:
        """When an alert counts as flapping (alert requests, and alerts the resolution stage refused)."""
        return FlapPolicy(self.settings.flap_max_transitions, timedelta(minutes=self.settings.flap_window_minutes))

    @functools.cached_property
    def group_commit(self) -> GroupCommit:
        """Where alert requests wait to share a transaction."""
        return GroupCommit(self.settings, self.engine, self.outbox, self.clock, self.flap_policy)


IntakeRuntimeDep = Annotated[IntakeRuntime, Depends(runtime_of)]
