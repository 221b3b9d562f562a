"""Settings of the assignment service (environment: OPSLEDGER_*)."""

from pydantic import Field

from opsledger.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "assignment"
    port: int = 8003
    database_url: str = "postgresql+asyncpg://opsledger@127.0.0.1:5432/opsledger_assignment"
    # Seed, once, the demo team, schedule, policy and default route (`make up` sets OPSLEDGER_DEMO=1).
    demo: bool = False
    # How many of the most recent incidents a routing dry run re-evaluates at most.
    dry_run_max_incidents: int = Field(default=1000, ge=1)
    # The events an alert brings here (logged, then categorized and prioritized a few ms later)
    # arrive as one batch, one transaction, instead of two or three; a page leaves up to this much
    # later. At 50 alerts/s (fresh `make up`, two pairs): assignment 10-11 % of a core against
    # 28-29, the machine 39-45 % idle against 26-29; logged -> assigned p50 33-34 ms against 13-14.
    consumer_linger_ms: int = Field(default=40, ge=0, le=1000)
