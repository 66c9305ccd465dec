"""Staff tasks: the daily call tasks for patients no channel can remind, the list the front desk
works through, and its one-click outcomes (done, no answer, wrong number, assign).

Each outcome is one conditional UPDATE on a task that is still open, so two clerks clicking the
same row at once can't both close it, and a click on a closed task says so instead of
pretending.
"""

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from functools import reduce
from operator import or_

from django.contrib.auth.models import Permission, User
from django.db.models import Exists, F, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from campaigns.sendwindow import day_bounds, is_open_day
from consent.models import Channel, Purpose
from consent.selectors import consent_annotations
from patients.models import Appointment, ClinicProfile
from reminders.channels.base import channel_configured
from reminders.models import StaffTask

log = logging.getLogger(__name__)

# "An appointment soon": from now to the end of the day after tomorrow, so a clerk has a working
# day or two to phone before the visit (the reminders that would have gone out go a day before).
SOON_DAYS = 2
# Looking this far ahead for the next open day; a longer closure is a mistake in the settings.
OPEN_DAY_HORIZON = 60
CHANGE_PERMISSION = ("reminders", "change_stafftask")
NOTE_LENGTH = StaffTask._meta.get_field("note").max_length or 200


class TaskClosed(Exception):
    """The task is done already (or gone): someone else got there first."""


class TaskState(StrEnum):
    OPEN = "open"
    DONE = "done"
    ALL = "all"


@dataclass(frozen=True)
class TaskQuery:
    """What the list shows: the filters a clerk chose."""

    state: TaskState = TaskState.OPEN
    mine: bool = False
    overdue: bool = False
    kind: str = ""


# --- the daily call tasks ------------------------------------------------------------------------


def tasks_plan_no_channel(*, now: datetime) -> int:
    """Open a call task for each appointment from `now` to the end of the day after tomorrow
    whose patient no configured channel may reach with a care message (no consent, or no
    address, on every one). One task per appointment, ever: running it again adds nothing, and a
    task staff closed is not reopened. Returns how many tasks it created."""
    today = timezone.localdate(now)
    _start, end = day_bounds(today + timedelta(days=SOON_DAYS))
    configured = [channel for channel in Channel.values if channel_configured(channel)]
    soon = (
        Appointment.objects.filter(
            starts_at__gte=now,
            starts_at__lt=end,
            status__in=[Appointment.Status.BOOKED, Appointment.Status.CONFIRMED],
            patient__erased_at__isnull=True,
        )
        .exclude(
            Exists(
                StaffTask.objects.filter(
                    kind=StaffTask.Kind.CALL_NO_CHANNEL, appointment=OuterRef("pk")
                )
            )
        )
        # The same consent facts the planner joins on (consent.selectors), so "no usable
        # channel" here means what the planner's skip reasons mean.
        .annotate(
            **consent_annotations(
                purpose=Purpose.CARE, channels=configured, patient_ref="patient_id"
            )
        )
    )
    if configured:
        reachable = reduce(
            or_,
            (
                Q(**{f"{channel}_granted": True, f"{channel}_address": True})
                for channel in configured
            ),
        )
        soon = soon.exclude(reachable)
    tasks = [
        StaffTask(
            kind=StaffTask.Kind.CALL_NO_CHANNEL,
            patient_id=patient_id,
            appointment_id=appointment_id,
            due_on=today,
            until=max(today, timezone.localtime(starts_at).date()),
        )
        for appointment_id, patient_id, starts_at in soon.values_list(
            "pk", "patient_id", "starts_at"
        )
    ]
    # A run at the same moment (two workers) inserts the same rows: the unique constraint on
    # (kind, appointment) keeps one.
    StaffTask.objects.bulk_create(tasks, ignore_conflicts=True)
    if tasks:
        log.info("%d call task(s) for appointments no channel can remind", len(tasks))
    return len(tasks)


# --- the list ------------------------------------------------------------------------------------


def tasks_for_list(*, query: TaskQuery, user_id: int | None, today: date) -> QuerySet[StaffTask]:
    """The tasks `query` asks for, the most urgent first, with everything a row shows joined in
    the same query."""
    tasks = StaffTask.objects.select_related(
        "patient",
        "assignee",
        "appointment",
        "procedure",
        "message__rule",
        "message__appointment",
    )
    if query.state == TaskState.OPEN:
        tasks = tasks.filter(done_at__isnull=True).order_by("until", "due_on", "pk")
    elif query.state == TaskState.DONE:
        tasks = tasks.filter(done_at__isnull=False).order_by("-done_at", "-pk")
    else:
        tasks = tasks.order_by(F("done_at").desc(nulls_first=True), "until", "due_on", "pk")
    if query.mine:
        tasks = tasks.filter(assignee_id=user_id)
    if query.overdue:
        tasks = tasks.filter(done_at__isnull=True, until__lt=today)
    if query.kind:
        tasks = tasks.filter(kind=query.kind)
    return tasks


def tasks_open_count(*, today: date) -> int:
    """Open tasks that are due by `today` (the number beside "Tasks" in the menu)."""
    return StaffTask.objects.filter(done_at__isnull=True, due_on__lte=today).count()


def task_assignees() -> QuerySet[User]:
    """Active staff who may work on tasks: whom a task can be given to."""
    app_label, codename = CHANGE_PERMISSION
    permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename)
    return (
        User.objects.filter(is_active=True, is_staff=True)
        .filter(
            Q(is_superuser=True)
            | Q(user_permissions__in=permission)
            | Q(groups__permissions__in=permission)
        )
        .distinct()
        .order_by("username")
    )


# --- the outcomes --------------------------------------------------------------------------------


def next_open_day(*, after: date, profile: ClinicProfile) -> date:
    """The first day after `after` the clinic is open.

    Raises ValueError when none is within OPEN_DAY_HORIZON days."""
    for offset in range(1, OPEN_DAY_HORIZON + 1):
        day = after + timedelta(days=offset)
        if is_open_day(day, profile):
            return day
    raise ValueError(f"no open day within {OPEN_DAY_HORIZON} days after {after}")


def _open_task(task_id: int) -> QuerySet[StaffTask]:
    return StaffTask.objects.filter(pk=task_id, done_at__isnull=True)


def _note(note: str) -> dict[str, str]:
    # An empty note keeps the one already there (a colleague's earlier remark).
    note = " ".join(note.split())[:NOTE_LENGTH]
    return {"note": note} if note else {}


def task_done(*, task_id: int, note: str, now: datetime) -> None:
    """Close the task as done, with an optional note.

    Raises TaskClosed when it is closed already."""
    if not _open_task(task_id).update(done_at=now, outcome=StaffTask.Outcome.DONE, **_note(note)):
        raise TaskClosed(task_id)


def task_no_answer(*, task_id: int, note: str, now: datetime, profile: ClinicProfile) -> date:
    """Count a try that reached nobody and move the task to the clinic's next open day (its
    deadline moves with it if it would pass). Returns the new day.

    Raises TaskClosed when it is closed already, ValueError when no open day is near."""
    day = next_open_day(after=timezone.localdate(now), profile=profile)
    if not _open_task(task_id).update(
        due_on=day,
        until=Greatest("until", Value(day)),
        tries=F("tries") + 1,
        outcome=StaffTask.Outcome.NO_ANSWER,
        **_note(note),
    ):
        raise TaskClosed(task_id)
    return day


def task_wrong_number(*, task_id: int, note: str) -> None:
    """Count a try that reached a wrong number. The task stays open: the patient still needs the
    call once the number is fixed.

    Raises TaskClosed when it is closed already."""
    if not _open_task(task_id).update(
        tries=F("tries") + 1, outcome=StaffTask.Outcome.WRONG_NUMBER, **_note(note)
    ):
        raise TaskClosed(task_id)


def task_assign(*, task_id: int, assignee: User | None) -> None:
    """Give the task to `assignee`, or to nobody.

    Raises TaskClosed when it is closed already, ValueError when `assignee` may not work on
    tasks."""
    if assignee is not None and not task_assignees().filter(pk=assignee.pk).exists():
        raise ValueError(f"user {assignee.pk} may not work on staff tasks")
    if not _open_task(task_id).update(assignee=assignee):
        raise TaskClosed(task_id)
