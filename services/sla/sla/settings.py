"""Settings of the sla service (environment: OPSLEDGER_*)."""

from opsledger.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "sla"
    port: int = 8004
    database_url: str = "postgresql+asyncpg://opsledger@127.0.0.1:5432/opsledger_sla"
