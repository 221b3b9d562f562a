"""Tables of the assignment service (its own database) and the queries on them."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from assignment.config import Load
from assignment.domain import OPEN, Incident, Task
from opsledger.db import driver_fetch, write_rows
from opsledger.events.assignment import TaskOrigin, TaskPriority, TaskStatus
from opsledger.events.common import PersonRef

metadata = sa.MetaData()

# The incidents this service has heard of, and where their assignment stands: the columns others
# query (status, team, assignee) beside the rest of the state as JSON.
known_incidents = sa.Table(
    "known_incidents",
    metadata,
    sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("status", sa.Text),
    sa.Column("team_id", sa.Text),
    sa.Column("assignee_sub", sa.Text),
    sa.Column("assigned_at", sa.DateTime(timezone=True)),
    sa.Column("state", pg.JSONB),
)
# Open incidents per assignee (least loaded) is read once per unit of work: only open rows count.
sa.Index(
    "known_incidents_open_assignee",
    known_incidents.c.assignee_sub,
    postgresql_where=known_incidents.c.status == OPEN,
)

# When each person was last given an incident (round robin among the least loaded): one small row
# per person, so the read does not grow with the incident history.
people = sa.Table(
    "people",
    metadata,
    sa.Column("sub", sa.Text, primary_key=True),
    sa.Column("last_assigned_at", sa.DateTime(timezone=True)),
    # Kept current by `save` (a delta per unit of work), so reading the load does not grow with
    # the number of open incidents.
    sa.Column("open_incidents", sa.Integer, nullable=False, server_default="0"),
    sa.Column("open_tasks", sa.Integer, nullable=False, server_default="0"),
)

# Tasks split off incidents; an incident's tasks are part of its state (loaded and saved with it).
tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("task_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("incident_id", pg.UUID(as_uuid=True), nullable=False, index=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("assignee_sub", sa.Text),
    sa.Column("assignee", pg.JSONB),
    sa.Column("priority", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("due_at", sa.DateTime(timezone=True)),
    sa.Column("required_skills", pg.JSONB, nullable=False),
    sa.Column("origin", sa.Text, nullable=False),
    sa.Column("review_event_id", pg.UUID(as_uuid=True)),
    sa.Column("action_item_id", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("tasks_assignee", tasks.c.assignee_sub, tasks.c.status)
OPEN_TASK = ("open", "in_progress")

# Every version of every configuration object (kind: team | schedule | policy | routing); the
# highest version of an object is in force. Rows are never updated: this is the history.
config_versions = sa.Table(
    "config_versions",
    metadata,
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("object_id", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("body", pg.JSONB, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# Once seeded, the demo configuration is never seeded again (even after it was changed).
seeds = sa.Table(
    "seeds",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


# --------------------------------------------------------------------------- incidents


def state_of(row: Any, its_tasks: Sequence[Task] = ()) -> Incident:
    return Incident.from_row(row.logged_at, row.title, row.status, row.team_id, row.assigned_at, row.state, its_tasks)


def task_of(row: Any) -> Task:
    return Task(
        task_id=row.task_id,
        title=row.title,
        created_at=row.created_at,
        description=row.description,
        assignee=PersonRef.model_validate(row.assignee) if row.assignee else None,
        priority=TaskPriority(row.priority),
        status=TaskStatus(row.status),
        due_at=row.due_at,
        required_skills=tuple(row.required_skills),
        origin=TaskOrigin(row.origin),
        review_event_id=row.review_event_id,
        action_item_id=row.action_item_id,
    )


# The reads of every unit of work (a consumed batch, a fired timer, a command) go to the driver as
# plain statements, prepared once per connection: through SQLAlchemy each cost about 110-150 us of
# Python, through the driver about 70 (a fifth of this service's CPU per batch at 10 alerts/s).
# Rows are read by position into the tuples below; tasks, into the table's columns by name.
_TASK_COLUMNS = tuple(c.name for c in tasks.c)
_TASKS_OF = (
    f"SELECT {', '.join(_TASK_COLUMNS)} FROM tasks WHERE incident_id = ANY($1::uuid[]) ORDER BY created_at, task_id"
)


class _IncidentRow(NamedTuple):
    incident_id: uuid.UUID
    logged_at: datetime
    title: str
    status: str | None
    team_id: str | None
    assigned_at: datetime | None
    state: Any


_LOAD = (
    f"SELECT {', '.join(_IncidentRow._fields)} FROM known_incidents WHERE incident_id = ANY($1::uuid[])"
    " ORDER BY incident_id FOR UPDATE"
)


class _Person(NamedTuple):
    sub: str
    last_assigned_at: datetime | None
    open_incidents: int
    open_tasks: int


_PEOPLE = f"SELECT {', '.join(_Person._fields)} FROM people"
_VERSIONS_IN_FORCE = "SELECT kind, object_id, max(version) FROM config_versions GROUP BY kind, object_id"


async def tasks_of(session: AsyncSession, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, list[Task]]:
    """The tasks of these incidents, as created."""
    found: dict[uuid.UUID, list[Task]] = {}
    if ids:
        for row in await driver_fetch(session, _TASKS_OF, sorted(ids)):
            task = SimpleNamespace(**dict(zip(_TASK_COLUMNS, row, strict=True)))
            found.setdefault(task.incident_id, []).append(task_of(task))
    return found


async def tasks_of_person(session: AsyncSession, sub: str, open_only: bool = True) -> list[tuple[uuid.UUID, Task]]:
    """A person's tasks (open ones only, by default), with their incidents."""
    query = sa.select(tasks).where(tasks.c.assignee_sub == sub)
    if open_only:
        query = query.where(tasks.c.status.in_(OPEN_TASK))
    return [(row.incident_id, task_of(row)) for row in await session.execute(query.limit(1000))]


async def incidents_of_person(session: AsyncSession, sub: str) -> list[tuple[uuid.UUID, Incident]]:
    """The open incidents assigned to a person, latest assignment first."""
    c = known_incidents.c
    query = (
        sa.select(known_incidents)
        .where(c.assignee_sub == sub, c.status == OPEN)
        .order_by(c.assigned_at.desc())
        .limit(1000)
    )
    return [(row.incident_id, state_of(row)) for row in await session.execute(query)]


async def load(session: AsyncSession, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Incident]:
    """The incidents among `ids` this service knows, locked (in id order) for the transaction."""
    if not ids:
        return {}
    rows = [_IncidentRow(*row) for row in await driver_fetch(session, _LOAD, sorted(ids))]
    its_tasks = await tasks_of(session, [row.incident_id for row in rows])
    return {row.incident_id: state_of(row, its_tasks.get(row.incident_id, ())) for row in rows}


# Compiled once and executed for every row: a VALUES list of N rows would be a new statement to
# compile for every N.
_INCIDENT_COLUMNS = ("logged_at", "title", "status", "team_id", "assignee_sub", "assigned_at", "state")
_PEOPLE_UPSERT = pg_insert(people)
_SAVE_PERSON = _PEOPLE_UPSERT.on_conflict_do_update(
    index_elements=["sub"],
    set_={
        "last_assigned_at": sa.func.greatest(people.c.last_assigned_at, _PEOPLE_UPSERT.excluded.last_assigned_at),
        "open_incidents": people.c.open_incidents + _PEOPLE_UPSERT.excluded.open_incidents,
        "open_tasks": people.c.open_tasks + _PEOPLE_UPSERT.excluded.open_tasks,
    },
)
_TASK_UPSERT = pg_insert(tasks)
_SAVE_TASK = _TASK_UPSERT.on_conflict_do_update(
    index_elements=["task_id"],
    set_={
        c: _TASK_UPSERT.excluded[c]
        for c in ("title", "description", "assignee_sub", "assignee", "priority", "status", "due_at")
    },
)


async def save(
    session: AsyncSession, changed: Mapping[uuid.UUID, Incident], loaded: Mapping[uuid.UUID, Incident]
) -> None:
    """Write the incidents a unit of work changed (`loaded`: as they were), and move each person's
    counts of open incidents and tasks by what changed."""
    if not changed:
        return
    rows = [
        {
            "incident_id": k,
            "logged_at": v.logged_at,
            "title": v.title,
            "status": v.status,
            "team_id": v.team_id,
            "assignee_sub": v.assignee.sub if v.assignee else None,
            "assigned_at": v.assigned_at,
            "state": v.as_json(),
        }
        for k, v in sorted(changed.items())
    ]
    await write_rows(session, known_incidents, rows, key=["incident_id"], update=_INCIDENT_COLUMNS)
    task_rows = [
        {
            "task_id": t.task_id,
            "incident_id": k,
            "title": t.title,
            "description": t.description,
            "assignee_sub": t.assignee.sub if t.assignee else None,
            "assignee": t.assignee.model_dump() if t.assignee else None,
            "priority": str(t.priority),
            "status": str(t.status),
            "due_at": t.due_at,
            "required_skills": list(t.required_skills),
            "origin": str(t.origin),
            "review_event_id": t.review_event_id,
            "action_item_id": t.action_item_id,
            "created_at": t.created_at,
        }
        for k, v in sorted(changed.items())
        for t in v.tasks
    ]
    counts: dict[str, list[int]] = {}  # sub -> [open incidents, open tasks], as deltas
    for k, v in changed.items():
        _count(counts, loaded.get(k), -1)
        _count(counts, v, +1)
    last: dict[str, datetime] = {}
    for v in changed.values():
        if v.assignee is not None and v.assigned_at is not None:
            last[v.assignee.sub] = max(v.assigned_at, last.get(v.assignee.sub, v.assigned_at))
    # In sub order: two units of work touching the same people lock their rows in the same order.
    moved = {sub for sub, n in counts.items() if n != [0, 0]}
    people_rows = []
    for sub in sorted(moved | last.keys()):
        incidents, open_tasks = counts.get(sub, [0, 0])
        people_rows.append(
            {"sub": sub, "last_assigned_at": last.get(sub), "open_incidents": incidents, "open_tasks": open_tasks}
        )
    if people_rows:
        await session.execute(_SAVE_PERSON, people_rows)
    if task_rows:
        await session.execute(_SAVE_TASK, task_rows)


async def incident(session: AsyncSession, incident_id: uuid.UUID) -> Incident | None:
    query = sa.select(known_incidents).where(known_incidents.c.incident_id == incident_id)
    row = (await session.execute(query)).first()
    if row is None:
        return None
    return state_of(row, (await tasks_of(session, [incident_id])).get(incident_id, ()))


def _count(counts: dict[str, list[int]], state: Incident | None, sign: int) -> None:
    if state is None:
        return
    if state.status == OPEN and state.assignee is not None:
        counts.setdefault(state.assignee.sub, [0, 0])[0] += sign
    for task in state.tasks:
        if str(task.status) in OPEN_TASK and task.assignee is not None:
            counts.setdefault(task.assignee.sub, [0, 0])[1] += sign


async def load_of_people(session: AsyncSession) -> Load:
    """Open incidents and open tasks per assignee, and when each person was last assigned: one
    small row per person."""
    rows = [_Person(*row) for row in await driver_fetch(session, _PEOPLE)]
    return Load(
        {r.sub: r.open_incidents for r in rows if r.open_incidents},
        {r.sub: r.last_assigned_at for r in rows if r.last_assigned_at is not None},
        {r.sub: r.open_tasks for r in rows if r.open_tasks},
    )


# --------------------------------------------------------------------------- configuration


async def versions_in_force(session: AsyncSession) -> dict[tuple[str, str], int]:
    """(kind, object id) -> the version in force: one cheap query per unit of work."""
    rows = await driver_fetch(session, _VERSIONS_IN_FORCE)
    return {(kind, object_id): version for kind, object_id, version in rows}


async def configs_at(session: AsyncSession, versions: Mapping[tuple[str, str], int]) -> list[sa.Row[Any]]:
    """The stored rows of exactly these versions."""
    if not versions:
        return []
    c = config_versions.c
    wanted = sa.tuple_(c.kind, c.object_id, c.version).in_([(k, o, v) for (k, o), v in versions.items()])
    return list((await session.execute(sa.select(config_versions).where(wanted))).all())


async def current(session: AsyncSession, kind: str, object_id: str | None = None) -> list[sa.Row[Any]]:
    """The rows in force of a kind (or of one object), by object id."""
    c = config_versions.c
    latest = sa.select(c.kind, c.object_id, sa.func.max(c.version).label("version")).where(c.kind == kind)
    if object_id is not None:
        latest = latest.where(c.object_id == object_id)
    sub = latest.group_by(c.kind, c.object_id).subquery()
    query = (
        sa.select(config_versions)
        .join(sub, sa.and_(sub.c.kind == c.kind, sub.c.object_id == c.object_id, sub.c.version == c.version))
        .order_by(c.object_id)
    )
    return list((await session.execute(query)).all())


async def history(session: AsyncSession, kind: str, object_id: str, limit: int) -> list[sa.Row[Any]]:
    c = config_versions.c
    query = (
        sa.select(config_versions)
        .where(c.kind == kind, c.object_id == object_id)
        .order_by(c.version.desc())
        .limit(limit)
    )
    return list((await session.execute(query)).all())


async def lock_config(session: AsyncSession) -> None:
    """Serialise configuration changes (they validate against each other) for this transaction."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(0x61737369676E)))  # "assign"


async def save_config(
    session: AsyncSession,
    kind: str,
    object_id: str,
    version: int,
    body: dict[str, Any],
    actor: str,
    comment: str | None,
    at: datetime,
) -> None:
    await session.execute(
        sa.insert(config_versions).values(
            kind=kind, object_id=object_id, version=version, body=body, actor=actor, comment=comment, created_at=at
        )
    )


async def claim_seed(session: AsyncSession, name: str, at: datetime) -> bool:
    """True the first time (ever) `name` is claimed."""
    result = await session.execute(pg.insert(seeds).values(name=name, created_at=at).on_conflict_do_nothing())
    return bool(result.rowcount)  # type: ignore[attr-defined]
