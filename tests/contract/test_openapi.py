"""/openapi.json is complete: every route documents its success answer with a real schema and its
errors as problem details, and intake's ingest routes publish the request bodies they read by hand."""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

import pytest
from pydantic import BaseModel

from intake import formats
from tests.contract.test_roles import OPERATIONS, SERVICES, api_routes

INGEST = {
    "/v1/alerts": formats.GenericAlert,
    "/v1/integrations/alertmanager": formats.AlertmanagerWebhook,
    "/v2/enqueue": formats.PagerDutyEvent,
    "/v1/incidents": formats.ReportIn,
}
# PagerDuty clients read PagerDuty's own error shape; every other error is problem details.
PAGERDUTY = ("intake", "/v2/enqueue")


@cache
def app_of(service: str) -> Any:
    return importlib.import_module(f"{service}.app").build(importlib.import_module(f"{service}.settings").Settings())


@cache
def document(service: str) -> dict[str, Any]:
    doc: dict[str, Any] = app_of(service).openapi()
    return doc


def operations() -> list[tuple[str, str, str]]:
    found = []
    for service in SERVICES:
        for route, _ in api_routes(app_of(service).routes):
            if route.path not in OPERATIONS:
                found.extend((service, method, route.path) for method in sorted(route.methods - {"HEAD"}))
    return found


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref: str = schema["$ref"]
        assert ref.startswith("#/components/schemas/"), ref
        schema = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return schema


def described(doc: dict[str, Any], schema: dict[str, Any]) -> bool:
    """Whether `schema` says what the answer holds: named properties, or items / branches that do
    (not `{}`, not an open `{"type": "object"}`)."""
    schema = resolve(doc, schema)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        return all(described(doc, b) for b in branches if b.get("type") != "null")
    if schema.get("type") == "array":
        return described(doc, schema.get("items", {}))
    return bool(schema.get("properties"))


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_there_are_routes_to_check() -> None:
    services = {service for service, _, _ in operations()}
    assert {"intake", "triage", "reporting"} <= services


@pytest.mark.parametrize(("service", "method", "path"), operations())
def test_every_route_documents_its_success_answer(service: str, method: str, path: str) -> None:
    doc = document(service)
    responses = doc["paths"][path][method.lower()]["responses"]
    success = {status: r for status, r in responses.items() if status.startswith("2")}
    assert success, f"{service} {method} {path}: no 2xx response"
    for status, response in success.items():
        content = response.get("content", {})
        if "application/json" not in content:
            # A document (text/markdown, text/csv): its media type says what it is.
            assert any(m.get("schema") for m in content.values()), f"{service} {method} {path}: {status} {content}"
            continue
        schema = content["application/json"].get("schema")
        assert schema, f"{service} {method} {path}: {status} has no JSON schema"
        assert described(doc, schema), f"{service} {method} {path}: {status} answers {schema}"


@pytest.mark.parametrize(("service", "method", "path"), operations())
def test_every_route_documents_its_errors_as_problem_details(service: str, method: str, path: str) -> None:
    doc = document(service)
    responses = doc["paths"][path][method.lower()]["responses"]
    errors = {status: r for status, r in responses.items() if status[0] in "45"}
    assert "401" in errors and "403" in errors, f"{service} {method} {path}: who may not call it is undocumented"
    for status, response in errors.items():
        content = response["content"]
        if (service, path) == PAGERDUTY:
            schema = resolve(doc, content["application/json"]["schema"])
            assert set(schema["required"]) == {"status", "message", "errors"}
            continue
        # FastAPI's own 422 shape (HTTPValidationError) is never what the services answer.
        assert set(content) == {"application/problem+json"}, f"{service} {method} {path}: {status} {set(content)}"
        schema = resolve(doc, content["application/problem+json"]["schema"])
        assert set(schema["required"]) == {"type", "title", "status", "detail", "errors"}
        assert set(schema["properties"]["errors"]["items"]["required"]) == {"field", "message"}


def test_a_too_large_pagerduty_event_is_documented_in_both_shapes() -> None:
    # The size limit answers before any route runs, as problem details; intake's own checks answer
    # as PagerDuty does.
    content = document("intake")["paths"]["/v2/enqueue"]["post"]["responses"]["413"]["content"]
    assert set(content) == {"application/json", "application/problem+json"}


@pytest.mark.parametrize("service", SERVICES)
def test_every_reference_resolves(service: str) -> None:
    doc = document(service)
    for ref in refs(doc["paths"]):
        resolve(doc, {"$ref": ref})


@pytest.mark.parametrize(("path", "model"), INGEST.items())
def test_ingest_routes_publish_their_request_schema(path: str, model: type[BaseModel]) -> None:
    doc = document("intake")
    body = doc["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    schema = resolve(doc, body["content"]["application/json"]["schema"])
    expected = model.model_json_schema()
    assert schema["title"] == model.__name__
    assert schema["required"] == expected["required"]
    assert set(schema["properties"]) == set(expected["properties"])
    for name, prop in schema["properties"].items():
        # Nested models are spelled out, not left as references into the model's own $defs.
        assert "#/$defs/" not in str(prop), (path, name)


def test_ingest_schemas_are_the_real_models() -> None:
    doc = document("intake")

    def schema(path: str) -> dict[str, Any]:
        return resolve(doc, doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"])

    assert schema("/v1/alerts")["required"] == ["title"]
    assert schema("/v1/alerts")["additionalProperties"] is False  # our format: unknown fields are refused
    assert schema("/v2/enqueue")["required"] == ["routing_key", "event_action"]
    payload = next(s for s in schema("/v2/enqueue")["properties"]["payload"]["anyOf"] if s.get("type") != "null")
    assert set(payload["required"]) == {"summary", "source", "severity"}
    assert "class" in payload["properties"]  # PagerDuty's name, not the Python one
    alerts = schema("/v1/integrations/alertmanager")["properties"]["alerts"]
    assert alerts["items"]["required"] == ["status", "labels"]
    report = schema("/v1/incidents")
    assert report["required"] == ["title"]
    assert set(report["properties"]["business_impact"]["anyOf"][0]["properties"]) == {"text", "level"}


@pytest.mark.parametrize("path", INGEST)
def test_ingest_routes_still_read_their_bodies_by_hand(path: str) -> None:
    # Documented, not parsed: FastAPI must not read or validate these bodies (raw size, depth and
    # PagerDuty's error shape are intake's to check).
    [route] = [r for r, _ in api_routes(app_of("intake").routes) if r.path == path]
    assert route.body_field is None


def test_reporting_timeline_model_is_what_the_query_answers() -> None:
    from reporting import api, queries
    from reporting.store import timeline

    class Row:
        _mapping = {c.name: "{}" if c.name == "payload" else None for c in timeline.columns}

    assert list(queries.timeline_entry(Row())) == list(api.TimelineEntry.model_fields)
