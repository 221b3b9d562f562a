"""The reporting service's FastAPI app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from opsledger.service import Runtime, create_app
from reporting.api import admin, router
from reporting.settings import Settings
from reporting.versions import ProjectionManager

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def build(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    # The projection consumers are run by the ProjectionManager rather than create_app's
    # `consumers`: which versions run (the active one, plus a rebuild's) is decided at runtime.
    async def on_ready(runtime: Runtime) -> None:
        if "projections" not in runtime.extras:
            manager = ProjectionManager(runtime, switch_poll_seconds=settings.rebuild_switch_poll_seconds)
            await manager.start()
            runtime.extras["projections"] = manager

    app = create_app(
        settings, title="OpsLedger reporting", migrations_dir=MIGRATIONS, routers=[router, admin], on_ready=on_ready
    )
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with inner(app):
            try:
                yield
            finally:
                # Before the shared lifespan closes the producer and the engine.
                manager = getattr(app.state, "runtime", None) and app.state.runtime.extras.get("projections")
                if isinstance(manager, ProjectionManager):
                    await manager.stop()

    app.router.lifespan_context = lifespan
    app.add_exception_handler(RequestValidationError, _bad_request)
    return app


async def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own checks (limit, format) answer like ours: 400 naming the parameter."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    parameter = str(first.get("loc", ("", "?"))[-1])
    error = f"parameter '{parameter}': {first.get('msg', 'is invalid')}"
    return JSONResponse({"detail": {"parameter": parameter, "error": error}}, status_code=400)
