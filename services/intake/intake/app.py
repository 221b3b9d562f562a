"""The intake service's FastAPI app."""

from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from intake import api, integrations
from intake.handlers import CLOSING_EVENTS, on_incident_event
from intake.settings import Settings
from opsledger.bus.consumer import ConsumerSpec
from opsledger.clock import Clock
from opsledger.events import Stream
from opsledger.service import Runtime, create_app

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def build(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()

    def consumers(runtime: Runtime) -> Sequence[ConsumerSpec]:
        return [
            ConsumerSpec(
                name="incidents",
                topics=[settings.topic(Stream.INCIDENTS)],
                handler=on_incident_event,
                event_types=set(CLOSING_EVENTS),
                accept_unknown=True,  # the closing events' schemas belong to other services
            )
        ]

    async def on_ready(runtime: Runtime) -> None:
        if settings.bootstrap_integration_key:
            await integrations.bootstrap(runtime, settings.bootstrap_integration_key)

    return create_app(
        settings,
        title="OpsLedger intake",
        migrations_dir=MIGRATIONS,
        routers=[integrations.router, api.router],
        consumers=consumers,
        on_ready=on_ready,
        clock=clock,
    )
