"""The front desk's task list (/desk/tasks/) and its one-click outcomes: each a POST with CSRF,
permission-checked and audited."""

import datetime as dt
import re

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from patients.models import AuditEntry
from reminders.models import StaffTask
from tests.factories import AppointmentFactory, PatientFactory, ProcedureFactory
from tests.helpers import taipei

pytestmark = pytest.mark.django_db

FRIDAY = taipei(2026, 12, 4, 10, 0)
TODAY = dt.date(2026, 12, 4)


@pytest.fixture(autouse=True)
def _friday():
    with time_machine.travel(FRIDAY, tick=False):
        yield


def _task(kind=StaffTask.Kind.CALL_UNREACHED, *, due_on=TODAY, until=TODAY, **kwargs):
    patient = kwargs.pop("patient", None) or PatientFactory()
    return StaffTask.objects.create(
        kind=kind, patient=patient, due_on=due_on, until=until, **kwargs
    )


def _desk(client, user):
    client.force_login(user)
    return client


def _act(client, task, action, **data):
    return client.post(reverse("desk:task_action", args=[task.pk, action]), data)


def _audits(user, task):
    return AuditEntry.objects.filter(actor=user, patients=task.patient_id)


# --- the list ------------------------------------------------------------------------------------


def test_list_shows_what_to_do_in_words_with_the_patient_and_is_audited(client, front_desk_user):
    # given a post-op call and a call about an appointment no channel can remind
    postop = _task(
        StaffTask.Kind.POSTOP_CALL,
        procedure=ProcedureFactory(procedure_type="白內障手術"),
        patient=PatientFactory(chart_no="A000123", name="林美玲"),
    )
    appointment = AppointmentFactory(starts_at=taipei(2026, 12, 5, 9, 30), doctor="王醫師")
    soon = _task(
        StaffTask.Kind.CALL_NO_CHANNEL, appointment=appointment, patient=appointment.patient
    )

    response = _desk(client, front_desk_user).get(reverse("desk:tasks"))

    # then both rows say what to do in Chinese, and who, and the list is audited as a list
    page = response.content.decode()
    assert response.status_code == 200
    assert "術後電話關懷" in page and "白內障手術" in page
    assert "請致電：即將看診，但沒有可用的提醒管道" in page and "王醫師" in page
    assert "09:30" in page  # the clinic's time, not UTC (01:30)
    assert "A000123 林美玲" in page
    words = re.sub(r"<[^>]+>", " ", page[page.index("<tbody>") :])  # the text people read
    assert "postop_call" not in words and "call_no_channel" not in words
    entry = AuditEntry.objects.get(actor=front_desk_user, action=AuditEntry.Action.LIST)
    assert set(entry.patients.values_list("pk", flat=True)) == {postop.patient_id, soon.patient_id}


def test_overdue_tasks_come_first_and_are_highlighted(client, front_desk_user):
    today = _task(patient=PatientFactory(chart_no="B000001"))
    late = _task(
        patient=PatientFactory(chart_no="B000002"),
        due_on=TODAY - dt.timedelta(days=3),
        until=TODAY - dt.timedelta(days=1),
    )

    page = _desk(client, front_desk_user).get(reverse("desk:tasks")).content.decode()

    assert page.index(f'id="task-{late.pk}"') < page.index(f'id="task-{today.pk}"')
    late_row = page[page.index(f'id="task-{late.pk}"') - 40 : page.index(f'id="task-{today.pk}"')]
    assert "overdue" in late_row and "逾期" in late_row
    today_row = page[page.index(f'id="task-{today.pk}"') - 40 :]
    assert 'class="task overdue' not in today_row[:80]


def test_filters_mine_overdue_kind_and_done(client, front_desk_user, manager_user):
    mine = _task(assignee=front_desk_user)
    theirs = _task(assignee=manager_user, kind=StaffTask.Kind.RESCHEDULE)
    late = _task(due_on=TODAY - dt.timedelta(days=2), until=TODAY - dt.timedelta(days=1))
    closed = _task(done_at=FRIDAY)
    desk = _desk(client, front_desk_user)

    def shown(**params):
        page = desk.get(reverse("desk:tasks"), params).content.decode()
        return {t.pk for t in (mine, theirs, late, closed) if f'id="task-{t.pk}"' in page}

    assert shown() == {mine.pk, theirs.pk, late.pk}
    assert shown(mine="1") == {mine.pk}
    assert shown(overdue="1") == {late.pk}
    assert shown(kind=StaffTask.Kind.RESCHEDULE) == {theirs.pk}
    assert shown(state="done") == {closed.pk}
    assert shown(state="all") == {mine.pk, theirs.pk, late.pk, closed.pk}


def test_list_asks_the_database_the_same_number_of_times_for_one_task_or_thirty(
    client, front_desk_user
):
    desk = _desk(client, front_desk_user)
    _task(appointment=AppointmentFactory(), assignee=front_desk_user)
    with CaptureQueriesContext(connection) as one:
        desk.get(reverse("desk:tasks"))
    for n in range(29):
        kind = [StaffTask.Kind.POSTOP_CALL, StaffTask.Kind.CALL_NO_CHANNEL][n % 2]
        extra = {"procedure": ProcedureFactory()} if n % 2 == 0 else {}
        if n % 2:
            extra["appointment"] = AppointmentFactory()
        _task(kind, assignee=front_desk_user, **extra)

    with CaptureQueriesContext(connection) as thirty:
        response = desk.get(reverse("desk:tasks"))

    assert response.content.decode().count('<tr class="task') == 30
    assert len(thirty) == len(one)


def test_list_needs_a_login_and_the_permission_to_see_tasks(client):
    assert client.get(reverse("desk:tasks")).status_code == 302  # to the login page

    clerk = User.objects.create_user("nobody", password="x", is_staff=True)  # no group
    assert _desk(client, clerk).get(reverse("desk:tasks")).status_code == 403


def test_menu_shows_the_number_of_open_tasks_due_by_today(client, front_desk_user):
    _task()
    _task(due_on=TODAY - dt.timedelta(days=1))
    _task(due_on=TODAY + dt.timedelta(days=3), until=TODAY + dt.timedelta(days=3))  # not yet
    _task(done_at=FRIDAY)

    page = _desk(client, front_desk_user).get(reverse("desk:tasks")).content.decode()

    assert '待辦任務 <span class="nav-count">2</span>' in page


# --- the outcomes --------------------------------------------------------------------------------


def test_done_closes_the_task_with_the_note_and_is_audited(client, front_desk_user):
    task = _task()

    response = _act(_desk(client, front_desk_user), task, "done", note="已聯絡，改約下週")

    assert response.status_code == 302 and response.url.startswith(reverse("desk:tasks"))
    task.refresh_from_db()
    assert task.done_at == FRIDAY
    assert task.outcome == StaffTask.Outcome.DONE
    assert task.note == "已聯絡，改約下週"
    entry = _audits(front_desk_user, task).get(action=AuditEntry.Action.VIEW)
    assert entry.detail == f"staff task {task.pk}: done"
    assert entry.path == reverse("desk:task_action", args=[task.pk, "done"])


def test_no_answer_moves_the_task_to_the_next_open_day_and_counts_the_try(
    client, clinic, front_desk_user
):
    # given a clinic closed on Saturdays and Sundays, on a Friday
    clinic.closed_weekdays = [5, 6]
    clinic.save()
    task = _task(StaffTask.Kind.POSTOP_CALL, procedure=ProcedureFactory(), until=TODAY)

    # when nobody answers
    _act(_desk(client, front_desk_user), task, "no-answer", note="響了十聲")

    # then it comes back on Monday, with its deadline moved along, one try counted
    task.refresh_from_db()
    assert task.due_on == dt.date(2026, 12, 7)
    assert task.until == dt.date(2026, 12, 7)
    assert task.tries == 1
    assert task.outcome == StaffTask.Outcome.NO_ANSWER
    assert task.done_at is None
    assert task.note == "響了十聲"
    assert _audits(front_desk_user, task).filter(detail__endswith="no-answer").count() == 1


def test_no_answer_keeps_a_later_deadline_and_counts_every_try(client, clinic, front_desk_user):
    task = _task(until=TODAY + dt.timedelta(days=5), tries=2)

    _act(_desk(client, front_desk_user), task, "no-answer")

    task.refresh_from_db()
    assert task.due_on == dt.date(2026, 12, 5)  # Saturday: this clinic opens every day
    assert task.until == TODAY + dt.timedelta(days=5)
    assert task.tries == 3


def test_wrong_number_marks_the_task_and_offers_to_fix_the_number(client, front_desk_user):
    task = _task()
    desk = _desk(client, front_desk_user)

    response = _act(desk, task, "wrong-number", note="是空號")

    task.refresh_from_db()
    assert task.outcome == StaffTask.Outcome.WRONG_NUMBER
    assert task.tries == 1
    assert task.done_at is None  # the call is still owed once the number is right
    fix = reverse("admin:patients_patient_change", args=[task.patient_id])
    page = desk.get(response.url).content.decode()
    assert f'href="{fix}">修正電話號碼' in page  # in the message and on the row
    assert page.count("修正電話號碼") == 2
    assert _audits(front_desk_user, task).filter(detail__endswith="wrong-number").exists()


def test_assign_to_me_and_to_a_colleague(client, front_desk_user, manager_user):
    task = _task()
    desk = _desk(client, front_desk_user)

    _act(desk, task, "assign", to_me="1")
    task.refresh_from_db()
    assert task.assignee == front_desk_user

    _act(desk, task, "assign", assignee=str(manager_user.pk))
    task.refresh_from_db()
    assert task.assignee == manager_user

    _act(desk, task, "assign", assignee="")
    task.refresh_from_db()
    assert task.assignee is None
    assert _audits(front_desk_user, task).filter(detail__endswith="assign").count() == 3


def test_a_task_cannot_go_to_someone_who_may_not_work_on_tasks(client, front_desk_user):
    outsider = User.objects.create_user("outsider", password="x", is_staff=True)
    task = _task()

    response = _act(_desk(client, front_desk_user), task, "assign", assignee=str(outsider.pk))

    task.refresh_from_db()
    assert task.assignee is None
    assert response.status_code == 302
    assert not _audits(front_desk_user, task).exists()


def test_a_closed_task_is_left_alone_and_the_clerk_is_told(client, front_desk_user):
    task = _task(done_at=FRIDAY - dt.timedelta(hours=1), note="先前的備註")
    desk = _desk(client, front_desk_user)

    response = _act(desk, task, "no-answer", note="再試")

    task.refresh_from_db()
    assert task.done_at == FRIDAY - dt.timedelta(hours=1)
    assert task.tries == 0 and task.note == "先前的備註"
    assert "這項任務已經結案" in desk.get(response.url).content.decode()


@pytest.mark.parametrize("action", ["done", "no-answer", "wrong-number", "assign"])
def test_every_action_needs_the_permission_to_change_tasks(client, action):
    # given staff who may see tasks but not change them
    viewer = User.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_stafftask"))
    task = _task()

    response = _act(_desk(client, viewer), task, action, to_me="1")

    assert response.status_code == 403
    task.refresh_from_db()
    assert (task.done_at, task.tries, task.outcome, task.assignee) == (None, 0, "", None)
    assert not AuditEntry.objects.filter(patients=task.patient_id).exists()


@pytest.mark.parametrize("action", ["done", "no-answer", "wrong-number", "assign"])
def test_every_action_is_a_post_with_a_csrf_token(front_desk_user, action):
    task = _task()
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(front_desk_user)
    url = reverse("desk:task_action", args=[task.pk, action])

    assert strict.get(url).status_code == 405
    assert strict.post(url, {"to_me": "1"}).status_code == 403  # no CSRF token

    task.refresh_from_db()
    assert (task.done_at, task.tries, task.assignee) == (None, 0, None)


def test_the_manager_may_close_tasks_too(client, manager_user):
    task = _task()

    _act(_desk(client, manager_user), task, "done")

    task.refresh_from_db()
    assert task.done_at == FRIDAY


def test_an_unknown_action_is_a_404(client, front_desk_user):
    task = _task()

    assert _act(_desk(client, front_desk_user), task, "delete").status_code == 404


def test_a_task_about_a_message_names_the_rule_channel_and_status_and_links_to_it(
    client, front_desk_user
):
    from campaigns.models import Rule
    from reminders.models import OutboxMessage, Status

    patient = PatientFactory()
    rule = Rule.objects.order_by("pk").first()
    message = OutboxMessage.objects.create(
        rule=rule,
        patient=patient,
        occurrence_key="bench",
        purpose=rule.purpose,
        channel="sms",
        status=Status.UNKNOWN,
        due_at=FRIDAY,
        next_attempt_at=FRIDAY,
        expires_at=FRIDAY + dt.timedelta(days=1),
        body="x",
    )
    _task(StaffTask.Kind.REVIEW_UNKNOWN, patient=patient, message=message)

    page = _desk(client, front_desk_user).get(reverse("desk:tasks")).content.decode()

    link = reverse("admin:reminders_outboxmessage_change", args=[message.pk])
    assert f'href="{link}"' in page
    assert f"{rule.name} · 簡訊 · " in page  # in words: the channel and the status
