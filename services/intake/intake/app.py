"""The intake service's FastAPI app."""

import re
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from intake import api, integrations
from intake.handlers import CLOSING_EVENTS, REFUSED, on_incident_event
from intake.runtime import IntakeRuntime
from intake.settings import Settings
from opsledger.bus.consumer import ConsumerSpec
from opsledger.clock import Clock
from opsledger.events import Stream
from opsledger.service import create_app

MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # shipped inside the package


def build(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()

    def consumers(runtime: IntakeRuntime) -> Sequence[ConsumerSpec]:
        return [
            ConsumerSpec(
                name="incidents",
                topics=[settings.topic(Stream.INCIDENTS)],
                handler=on_incident_event(runtime),
                event_types={*CLOSING_EVENTS, REFUSED},
                accept_unknown=True,  # the closing events' schemas belong to other services
            )
        ]

    async def on_ready(runtime: IntakeRuntime) -> None:
        if settings.bootstrap_integration_key:
            await integrations.bootstrap(runtime, settings.bootstrap_integration_key)

    async def on_stop(runtime: IntakeRuntime) -> None:
        await runtime.group_commit.stop()

    app = create_app(
        settings,
        title="OpsLedger intake",
        migrations_dir=MIGRATIONS,
        routers=[integrations.router, api.router],
        consumers=consumers,
        on_ready=on_ready,
        on_stop=on_stop,
        clock=clock,
        runtime_type=IntakeRuntime,
    )
    # Innermost of the middleware: inside the body limit, the correlation id and the metrics.
    app.user_middleware.append(Middleware(DirectIngestRoutes, routes=api.router.routes))
    app.add_middleware(CanonicalPath)
    return app


class DirectIngestRoutes:
    """Call the ingest endpoints straight from here, skipping Starlette's exception middleware,
    router scan and FastAPI's request wrapper: under an alert storm that machinery cost about a
    fifth of intake's CPU, three times what the endpoints themselves do. They take the request and
    answer every expected failure themselves (see `api._guard`), so nothing in the skipped layers
    applies to them; OpenAPI still documents them as the routes they are."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.direct: dict[tuple[str, str], APIRoute] = {
            (method, route.path): route
            for route in routes
            if isinstance(route, APIRoute) and route.path in api.INGEST_PATHS
            for method in route.methods or ()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.direct.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # as the router would: metrics label requests by route
        response = await route.endpoint(Request(scope, receive))
        await response(scope, receive, send)


_SLASHES = re.compile(r"/{2,}")


class CanonicalPath:
    """Route `//v2/enqueue` and `/v2/enqueue/` as `/v2/enqueue`. Client libraries join a configured
    base URL and a path as strings (go-pagerduty: `endpoint + "/v2/enqueue"`), so a base URL with a
    trailing slash doubles it; and PagerDuty's clients do not follow the redirect Starlette would
    answer a trailing slash with. A 404 there would lose the alert."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            canonical = _SLASHES.sub("/", path)
            canonical = canonical.rstrip("/") or "/"
            if canonical != path:
                scope = {**scope, "path": canonical, "raw_path": canonical.encode()}
        await self.app(scope, receive, send)
