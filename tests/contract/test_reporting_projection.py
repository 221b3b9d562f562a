"""Reporting reads every incident-stream event of the catalog typed: each type has an entry in
its projection registry (an apply function), so a new event type cannot be left unprojected."""

from pathlib import Path

import orjson

from reporting.domain import APPLIERS

CATALOG = Path(__file__).resolve().parents[2] / "docs" / "events" / "catalog.json"


def test_every_incident_stream_event_type_has_a_typed_branch_in_reporting() -> None:
    events = orjson.loads(CATALOG.read_bytes())["events"]
    incident_types = {name for name, entry in events.items() if entry["stream"] == "incidents"}
    missing = sorted(incident_types - APPLIERS.keys())
    assert not missing, f"reporting's projection (reporting.domain.APPLIERS) has no branch for {missing}"
    not_incident = sorted(APPLIERS.keys() - incident_types)
    assert not not_incident, f"reporting projects types that are not incident-stream events: {not_incident}"
