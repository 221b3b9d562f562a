"""Settings of the triage service (environment: OPSLEDGER_*)."""

from pydantic import Field

from opsledger.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "triage"
    port: int = 8002
    database_url: str = "postgresql+asyncpg://opsledger@127.0.0.1:5432/opsledger_triage"
    # service -> impact 1 (high) .. 3 (low), e.g. OPSLEDGER_SERVICE_CRITICALITY='{"payments": 1}'
    service_criticality: dict[str, int] = Field(default_factory=dict)
    # Each threshold the correlated-alert count reaches raises impact one level.
    impact_count_thresholds: tuple[int, ...] = (10, 50)
    # How many of the most recent incidents a dry run re-evaluates at most.
    dry_run_max_incidents: int = Field(default=1000, ge=1)
