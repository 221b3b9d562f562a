"""Triage's runtime: the shared one, typed by triage's settings, plus triage's write side, built
once per process from the runtime's outbox and clock."""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import Depends

from opsledger.service import Runtime, runtime_of
from triage.handlers import Triage
from triage.settings import Settings


class TriageRuntime(Runtime[Settings]):
    @functools.cached_property
    def triage(self) -> Triage:
        """The write side: consumer batches, commands and configuration changes."""
        return Triage(self.settings, self.outbox, self.clock)


TriageRuntimeDep = Annotated[TriageRuntime, Depends(runtime_of)]
