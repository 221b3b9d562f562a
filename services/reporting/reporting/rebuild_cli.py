"""`python -m reporting rebuild [--url URL] [--timeout S]`: start a rebuild on the running service
and wait for the switch (what `make rebuild-reporting` runs)."""

from __future__ import annotations

import argparse
import os
import time

import httpx

from reporting.settings import Settings


def rebuild(settings: Settings, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m reporting rebuild")
    parser.add_argument("--url", default=f"http://{settings.host}:{settings.port}")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument(
        "--token",
        default=os.environ.get("OPSLEDGER_ADMIN_TOKEN"),
        help="an admin's bearer JWT (default: $OPSLEDGER_ADMIN_TOKEN, which make up writes)",
    )
    args = parser.parse_args(argv)
    if not args.token:
        parser.error(
            "no admin token: pass --token or set OPSLEDGER_ADMIN_TOKEN (make up writes it to .local/opsledger.env)"
        )
    headers = {"Authorization": f"Bearer {args.token}"}
    with httpx.Client(base_url=args.url, headers=headers, timeout=30) as client:
        response = client.post("/v1/admin/rebuild")
        if response.status_code not in (202, 409):
            print(f"rebuild refused: {response.status_code} {response.text}")
            return 1
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            status = client.get("/v1/admin/rebuild").json()
            rebuild = status["rebuild"] or {}
            print(f"version {rebuild.get('version')}: {rebuild.get('status')}, "
                  f"{rebuild.get('applied', 0)} of {rebuild.get('live_applied', 0)} events")  # fmt: skip
            if rebuild.get("status") == "switched":
                return 0
            time.sleep(2)
    print("rebuild did not finish in time")
    return 1
