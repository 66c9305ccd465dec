"""One click on the day view: attended, no-show, confirmed by phone, cancelled; each audited,
permission-checked and undoable. And a patient's reply "1" records how they confirmed."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.core import signing
from django.urls import reverse

from desk.services import Undo
from patients.models import Appointment, AuditEntry
from tests.factories import AppointmentFactory

TAIPEI = ZoneInfo("Asia/Taipei")
NOW = dt.datetime(2026, 3, 10, 9, 0, tzinfo=TAIPEI)
Status = Appointment.Status

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


@pytest.fixture
def appointment():
    return AppointmentFactory(starts_at=NOW + dt.timedelta(hours=2))


def act(client, appointment, action, **data):
    url = reverse("desk:appointment_action", args=[appointment.pk])
    return client.post(url, {"action": action, "next": "/desk/?day=2026-03-10", **data})


@pytest.mark.parametrize(
    ("action", "before", "after"),
    [
        ("attended", Status.CONFIRMED, Status.ATTENDED),
        ("no_show", Status.BOOKED, Status.NO_SHOW),
        ("confirm_phone", Status.BOOKED, Status.CONFIRMED),
        ("cancel", Status.CONFIRMED, Status.CANCELLED),
    ],
)
def test_each_action_changes_the_status_and_is_audited(
    desk, front_desk_user, appointment, action, before, after
):
    Appointment.objects.filter(pk=appointment.pk).update(status=before)

    response = act(desk, appointment, action)

    assert response.status_code == 302
    assert response.url == "/desk/?day=2026-03-10"
    appointment.refresh_from_db()
    assert appointment.status == after
    entry = AuditEntry.objects.get()
    assert entry.actor == front_desk_user
    assert list(entry.patients.all()) == [appointment.patient]
    assert f"{before} → {after}" in entry.detail
    history = LogEntry.objects.get(object_id=str(appointment.pk))
    assert history.user == front_desk_user


def test_confirming_by_phone_records_how_and_when(desk, appointment):
    act(desk, appointment, "confirm_phone")

    appointment.refresh_from_db()
    assert appointment.status == Status.CONFIRMED
    assert appointment.confirmed_via == Appointment.ConfirmedVia.PHONE
    assert appointment.confirmed_at == NOW


def test_a_manager_may_act_too(client, manager_user, appointment):
    client.force_login(manager_user)

    act(client, appointment, "no_show")

    appointment.refresh_from_db()
    assert appointment.status == Status.NO_SHOW


def test_staff_without_the_right_to_change_appointments_get_403_and_nothing_changes(
    client, appointment
):
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_appointment"))
    client.force_login(user)

    response = act(client, appointment, "attended")

    assert response.status_code == 403
    appointment.refresh_from_db()
    assert appointment.status == Status.BOOKED
    assert not AuditEntry.objects.exists()
    undo = client.post(reverse("desk:appointment_undo"), {"token": "x"})
    assert undo.status_code == 403


def test_an_action_is_a_post_never_a_get(desk, appointment):
    response = desk.get(reverse("desk:appointment_action", args=[appointment.pk]))

    assert response.status_code == 405
    appointment.refresh_from_db()
    assert appointment.status == Status.BOOKED


def test_an_action_needs_the_csrf_token(front_desk_user, appointment):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(front_desk_user)

    response = act(client, appointment, "attended")

    assert response.status_code == 403
    appointment.refresh_from_db()
    assert appointment.status == Status.BOOKED


def test_an_unknown_action_is_404(desk, appointment):
    assert act(desk, appointment, "teleport").status_code == 404


def test_an_action_the_status_does_not_allow_changes_nothing_and_says_why(desk, appointment):
    Appointment.objects.filter(pk=appointment.pk).update(status=Status.CANCELLED)

    response = act(desk, appointment, "confirm_phone")

    assert response.status_code == 302
    appointment.refresh_from_db()
    assert appointment.status == Status.CANCELLED
    assert not AuditEntry.objects.exists()
    page = desk.get(response.url).content.decode()
    assert "未變更" in page


def test_next_may_not_send_the_desk_to_another_site(desk, appointment):
    response = act(desk, appointment, "attended", next="https://evil.example/")

    assert response.url == reverse("desk:day")


def test_undo_restores_the_previous_status_and_confirmation_and_is_audited(
    desk, front_desk_user, appointment
):
    Appointment.objects.filter(pk=appointment.pk).update(
        status=Status.CONFIRMED, confirmed_via="reply", confirmed_at=NOW - dt.timedelta(days=1)
    )
    act(desk, appointment, "no_show")
    page = desk.get("/desk/?day=2026-03-10").content.decode()
    token = page.split('name="token" value="')[1].split('"')[0]

    response = desk.post(reverse("desk:appointment_undo"), {"token": token, "next": "/desk/"})

    assert response.status_code == 302
    appointment.refresh_from_db()
    assert appointment.status == Status.CONFIRMED
    assert appointment.confirmed_via == "reply"
    assert appointment.confirmed_at == NOW - dt.timedelta(days=1)
    undo_entry = AuditEntry.objects.filter(detail__contains="undo").get()
    assert undo_entry.actor == front_desk_user
    assert list(undo_entry.patients.all()) == [appointment.patient]


def test_undo_of_a_phone_confirmation_clears_how_it_was_confirmed(desk, appointment):
    act(desk, appointment, "confirm_phone")
    token = desk.get("/desk/").content.decode().split('name="token" value="')[1].split('"')[0]

    desk.post(reverse("desk:appointment_undo"), {"token": token})

    appointment.refresh_from_db()
    assert appointment.status == Status.BOOKED
    assert appointment.confirmed_via == ""
    assert appointment.confirmed_at is None


def test_undo_is_refused_once_the_status_changed_again(desk, appointment):
    act(desk, appointment, "attended")
    token = desk.get("/desk/").content.decode().split('name="token" value="')[1].split('"')[0]
    act(desk, appointment, "no_show")

    desk.post(reverse("desk:appointment_undo"), {"token": token})

    appointment.refresh_from_db()
    assert appointment.status == Status.NO_SHOW


def test_a_forged_or_expired_undo_changes_nothing(desk, appointment, frozen):
    forged = signing.dumps(
        {
            "appointment_id": appointment.pk,
            "status": "cancelled",
            "confirmed_via": "",
            "confirmed_at": "",
            "after": "booked",
        }
    )
    desk.post(reverse("desk:appointment_undo"), {"token": forged})
    appointment.refresh_from_db()
    assert appointment.status == Status.BOOKED

    act(desk, appointment, "attended")
    token = desk.get("/desk/").content.decode().split('name="token" value="')[1].split('"')[0]
    frozen.shift(dt.timedelta(hours=1))
    desk.post(reverse("desk:appointment_undo"), {"token": token})
    appointment.refresh_from_db()
    assert appointment.status == Status.ATTENDED


def test_the_undo_token_round_trips():
    undo = Undo(appointment_id=3, status="booked", confirmed_via="", confirmed_at="", after="x")

    assert Undo.load(undo.sign()) == undo


def test_a_patient_replying_1_is_shown_as_confirmed_by_reply(appointment):
    from campaigns.models import Rule
    from reminders.channels.base import Inbound
    from reminders.models import OutboxMessage
    from reminders.models import Status as MessageStatus
    from reminders.replies import reply_handle

    patient = appointment.patient
    OutboxMessage.objects.create(
        rule=Rule.objects.get(name__startswith="回診確認"),
        patient=patient,
        appointment=appointment,
        anchor_at=appointment.starts_at,
        occurrence_key=f"appointment:{appointment.pk}:x",
        purpose="care",
        channel="sms",
        status=MessageStatus.SENT,
        sent_at=NOW - dt.timedelta(hours=1),
        due_at=NOW,
        next_attempt_at=NOW,
        expires_at=appointment.starts_at,
        body="請回覆 1 確認",
    )

    reply_handle(
        inbound=Inbound(channel="sms", sender=patient.phone, kind="text", text="1"),
        event_id="SM1",
        now=NOW,
    )

    appointment.refresh_from_db()
    assert appointment.status == Status.CONFIRMED
    assert appointment.confirmed_via == Appointment.ConfirmedVia.REPLY
    assert appointment.confirmed_at == NOW
