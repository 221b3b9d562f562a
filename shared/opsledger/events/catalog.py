"""The checked-in event catalog: a JSON Schema for every event type and version, so consumers
outside this repo can validate what is on the log, and the same contract as an AsyncAPI 3.0.0
document (channels = the topics, message key = the envelope's subject). `make catalog` rewrites
both; a contract test fails when the code and either document drift apart."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import orjson
from pydantic.json_schema import models_json_schema

from opsledger.bus.topics import STREAM_CONFIG
from opsledger.events import registry
from opsledger.events.envelope import Envelope
from opsledger.events.registry import EventPayload, Stream

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
DEFAULT_TOPIC_PREFIX = "opsledger"  # opsledger.settings.ServiceSettings.topic_prefix
SCHEMA_REF = "#/components/schemas/{model}"


def contract_models() -> list[type[EventPayload]]:
    """Every registered event version that is part of the contract, sorted by type and version."""
    # Events registered by tests or benchmarks are not part of the contract.
    return [m for m in registry.all_versions() if m.__module__.startswith("opsledger.events.")]


def build_catalog() -> dict[str, Any]:
    events: dict[str, Any] = {}
    for model in contract_models():
        events.setdefault(model.event_type, {"stream": str(model.stream), "versions": {}})
        events[model.event_type]["versions"][str(model.schema_version)] = {
            "description": (model.__doc__ or "").strip() or None,
            "payload": model.model_json_schema(),
        }
    return {"envelope": Envelope.model_json_schema(), "events": events}


def render() -> bytes:
    return orjson.dumps(build_catalog(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


# --- AsyncAPI -----------------------------------------------------------------------------------


def message_id(model: type[EventPayload]) -> str:
    return f"{model.event_type}.v{model.schema_version}"


def producer_of(model: type[EventPayload]) -> str:
    """The producing service: schemas live in one module per producing service."""
    return model.__module__.rsplit(".", 1)[-1]


def _doc(model: type[Any]) -> str:
    return " ".join((model.__doc__ or "").split())


def _topic_configuration() -> dict[str, Any]:
    """The topic configuration every stream is created with (opsledger.bus.topics)."""
    return {
        "cleanup.policy": [STREAM_CONFIG["cleanup.policy"]],
        "retention.ms": int(STREAM_CONFIG["retention.ms"]),
        "retention.bytes": int(STREAM_CONFIG["retention.bytes"]),
        "max.message.bytes": int(STREAM_CONFIG["max.message.bytes"]),
    }


def build_asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document: one channel per stream (topic `<prefix>.<stream>`), one message
    per event type and version (the envelope, its payload being the event's schema), a send
    operation per producing service and stream, and a receive operation per stream."""
    models = contract_models()
    # One schema namespace for every model (pydantic disambiguates equal class names), with refs
    # pointing into components/schemas instead of each schema's own $defs.
    _, top = models_json_schema(
        [(Envelope, "validation"), *((m, "validation") for m in models)], ref_template=SCHEMA_REF
    )
    schemas: dict[str, Any] = dict(sorted(top.get("$defs", {}).items()))
    envelope_ref = SCHEMA_REF.format(model=Envelope.__name__)

    messages: dict[str, Any] = {}
    for model in models:
        mid = message_id(model)
        messages[mid] = {
            "name": model.event_type,
            "title": f"{model.event_type} v{model.schema_version}",
            "summary": _doc(model).split(". ")[0].rstrip(".") or model.event_type,
            "description": _doc(model) or None,
            "contentType": "application/json",
            "correlationId": {"$ref": "#/components/correlationIds/correlation"},
            "payload": {
                "allOf": [
                    {"$ref": envelope_ref},
                    {
                        "type": "object",
                        "properties": {
                            "event_type": {"const": model.event_type},
                            "schema_version": {"const": model.schema_version},
                            "payload": {"$ref": SCHEMA_REF.format(model=model.__name__)},
                        },
                    },
                ]
            },
            "bindings": {
                "kafka": {
                    "key": {
                        "type": "string",
                        "maxLength": 200,
                        "description": "The envelope's `subject`: the incident id for lifecycle events, "
                        "the configuration object's id for configuration events.",
                    },
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        }
        if messages[mid]["description"] is None:
            del messages[mid]["description"]

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for stream in Stream:
        members = [m for m in models if m.stream is stream]
        channels[str(stream)] = {
            "address": f"{{prefix}}.{stream}",
            "title": f"{stream} stream",
            "description": {
                Stream.INCIDENTS: "The incident lifecycle, written by every service through its outbox and "
                "keyed by incident id, so one incident's events keep their causal order.",
                Stream.CONFIG: "Configuration changes (rules, matrices, teams, schedules, policies, "
                "subscriptions), keyed by the configuration object's id: the audit trail of who changed what.",
            }[stream],
            "parameters": {"prefix": {"$ref": "#/components/parameters/prefix"}},
            "messages": {message_id(m): {"$ref": f"#/components/messages/{message_id(m)}"} for m in members},
            "bindings": {
                "kafka": {"topicConfiguration": _topic_configuration(), "bindingVersion": KAFKA_BINDING_VERSION}
            },
        }
        for producer in sorted({producer_of(m) for m in members}):
            operations[f"{producer}_send_{stream}"] = {
                "action": "send",
                "title": f"{producer} publishes to {stream}",
                "channel": {"$ref": f"#/channels/{stream}"},
                "messages": [
                    {"$ref": f"#/channels/{stream}/messages/{message_id(m)}"}
                    for m in members
                    if producer_of(m) == producer
                ],
            }
        operations[f"receive_{stream}"] = {
            "action": "receive",
            "title": f"Consume {stream}",
            "description": "Reporting reads every message; other services read what their handler registry lists.",
            "channel": {"$ref": f"#/channels/{stream}"},
            "messages": [{"$ref": f"#/channels/{stream}/messages/{message_id(m)}"} for m in members],
        }

    catalog_digest = hashlib.sha256(render()).hexdigest()[:12]
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "OpsLedger events",
            "version": f"catalog-{catalog_digest}",
            "description": "Every event on OpsLedger's Kafka streams, generated from the schemas in "
            "shared/opsledger/events by `make catalog` (docs/events/catalog.json holds the same schemas). "
            "Every message is the one envelope; `event_type` and `schema_version` name the payload's "
            "schema. Old versions stay listed: consumers upcast them on read.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "The broker `make up` starts (KAFKA_PORT); in docker-compose.yml it is kafka:9092.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "parameters": {
                "prefix": {
                    "default": DEFAULT_TOPIC_PREFIX,
                    "description": "OPSLEDGER_TOPIC_PREFIX: topics are named `<prefix>.<stream>`.",
                }
            },
            "correlationIds": {
                "correlation": {
                    "description": "The alert or request that started the chain of events.",
                    "location": "$message.payload#/correlation_id",
                }
            },
        },
    }


def render_asyncapi() -> bytes:
    import yaml  # a build-time tool's dependency, not the services'

    header = "# Generated by `make catalog` from shared/opsledger/events; do not edit.\n"
    body = yaml.safe_dump(build_asyncapi(), sort_keys=False, allow_unicode=True, width=110)
    return (header + body).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, required=True, help="the JSON Schema catalog")
    parser.add_argument("--asyncapi", type=Path, help="the AsyncAPI 3.0.0 document")
    args = parser.parse_args()
    args.write.parent.mkdir(parents=True, exist_ok=True)
    args.write.write_bytes(render())
    print(f"wrote {args.write} ({len(build_catalog()['events'])} event types)")
    if args.asyncapi is not None:
        args.asyncapi.parent.mkdir(parents=True, exist_ok=True)
        args.asyncapi.write_bytes(render_asyncapi())
        print(f"wrote {args.asyncapi} ({len(contract_models())} messages)")


if __name__ == "__main__":
    main()
