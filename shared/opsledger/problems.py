"""One error body for every service: RFC 9457 problem details (`application/problem+json`) with
`type`, `title`, `status`, `detail` and `errors: [{field, message}]` naming what was at fault."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
# RFC 9457 §4.2.1: "about:blank" says the problem is what its HTTP status says it is.
BLANK = "about:blank"


@dataclass(frozen=True)
class FieldError:
    """One fault: a dotted path into the request (`body.rules.0.pattern`, `query.limit`), a header
    name (`authorization`), or `body` for the request as a whole."""

    field: str
    message: str


class Problem(HTTPException):
    """An HTTPException answered as problem details, with the fields at fault."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: Iterable[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        type: str = BLANK,
        title: str | None = None,
    ) -> None:
        super().__init__(status, detail, dict(headers) if headers else None)
        self.errors = list(errors)
        self.type = type
        self.title = title


def title_of(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def body(
    status: int, detail: str, errors: Iterable[FieldError] = (), type: str = BLANK, title: str | None = None
) -> dict[str, Any]:
    """The problem-details document."""
    return {
        "type": type,
        "title": title or title_of(status),
        "status": status,
        "detail": detail,
        "errors": [{"field": e.field, "message": e.message} for e in errors],
    }


# Documentation only (OpenAPI): the bodies themselves are written by `body()`.
class ProblemFieldError(BaseModel):
    """One fault: where it is, and what was wrong."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="a dotted path into the request (`body.rules.0.pattern`), a header, or `body`")
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details (`application/problem+json`): the body of every error answer."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="a URI naming the problem; about:blank when the status says it all")
    title: str = Field(description="the HTTP status phrase (or the problem type's title)")
    status: int
    detail: str = Field(description="what was wrong, naming the field at fault")
    errors: list[ProblemFieldError]

    @classmethod
    def responses(cls, *statuses: int | str) -> dict[int | str, dict[str, Any]]:
        """OpenAPI `responses` documenting `statuses` (or a range such as "4XX") as problem details."""
        schema = cls.model_json_schema()
        defs = schema.pop("$defs", {})

        def inline(node: Any) -> Any:
            # Self-contained: FastAPI puts only route models in components, and "#/$defs/..."
            # would point at the root of the OpenAPI document.
            if isinstance(node, dict):
                if "$ref" in node:
                    return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
                return {k: inline(v) for k, v in node.items()}
            if isinstance(node, list):
                return [inline(v) for v in node]
            return node

        content = {MEDIA_TYPE: {"schema": inline(schema)}}
        ranges = {"4XX": "Client error", "5XX": "Server error"}
        return {
            status: {"description": ranges.get(str(status)) or title_of(int(status)), "content": content}
            for status in statuses
        }


class ProblemResponse(Response):
    media_type = MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str)


def response(
    status: int,
    detail: str,
    errors: Iterable[FieldError] = (),
    headers: Mapping[str, str] | None = None,
    type: str = BLANK,
    title: str | None = None,
) -> ProblemResponse:
    """A problem-details answer."""
    return ProblemResponse(body(status, detail, errors, type, title), status_code=status, headers=headers)


def field_path(loc: Sequence[int | str]) -> str:
    """pydantic's error location as a dotted path; a bad dict key (`..., "<key>", "[key]"`) is
    named "labels.<key> (the key)"."""
    if len(loc) >= 2 and loc[-1] == "[key]":
        return f"{field_path(loc[:-1])} (the key)"
    return ".".join(str(part) for part in loc) or "body"


def validation_errors(errors: Sequence[Any]) -> list[FieldError]:
    """pydantic / FastAPI validation errors as field errors (never echoing the input back: it may
    be large or hold secrets)."""
    return [FieldError(field_path(e.get("loc", ())), str(e.get("msg", "invalid")).removeprefix("Value error, "))
            for e in errors]  # fmt: skip


def summary(errors: Sequence[FieldError], limit: int = 5) -> str:
    return "; ".join(f"field '{e.field}': {e.message}" for e in errors[:limit])


def _from_http_exception(exc: StarletteHTTPException) -> ProblemResponse:
    headers = getattr(exc, "headers", None)
    if isinstance(exc, Problem):
        return response(exc.status_code, str(exc.detail), exc.errors, headers, exc.type, exc.title)
    detail = exc.detail
    if isinstance(detail, str):
        return response(exc.status_code, detail, headers=headers)
    # A structured detail from older code: keep its text, never a 500.
    return response(exc.status_code, orjson.dumps(detail, default=str).decode(), headers=headers)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return _from_http_exception(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc.errors())
    return response(422, f"invalid request: {summary(errors)}", errors)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette logs the exception itself; the caller gets the same shape as any other error.
    return response(500, "internal error; the service log has the details")


def install(app: FastAPI) -> None:
    """Answer every error of `app` as problem details: HTTP exceptions (auth errors included),
    request validation errors (fields named by path) and anything unexpected."""
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
