"""The reporting service's FastAPI app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from opsledger import problems
from opsledger.service import create_app
from reporting.api import admin, router
from reporting.runtime import ReportingRuntime
from reporting.settings import Settings
from reporting.versions import ProjectionManager

MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # shipped inside the package


def build(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    # The projection consumers are run by the ProjectionManager rather than create_app's
    # `consumers`: which versions run (the active one, plus a rebuild's) is decided at runtime.
    async def on_ready(runtime: ReportingRuntime) -> None:
        if runtime.projections is None:
            manager = ProjectionManager(runtime, switch_poll_seconds=settings.rebuild_switch_poll_seconds)
            await manager.start()
            runtime.projections = manager

    app = create_app(
        settings,
        title="OpsLedger reporting",
        migrations_dir=MIGRATIONS,
        routers=[router, admin],
        on_ready=on_ready,
        runtime_type=ReportingRuntime,
    )
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with inner(app):
            try:
                yield
            finally:
                # Before the shared lifespan closes the producer and the engine.
                runtime: ReportingRuntime | None = getattr(app.state, "runtime", None)
                if runtime is not None and runtime.projections is not None:
                    await runtime.projections.stop()

    app.router.lifespan_context = lifespan
    app.add_exception_handler(RequestValidationError, _bad_request)
    return app


async def _bad_request(request: Request, exc: Exception) -> Response:
    """FastAPI's own checks (limit, format) answer like ours: 400 naming the parameter."""
    assert isinstance(exc, RequestValidationError)
    errors = problems.validation_errors(exc.errors())
    return problems.response(400, f"invalid request: {problems.summary(errors)}", errors)
