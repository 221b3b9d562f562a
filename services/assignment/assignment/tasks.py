"""Tasks split off an incident, as pure decisions (no I/O): create, reassign and change status
(commands), the due reminder (a durable timer), and a completed review's action items becoming
tasks (a reaction). A task created without an assignee goes to a member of the incident's team
with the required skills: the one on call first, else the least loaded by open tasks."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

from assignment import oncall
from assignment.config import Choice, least_loaded
from assignment.domain import Caller, Conflict, Context, Incident, NotFound, Task, decider, new_incident
from opsledger.events import Envelope
from opsledger.events.assignment import (
    AssigneeChoice,
    EscalationTargetKind,
    TaskAssigned,
    TaskCreated,
    TaskOrigin,
    TaskOverdue,
    TaskPriority,
    TaskStatus,
    TaskStatusChanged,
)
from opsledger.events.common import PersonRef
from opsledger.events.resolution import PostIncidentReviewCompleted
from opsledger.stage import Command, Decision
from opsledger.timers import FiredTimer, Timer

TASK_TIMER = "task"
PRIORITY_ORDER = {TaskPriority.URGENT: 0, TaskPriority.HIGH: 1, TaskPriority.MEDIUM: 2, TaskPriority.LOW: 3}


def task_timer_key(task_id: uuid.UUID) -> str:
    return f"{TASK_TIMER}:{task_id}"


def ordered(tasks: Sequence[Task]) -> list[Task]:
    """By priority (urgent first), then as created."""
    return sorted(tasks, key=lambda t: (PRIORITY_ORDER[t.priority], t.created_at))


def _reminder(incident_id: uuid.UUID, task: Task) -> list[Timer]:
    if task.due_at is None:
        return []
    data = {"incident_id": str(incident_id), "task_id": str(task.task_id)}
    return [Timer(task_timer_key(task.task_id), task.due_at, data)]


def known_person(ctx: Context, sub: str, team_id: str | None) -> PersonRef | None:
    """A person by `sub`, as the incident's team (else any team) knows them."""
    teams = [ctx.config.teams.get(team_id or ""), *ctx.config.teams.values()]
    for team in teams:
        if team is None:
            continue
        for m in team.members:
            if m.person.sub == sub:
                return m.person
        if team.manager is not None and team.manager.sub == sub:
            return team.manager
    return None


def pick(ctx: Context, state: Incident, required: Sequence[str]) -> Choice:
    """The member of the incident's team with the required skills: on call first, else the least
    loaded by open tasks."""
    team = ctx.config.teams.get(state.team_id or "")
    if team is None:
        return Choice(None, AssigneeChoice.NOBODY, "the incident has no team to give the task to")
    skills = f" with the skills {', '.join(required)}" if required else ""
    skilled = [m.person for m in team.members if set(required) <= set(m.skills)]
    if not skilled:
        return Choice(None, AssigneeChoice.NOBODY, f"nobody in team {team.name} has the skills {', '.join(required)}")
    policy = ctx.config.policies.get(state.policy_id or team.escalation_policy_id or "")
    if policy is not None:
        for target in policy.tiers[0].targets:
            schedule = ctx.config.schedules.get(target.schedule_id or "")
            if target.kind != EscalationTargetKind.SCHEDULE or schedule is None:
                continue
            now = oncall.on_call(schedule, ctx.now)
            match = next((p for p in skilled if now is not None and p.sub == now.person.sub), None)
            if match is not None:
                return Choice(
                    match, AssigneeChoice.ON_CALL, f"on call in schedule {schedule.name}, in team {team.name}{skills}"
                )
    choice = least_loaded(skilled, ctx.load, team.name, "open tasks", ctx.load.open_tasks)
    return replace(choice, reason=choice.reason + (f" (among those{skills})" if skills else ""))


def _known(state: Incident | None) -> Incident:
    if state is None:
        raise NotFound("incident")
    return state


def _task(state: Incident, task_id: uuid.UUID) -> Task:
    task = state.task(task_id)
    if task is None:
        raise NotFound(f"task {task_id}")
    return task


def _with(state: Incident, task: Task) -> Incident:
    return replace(state, tasks=tuple(task if t.task_id == task.task_id else t for t in state.tasks))


def _created(task: Task, assignee: PersonRef | None) -> TaskCreated:
    return TaskCreated(
        task_id=task.task_id,
        title=task.title,
        description=task.description,
        assignee=assignee,
        priority=task.priority,
        due_at=task.due_at,
        required_skills=list(task.required_skills),
        origin=task.origin,
        review_event_id=task.review_event_id,
        action_item_id=task.action_item_id,
    )


def create(
    incident_id: uuid.UUID,
    caller: Caller,
    task_id: uuid.UUID,
    *,
    title: str,
    description: str | None,
    assignee: str | None,
    priority: TaskPriority,
    due_at: datetime | None,
    required_skills: Sequence[str],
) -> Command[Incident, Context]:
    """A new task on the incident: TaskCreated, then TaskAssigned when the service picks the person."""

    def command(state: Incident | None, ctx: Context) -> Decision[Incident]:
        current = _known(state)
        person = None
        if assignee is not None:
            person = known_person(ctx, assignee, current.team_id)
            if person is None:
                raise NotFound(f"person {assignee} (in no team)")
        task = Task(
            task_id=task_id,
            title=title,
            created_at=ctx.now,
            description=description,
            assignee=person,
            priority=priority,
            due_at=due_at,
            required_skills=tuple(required_skills),
        )
        events: list[TaskCreated | TaskAssigned] = [_created(task, person)]
        if person is None:
            choice = pick(ctx, current, required_skills)
            if choice.person is not None:
                task = replace(task, assignee=choice.person)
                picked = TaskAssigned(
                    task_id=task_id, assignee=choice.person, chosen_by=choice.chosen_by, reason=choice.reason
                )
                events.append(picked)
        new = replace(current, tasks=(*current.tasks, task))
        return Decision(new, events, schedule=_reminder(incident_id, task))

    return command


def reassign(
    incident_id: uuid.UUID, task_id: uuid.UUID, caller: Caller, assignee: str | None, reason: str
) -> Command[Incident, Context]:
    """Give an open task to a named person, or (none named) to the one the service picks."""

    def command(state: Incident | None, ctx: Context) -> Decision[Incident]:
        current = _known(state)
        task = _task(current, task_id)
        if not task.is_open:
            raise Conflict(f"the task is {task.status}")
        by = caller.person.name or caller.person.sub
        if assignee is not None:
            person = known_person(ctx, assignee, current.team_id)
            if person is None:
                raise NotFound(f"person {assignee} (in no team)")
            choice = Choice(person, AssigneeChoice.MANUAL, f"reassigned by {by}: {reason}")
        else:
            picked = pick(ctx, current, task.required_skills)
            if picked.person is None:
                raise Conflict(picked.reason)
            choice = replace(picked, reason=f"reassigned by {by} ({reason}): {picked.reason}")
        assert choice.person is not None
        if task.assignee is not None and task.assignee.sub == choice.person.sub:
            raise Conflict(f"the task is assigned to {choice.person.sub} already")
        event = TaskAssigned(
            task_id=task_id,
            assignee=choice.person,
            previous_assignee=task.assignee,
            chosen_by=choice.chosen_by,
            reason=choice.reason[:2000],
        )
        return Decision(_with(current, replace(task, assignee=choice.person)), [event])

    return command


def change_status(
    incident_id: uuid.UUID, task_id: uuid.UUID, caller: Caller, status: TaskStatus, note: str | None
) -> Command[Incident, Context]:
    """Open <-> in progress, or on to done or cancelled (final: a final task changes no more)."""

    def command(state: Incident | None, ctx: Context) -> Decision[Incident]:
        current = _known(state)
        task = _task(current, task_id)
        if not task.is_open:
            raise Conflict(f"the task is {task.status}: it cannot become {status}")
        if task.status == status:
            raise Conflict(f"the task is {status} already")
        event = TaskStatusChanged(task_id=task_id, status=status, previous_status=task.status, note=note)
        changed = replace(task, status=status)
        cancel = [] if changed.is_open else [task_timer_key(task_id)]
        return Decision(_with(current, changed), [event], cancel=cancel)

    return command


@decider.on(PostIncidentReviewCompleted)
def on_review_completed(
    state: Incident | None, event: Envelope, review: PostIncidentReviewCompleted, ctx: Context
) -> Decision[Incident]:
    """Each action item becomes a task for its owner, linked to the review (once: the task's id
    derives from the review event and the item); due at the end of its due day, UTC."""
    current = state or new_incident(event)
    assert event.incident_id is not None
    tasks = list(current.tasks)
    events: list[TaskCreated] = []
    timers: list[Timer] = []
    for item in review.action_items:
        task_id = uuid.uuid5(event.event_id, item.item_id)
        if current.task(task_id) is not None:
            continue
        due = datetime.combine(item.due + timedelta(days=1), time(0), tzinfo=UTC) if item.due else None
        task = Task(
            task_id=task_id,
            title=item.title,
            created_at=ctx.now,
            description=f"action item {item.item_id} of review {review.review_id}",
            assignee=item.owner,
            due_at=due,
            origin=TaskOrigin.REVIEW_ACTION_ITEM,
            review_event_id=event.event_id,
            action_item_id=item.item_id,
        )
        tasks.append(task)
        events.append(_created(task, item.owner))
        timers.extend(_reminder(event.incident_id, task))
    if not events:
        return Decision(state)
    return Decision(replace(current, tasks=tuple(tasks)), events, schedule=timers)


@decider.on_timer(TASK_TIMER)
def on_task_due(state: Incident | None, timer: FiredTimer, ctx: Context) -> Decision[Incident]:
    """A task still open at its due time: TaskOverdue (the reminder)."""
    task = state.task(uuid.UUID(str(timer.data["task_id"]))) if state is not None else None
    if state is None or task is None or not task.is_open or task.due_at != timer.due_at:
        return Decision(state)
    overdue = TaskOverdue(task_id=task.task_id, assignee=task.assignee, due_at=timer.due_at, fired_at=timer.fired_at)
    return Decision(state, [overdue])
