"""Pure decisions of the resolution service (no I/O): what it knows of an incident, and how each event it
consumes changes that. The stage's own rules grow here, each a reaction registered on `decider`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opsledger.events import Envelope
from opsledger.events.intake import IncidentLogged
from opsledger.stage import Decider, Decision


@dataclass(frozen=True)
class Incident:
    """What this service knows of one incident so far."""

    logged_at: datetime
    title: str


# No configuration yet: the context decisions are made under is None.
decider: Decider[Incident, None] = Decider()


@decider.on(IncidentLogged)
def on_logged(state: Incident | None, event: Envelope, logged: IncidentLogged, context: Any) -> Decision[Incident]:
    """Remember the incident (once: a second IncidentLogged for it changes nothing)."""
    if state is not None:
        return Decision(state)
    return Decision(Incident(logged_at=event.occurred_at, title=logged.title))
