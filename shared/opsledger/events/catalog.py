"""The checked-in event catalog: a JSON Schema for every event type and version, so consumers
outside this repo can validate what is on the log. `make catalog` rewrites it; a contract test
fails when the code and the catalog drift apart."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson

from opsledger.events import registry
from opsledger.events.envelope import Envelope


def build_catalog() -> dict[str, Any]:
    events: dict[str, Any] = {}
    for model in registry.all_versions():
        if not model.__module__.startswith("opsledger.events."):
            continue  # events registered by tests or benchmarks are not part of the contract
        events.setdefault(model.event_type, {"stream": str(model.stream), "versions": {}})
        events[model.event_type]["versions"][str(model.schema_version)] = {
            "description": (model.__doc__ or "").strip() or None,
            "payload": model.model_json_schema(),
        }
    return {"envelope": Envelope.model_json_schema(), "events": events}


def render() -> bytes:
    return orjson.dumps(build_catalog(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, required=True)
    args = parser.parse_args()
    args.write.parent.mkdir(parents=True, exist_ok=True)
    args.write.write_bytes(render())
    print(f"wrote {args.write} ({len(build_catalog()['events'])} event types)")


if __name__ == "__main__":
    main()
