"""Settings of the resolution service (environment: OPSLEDGER_*)."""

from opsledger.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "resolution"
    port: int = 8005
    database_url: str = "postgresql+asyncpg://opsledger@127.0.0.1:5432/opsledger_resolution"
