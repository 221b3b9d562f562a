"""The demo configuration `make up` seeds once (setting `demo`): a team of the demo people, a 24x7
weekly rotation with the first responder on call now, a two-tier policy and a default route, so
the first alert a newcomer sends is assigned to a person."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from opsledger.devtokens import DEMO_TEAM, DEMO_USERS

TEAM_ID = "demo"
SCHEDULE_ID = "demo-primary"
POLICY_ID = "demo-default"


def _person(sub: str) -> dict[str, Any]:
    user = next(u for u in DEMO_USERS if u.sub == sub)
    return {"sub": user.sub, "name": user.name, "email": user.email}


def objects(now: datetime) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, id, body) in the order they can be put in force."""
    manager, *responders = DEMO_TEAM
    # The rotation starts at today's 09:00 UTC handoff (yesterday's, before 09:00), so the first
    # responder's week is the current one.
    handoff = time(9, 0)
    start = datetime.combine(now.astimezone(UTC).date(), handoff, tzinfo=UTC)
    if start > now:
        start -= timedelta(days=1)
    schedule = {
        "name": "Demo primary",
        "team_id": TEAM_ID,
        "time_zone": "UTC",
        "layers": [
            {
                "name": "24x7 weekly",
                "members": [_person(sub) for sub in responders],
                "rotation": "weekly",
                "handoff_time": handoff.isoformat(),
                "starts_at": start.isoformat(),
            }
        ],
    }
    policy = {
        "name": "Demo default",
        "team_id": TEAM_ID,
        "tiers": [
            {"targets": [{"kind": "schedule", "schedule_id": SCHEDULE_ID}], "ack_timeout_seconds": 900},
            {"targets": [{"kind": "team_manager"}], "ack_timeout_seconds": 900},
        ],
        "repeat": 0,
    }
    team = {
        "name": "Demo team",
        "members": [{"person": _person(sub), "skills": ["general"]} for sub in responders],
        "manager": _person(manager),
        "escalation_policy_id": POLICY_ID,
    }
    routing = {"rules": [], "default_team_id": TEAM_ID}
    return [
        ("schedule", SCHEDULE_ID, schedule),
        ("policy", POLICY_ID, policy),
        ("team", TEAM_ID, team),
        ("routing", "routing", routing),
    ]
