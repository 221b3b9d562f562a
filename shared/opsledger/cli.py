"""`python -m <service>` serves the service; `python -m <service> migrate` runs its migrations."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn

from opsledger import metrics, migrations
from opsledger.settings import ServiceSettings


def main(service: str, settings: ServiceSettings, migrations_dir: Path) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {service}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args()
    if args.command == "migrate":
        migrations.upgrade(migrations_dir, settings.database_url)
        print(f"{service}: migrated {settings.database_url.rsplit('/', 1)[-1]} to head")
        return
    if settings.workers > 1 and not os.environ.get(metrics.MULTIPROCESS_DIR):
        # Where the workers keep their metrics for /metrics to add up: fresh at every start (a
        # worker that died leaves its files behind), set before the workers import the client.
        folder = tempfile.mkdtemp(prefix=f"opsledger-{service}-metrics-")
        os.environ[metrics.MULTIPROCESS_DIR] = folder
    else:
        folder = None
    try:
        serve(service, settings)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def serve(service: str, settings: ServiceSettings) -> None:
    uvicorn.run(
        f"{service}.app:build",
        factory=True,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        log_config=None,  # our JSON logging, configured in the lifespan
        access_log=False,
        timeout_graceful_shutdown=20,
        workers=settings.workers,
    )
