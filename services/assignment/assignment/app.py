"""The assignment service's FastAPI app."""

from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from assignment.handlers import on_incident_event
from assignment.settings import Settings
from opsledger.bus.consumer import ConsumerSpec
from opsledger.events import Stream
from opsledger.service import Runtime, create_app

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def build(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    def consumers(runtime: Runtime) -> Sequence[ConsumerSpec]:
        return [
            ConsumerSpec(
                name="incidents",
                topics=[settings.topic(Stream.INCIDENTS)],
                handler=on_incident_event,
                event_types={"IncidentLogged"},
            )
        ]

    return create_app(settings, title="OpsLedger assignment", migrations_dir=MIGRATIONS, consumers=consumers)
