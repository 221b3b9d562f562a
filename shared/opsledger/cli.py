"""`python -m <service>` serves the service; `python -m <service> migrate` runs its migrations."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from opsledger import migrations
from opsledger.settings import ServiceSettings


def main(service: str, settings: ServiceSettings, migrations_dir: Path) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {service}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args()
    if args.command == "migrate":
        migrations.upgrade(migrations_dir, settings.database_url)
        print(f"{service}: migrated {settings.database_url.rsplit('/', 1)[-1]} to head")
        return
    uvicorn.run(
        f"{service}.app:build",
        factory=True,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        log_config=None,  # our JSON logging, configured in the lifespan
        access_log=False,
        timeout_graceful_shutdown=20,
    )
