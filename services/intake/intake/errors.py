"""Rejections of bad requests: a 4xx naming the field at fault, as RFC 9457 problem details or, on
the PagerDuty-compatible endpoint, in PagerDuty's shape (so its client libraries understand it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from opsledger import problems
from opsledger.problems import FieldError

__all__ = [
    "FieldError",
    "JSONAnswer",
    "PagerDutyError",
    "Rejected",
    "invalid",
    "json_body",
    "pagerduty",
    "parse",
    "standard",
]

M = TypeVar("M", bound=BaseModel)


@dataclass
class Rejected(Exception):
    status: int
    message: str
    errors: list[FieldError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


def field_errors(exc: ValidationError) -> list[FieldError]:
    # Never echo the input back: it may be large or hold secrets.
    return problems.validation_errors(exc.errors(include_url=False, include_input=False))


def invalid(exc: ValidationError) -> Rejected:
    errors = field_errors(exc)
    return Rejected(422, f"invalid request: {problems.summary(errors)}", errors)


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


# Deeper nesting has no use in an alert, and pydantic refuses to serialize past ~255 levels (the raw
# body is kept on the event), so it is refused here rather than failing half-way as a 500.
MAX_DEPTH = 64


def depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether a parsed JSON value nests objects/arrays more than `limit` levels (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, or a 415 (not JSON) / 400 (malformed or nested too deep) / 422
    (not an object)."""
    if not is_json(request.headers.get("content-type")):
        raise Rejected(
            415,
            f"header 'content-type': expected application/json, got {request.headers.get('content-type')!r}",
            [FieldError("content-type", "expected application/json")],
        )
    raw = await request.body()
    # RFC 8259 lets a parser ignore a UTF-8 byte order mark; Windows tools write one.
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejected(400, f"body: malformed JSON: {exc}", [FieldError("body", f"malformed JSON: {exc}")]) from None
    if not isinstance(body, dict):
        raise Rejected(422, "body: expected a JSON object", [FieldError("body", "expected a JSON object")])
    if depth_exceeds(body):
        message = f"nested deeper than {MAX_DEPTH} levels"
        raise Rejected(400, f"body: {message}", [FieldError("body", message)])
    return body


def parse(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid(exc) from None


class JSONAnswer(Response):
    """orjson-encoded JSON answer (what FastAPI's deprecated ORJSONResponse did)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def standard(rejected: Rejected) -> Response:
    """OpsLedger's answer: problem details."""
    return problems.response(rejected.status, rejected.message, rejected.errors, rejected.headers)


class PagerDutyError(BaseModel):
    """PagerDuty Events API v2's error answer, as `pagerduty()` writes it (documentation)."""

    status: Literal["invalid event", "unauthorized", "error"]
    message: str
    errors: list[str]


def pagerduty(rejected: Rejected) -> JSONAnswer:
    """PagerDuty's error shape: 400 for anything wrong with the event."""
    status = rejected.status if rejected.status in (401, 403, 413, 415, 429, 503) else 400
    messages = [f"'{e.field}' {e.message}" for e in rejected.errors] or [rejected.message]
    return JSONAnswer(
        {
            "status": "invalid event" if status == 400 else "unauthorized" if status in (401, 403) else "error",
            "message": "Event object is invalid" if status == 400 else rejected.message,
            "errors": messages,
        },
        status_code=status,
        headers=rejected.headers,
    )
