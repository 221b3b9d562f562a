"""Unit tests: envelope round trip, deterministic derived ids, time-ordered minted ids, registry
decoding and upcasting."""

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from opsledger.events import (
    Envelope,
    EventPayload,
    InvalidPayload,
    Stream,
    UnknownEventType,
    UnsupportedSchemaVersion,
    new_event,
)
from opsledger.events.intake import IncidentLogged
from opsledger.events.registry import EventRegistry
from opsledger.ids import uuid7


def logged(**overrides: object) -> IncidentLogged:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    fields: dict[str, object] = dict(
        source="generic", occurred_at=now, received_at=now, title="disk full", severity="high", dedup_key="k1"
    )
    fields.update(overrides)
    return IncidentLogged.model_validate(fields)


def test_envelope_round_trips_through_bytes() -> None:
    incident = uuid.uuid4()
    env = new_event(logged(), producer="intake", actor="integration:x", incident_id=incident, correlation_id="c1")
    back = Envelope.from_bytes(env.to_bytes())
    assert back == env
    assert back.key == str(incident).encode()
    assert back.event_type == "IncidentLogged" and back.schema_version == 2


def test_occurred_at_is_normalised_to_utc_and_naive_times_are_refused() -> None:
    env = new_event(
        logged(),
        producer="intake",
        actor="a",
        incident_id=uuid.uuid4(),
        occurred_at=datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
    )
    assert env.occurred_at == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    with pytest.raises(ValidationError, match="timezone"):
        Envelope.model_validate({**env.model_dump(), "occurred_at": datetime(2026, 1, 1)})


def test_derived_event_ids_are_deterministic_and_inherit_correlation() -> None:
    cause = new_event(logged(), producer="intake", actor="a", incident_id=uuid.uuid4(), correlation_id="alert-7")
    first = new_event(logged(), producer="triage", actor="system:triage", incident_id=cause.incident_id, cause=cause)
    again = new_event(logged(), producer="triage", actor="system:triage", incident_id=cause.incident_id, cause=cause)
    other = new_event(
        logged(), producer="triage", actor="system:triage", incident_id=cause.incident_id, cause=cause, ordinal=1
    )
    assert first.event_id == again.event_id != other.event_id
    assert first.causation_id == cause.event_id and first.correlation_id == "alert-7"


def test_minted_ids_are_uuid7_in_the_order_of_their_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(5_000)]  # over a few milliseconds
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    millis = [i.int >> 80 for i in ids]
    assert before <= millis[0] and millis[-1] <= after and millis == sorted(millis)
    assert len(set(millis)) > 1, "the run spanned milliseconds"
    # As the database's index orders them: by value, hence by millisecond first.
    assert [i.int >> 80 for i in sorted(ids)] == millis
    root = new_event(logged(), producer="intake", actor="a", incident_id=uuid7())
    derived = new_event(logged(), producer="triage", actor="system:triage", incident_id=root.incident_id, cause=root)
    assert root.event_id.version == 7 and derived.event_id.version == 5, "a derived event keeps its uuid5"


def test_registry_upcasts_old_versions_and_refuses_newer_ones() -> None:
    reg = EventRegistry()

    @reg.register("Thing", 1, Stream.INCIDENTS)
    class ThingV1(EventPayload):
        name: str

    @reg.register("Thing", 2, Stream.INCIDENTS)
    class ThingV2(EventPayload):
        name: str
        size: int

    @reg.upcaster("Thing", from_version=1)
    def add_size(body: dict[str, object]) -> dict[str, object]:
        return {**body, "size": 0}

    def env(version: int, payload: dict[str, object], event_type: str = "Thing") -> Envelope:
        return Envelope(
            event_id=uuid.uuid4(),
            event_type=event_type,
            schema_version=version,
            subject="s",
            occurred_at=datetime.now(UTC),
            producer="p",
            actor="a",
            payload=payload,
        )

    assert reg.decode(env(1, {"name": "x"})) == ThingV2(name="x", size=0)
    assert reg.decode(env(2, {"name": "x", "size": 3})) == ThingV2(name="x", size=3)
    with pytest.raises(UnsupportedSchemaVersion, match="v3 is newer than v2"):
        reg.decode(env(3, {"name": "x"}))
    with pytest.raises(UnknownEventType):
        reg.decode(env(1, {}, event_type="Nope"))
    with pytest.raises(InvalidPayload, match="size"):
        reg.decode(env(2, {"name": "x", "size": "big"}))


def test_every_registered_event_names_its_stream() -> None:
    from opsledger.events import registry

    for name, model in registry.types().items():
        assert model.event_type == name
        assert model.stream in set(Stream)


def test_incident_logged_v1_on_the_log_is_read_as_v2_without_a_reported_time() -> None:
    from opsledger.events import registry

    v2 = new_event(
        logged(reported_at=datetime(2026, 11, 22, 11, 0, tzinfo=UTC)),
        producer="intake",
        actor="a",
        incident_id=uuid.uuid4(),
    )
    v1_body = {k: v for k, v in v2.payload.items() if k != "reported_at"}
    v1 = v2.model_copy(update={"schema_version": 1, "payload": v1_body})
    read = registry.decode(v1)
    assert isinstance(read, IncidentLogged) and read.schema_version == 2
    assert read.reported_at is None and read.title == "disk full"
    assert registry.decode(v2) == logged(reported_at=datetime(2026, 11, 22, 11, 0, tzinfo=UTC))
    with pytest.raises(InvalidPayload, match="severity"):
        registry.decode(v1.model_copy(update={"payload": {**v1_body, "severity": "catastrophic"}}))
