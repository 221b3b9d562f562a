"""The checked-in event catalog matches the event schemas in code (run `make catalog` to update)."""

from pathlib import Path

import orjson

from opsledger.events.catalog import build_catalog

CATALOG = Path(__file__).resolve().parents[2] / "docs" / "events" / "catalog.json"


def test_catalog_matches_code() -> None:
    checked_in = orjson.loads(CATALOG.read_bytes())
    current = orjson.loads(orjson.dumps(build_catalog()))
    drifted = sorted(
        name
        for name in checked_in["events"].keys() | current["events"].keys()
        if checked_in["events"].get(name) != current["events"].get(name)
    )
    assert not drifted, f"event schemas changed without `make catalog`: {drifted}"
    assert checked_in["envelope"] == current["envelope"], "envelope changed without `make catalog`"


def test_every_event_version_in_the_catalog_is_still_readable() -> None:
    """Old versions stay readable: nothing once published may vanish from the catalog."""
    from opsledger.events import registry

    checked_in = orjson.loads(CATALOG.read_bytes())
    for name, entry in checked_in["events"].items():
        for version in entry["versions"]:
            assert registry.model(name, int(version)) is not None
