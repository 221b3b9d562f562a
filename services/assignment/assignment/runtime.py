"""Assignment's runtime: the shared one, typed by assignment's settings, plus its write side,
built once per process from the runtime's outbox and clock."""

from __future__ import annotations

import functools

from assignment.handlers import Assignment
from assignment.settings import Settings
from opsledger.service import Runtime


class AssignmentRuntime(Runtime[Settings]):
    @functools.cached_property
    def assignment(self) -> Assignment:
        """The write side: consumer batches, timers, commands and configuration changes."""
        return Assignment(self.settings, self.outbox, self.clock)
