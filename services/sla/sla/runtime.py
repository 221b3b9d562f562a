"""The sla service's runtime: the shared one, typed by its settings, plus its write side, built
once per process from the runtime's outbox and clock."""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import Depends

from opsledger.service import Runtime, runtime_of
from sla.handlers import Sla
from sla.settings import Settings


class SlaRuntime(Runtime[Settings]):
    @functools.cached_property
    def sla(self) -> Sla:
        """The write side: consumer batches, timers and policy changes."""
        return Sla(self.settings, self.outbox, self.clock)


SlaRuntimeDep = Annotated[SlaRuntime, Depends(runtime_of)]
