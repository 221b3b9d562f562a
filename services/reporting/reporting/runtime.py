"""Reporting's runtime: the shared one, typed by reporting's settings, plus the projection manager
that runs the projection consumers (which versions run is decided at runtime, by rebuilds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends

from opsledger.service import Runtime, runtime_of
from reporting.settings import Settings

if TYPE_CHECKING:
    from reporting.versions import ProjectionManager


@dataclass
class ReportingRuntime(Runtime[Settings]):
    projections: ProjectionManager | None = None  # set once the service is ready


ReportingRuntimeDep = Annotated[ReportingRuntime, Depends(runtime_of)]
