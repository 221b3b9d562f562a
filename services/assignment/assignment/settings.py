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
