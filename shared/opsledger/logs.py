"""JSON logs; every line logged while handling an event or request carries its correlation and
incident ids (held in context variables, so concurrent tasks do not mix them up)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from opsledger.events.envelope import Envelope

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
incident_id: ContextVar[str | None] = ContextVar("incident_id", default=None)


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        if (cid := correlation_id.get()) is not None:
            record.correlation_id = cid
        if (iid := incident_id.get()) is not None:
            record.incident_id = iid
        return True


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service))
    if json:
        handler.setFormatter(
            JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level"})
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka is chatty at INFO about every (re)connection and group join.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


def current_correlation_id() -> str | None:
    """The correlation id bound to this request or event (None outside one)."""
    return correlation_id.get()


@contextlib.contextmanager
def log_context(
    envelope: Envelope | None = None, *, correlation: str | None = None, incident: str | None = None
) -> Iterator[None]:
    """Bind correlation and incident ids for every log line inside the block."""
    if envelope is not None:
        correlation = correlation or envelope.correlation_id
        incident = incident or (str(envelope.incident_id) if envelope.incident_id else None)
    tokens = (correlation_id.set(correlation), incident_id.set(incident))
    try:
        yield
    finally:
        correlation_id.reset(tokens[0])
        incident_id.reset(tokens[1])
