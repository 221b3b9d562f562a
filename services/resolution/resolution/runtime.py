"""The resolution service's runtime: the shared one, typed by its settings, plus its write side,
built once per process from the runtime's outbox and clock."""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import Depends

from opsledger.service import Runtime, runtime_of
from resolution.handlers import Resolution
from resolution.settings import Settings


class ResolutionRuntime(Runtime[Settings]):
    @functools.cached_property
    def resolution(self) -> Resolution:
        """The write side: consumer batches, auto-close timers and commands."""
        return Resolution(self.settings, self.outbox, self.clock)


ResolutionRuntimeDep = Annotated[ResolutionRuntime, Depends(runtime_of)]
