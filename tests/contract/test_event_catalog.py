"""The checked-in event catalog (JSON Schema) and AsyncAPI document match the event schemas in code
(run `make catalog` to update them), and the AsyncAPI document holds together."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from opsledger.events.catalog import build_asyncapi, build_catalog, render_asyncapi

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events"
CATALOG = DOCS / "catalog.json"
ASYNCAPI = DOCS / "asyncapi.yaml"


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


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text())
    return document


def test_asyncapi_document_matches_code(asyncapi: dict[str, Any]) -> None:
    current = yaml.safe_load(render_asyncapi())
    assert current == orjson.loads(orjson.dumps(build_asyncapi())), "the rendering must round-trip"
    drifted = sorted(
        f"{section}.{name}"
        for section in ("channels", "operations")
        for name in asyncapi[section].keys() | current[section].keys()
        if asyncapi[section].get(name) != current[section].get(name)
    ) + sorted(
        f"components.{kind}.{name}"
        for kind in current["components"].keys() | asyncapi["components"].keys()
        for name in current["components"].get(kind, {}).keys() | asyncapi["components"].get(kind, {}).keys()
        if asyncapi["components"].get(kind, {}).get(name) != current["components"].get(kind, {}).get(name)
    )
    assert not drifted, f"docs/events/asyncapi.yaml is stale, run `make catalog`: {drifted}"
    assert asyncapi == current, "docs/events/asyncapi.yaml is stale, run `make catalog`"


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref}: only references inside the document"
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} points nowhere"
        node = node[part]
    return node


def test_asyncapi_document_structure(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    assert asyncapi["info"]["title"] and asyncapi["info"]["version"]
    for ref in set(_refs(asyncapi)):
        _resolve(asyncapi, ref)

    catalog = orjson.loads(CATALOG.read_bytes())
    messages = asyncapi["components"]["messages"]
    expected = {
        f"{name}.v{version}": entry["stream"]
        for name, entry in catalog["events"].items()
        for version in entry["versions"]
    }
    assert set(messages) == set(expected), "one message per event type and version"

    for message_id, stream in expected.items():
        message = messages[message_id]
        name, version = message_id.rsplit(".v", 1)
        assert message["name"] == name and message["contentType"] == "application/json"
        envelope, specific = message["payload"]["allOf"]
        assert _resolve(asyncapi, envelope["$ref"]) is asyncapi["components"]["schemas"]["Envelope"]
        assert specific["properties"]["event_type"] == {"const": name}
        assert specific["properties"]["schema_version"] == {"const": int(version)}
        payload = _resolve(asyncapi, specific["properties"]["payload"]["$ref"])
        assert set(payload["properties"]) == set(catalog["events"][name]["versions"][version]["payload"]["properties"])
        key = message["bindings"]["kafka"]["key"]
        assert key["type"] == "string" and "subject" in key["description"]

        # In its stream's channel (and no other), and in a send and a receive operation.
        channel = asyncapi["channels"][stream]
        assert channel["address"] == f"{{prefix}}.{stream}"
        assert channel["messages"][message_id] == {"$ref": f"#/components/messages/{message_id}"}
        others = [c for s, c in asyncapi["channels"].items() if s != stream and message_id in c["messages"]]
        assert not others, f"{message_id} is in another channel too"
        in_operations = {
            op["action"]
            for op in asyncapi["operations"].values()
            if op["channel"] == {"$ref": f"#/channels/{stream}"}
            and {"$ref": f"#/channels/{stream}/messages/{message_id}"} in op["messages"]
        }
        assert in_operations == {"send", "receive"}, f"{message_id}: {in_operations}"

    assert set(asyncapi["channels"]) == {"incidents", "config"}
    assert asyncapi["components"]["parameters"]["prefix"]["default"] == "opsledger"
    for operation in asyncapi["operations"].values():
        assert operation["action"] in ("send", "receive")
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), "operations name their channel's messages"


def test_asyncapi_schemas_reference_nothing_outside_the_document(asyncapi: dict[str, Any]) -> None:
    """pydantic writes `#/$defs/...` refs; in the document they must point into components."""
    text = ASYNCAPI.read_text()
    assert "#/$defs/" not in text and "$defs" not in text
