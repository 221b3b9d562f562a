"""Settings of the sla service (environment: OPSLEDGER_*)."""

from pydantic import Field

from opsledger.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "sla"
    port: int = 8004
    database_url: str = "postgresql+asyncpg://opsledger@127.0.0.1:5432/opsledger_sla"
    # Clocks run from each event's own time, so taking events up to 100 ms later in bigger
    # batches moves no deadline; it leaves the CPU to the alert's path (see ServiceSettings).
    consumer_linger_ms: int = 100
    # A what-if replays at most this many incidents (the earliest logged in its window).
    what_if_max_incidents: int = Field(default=5000, ge=1)
