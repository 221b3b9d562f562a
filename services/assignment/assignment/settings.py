"""Settings of the assignment service (environment: OPSLEDGER_*)."""

from opsledger.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "assignment"
    port: int = 8003
    database_url: str = "postgresql+asyncpg://opsledger@127.0.0.1:5432/opsledger_assignment"
