"""The front desk's day view (/desk/): one day's appointments with their confirmation and
reminders, the unconfirmed and unreachable first, filters, the call list and its audited phone
numbers, the print sheet, and the front desk landing there after login."""

import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.contrib.staticfiles import finders
from django.urls import reverse

from campaigns.models import Rule, Skip, SkipReason
from consent.models import Channel, Purpose
from patients.models import Appointment, AuditEntry, ClinicDay
from reminders.models import OutboxMessage, Status
from tests.factories import AppointmentFactory, PatientFactory, grant, withdraw

TAIPEI = ZoneInfo("Asia/Taipei")
NOW = dt.datetime(2026, 3, 10, 8, 0, tzinfo=TAIPEI)  # a Tuesday, before the clinic opens
TODAY = NOW.date()

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


def at(hour, minute=0, day=TODAY):
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=TAIPEI)


def reachable_patient(**kwargs):
    patient = PatientFactory(**kwargs)
    grant(patient, Purpose.CARE, Channel.SMS)
    return patient


def booking(hour, minute=0, *, patient=None, day=TODAY, **kwargs):
    return AppointmentFactory(
        patient=patient or reachable_patient(), starts_at=at(hour, minute, day), **kwargs
    )


def message(appointment, status, *, rule_name="回診確認", error="", channel="sms"):
    rule = Rule.objects.get(name__startswith=rule_name)
    sent = status in (Status.SENT, Status.DELIVERED, Status.FAILED)
    return OutboxMessage.objects.create(
        rule=rule,
        patient=appointment.patient,
        appointment=appointment,
        anchor_at=appointment.starts_at,
        occurrence_key=f"appointment:{appointment.pk}:x",
        purpose="care",
        channel=channel,
        status=status,
        error=error,
        sent_at=NOW - dt.timedelta(days=1) if sent else None,
        delivered_at=NOW - dt.timedelta(days=1) if status == Status.DELIVERED else None,
        due_at=NOW - dt.timedelta(days=1),
        next_attempt_at=NOW - dt.timedelta(days=1),
        expires_at=appointment.starts_at,
        body="明天回診",
    )


def row_ids(response):
    return [row.appointment.pk for row in response.context["view"].rows]


# --- what the page shows ---------------------------------------------------------------------


def test_front_desk_sees_todays_appointments_with_patient_doctor_department_and_status(desk):
    patient = reachable_patient(chart_no="A000123", name="林美玲")
    booking(10, 30, patient=patient, doctor="陳醫師", department="內科")
    booking(9, day=TODAY + dt.timedelta(days=1))  # tomorrow: not on today's page

    response = desk.get(reverse("desk:day"))

    assert response.status_code == 200
    page = response.content.decode()
    assert len(response.context["view"].rows) == 1
    for text in ("10:30", "A000123", "林美玲", "陳醫師", "內科", "已預約"):
        assert text in page


def test_tomorrow_is_one_click_away_and_any_day_can_be_chosen(desk):
    tomorrow = booking(9, day=TODAY + dt.timedelta(days=1))
    later = booking(9, day=TODAY + dt.timedelta(days=5))

    page = desk.get(reverse("desk:day")).content.decode()
    link = re.search(r'href="([^"]+)" id="day-tomorrow"', page).group(1)
    response = desk.get(reverse("desk:day") + link.replace("&amp;", "&"))

    assert row_ids(response) == [tomorrow.pk]
    chosen = desk.get(reverse("desk:day"), {"day": (TODAY + dt.timedelta(days=5)).isoformat()})
    assert row_ids(chosen) == [later.pk]
    assert 'type="date"' in page


def test_a_malformed_day_falls_back_to_today(desk):
    today = booking(9)

    response = desk.get(reverse("desk:day"), {"day": "2026-13-45"})

    assert response.status_code == 200
    assert row_ids(response) == [today.pk]


def test_unreachable_then_unconfirmed_come_first_each_by_time(desk):
    confirmed = booking(8, 30, status=Appointment.Status.CONFIRMED)
    unconfirmed_late = booking(11)
    unconfirmed_early = booking(9)
    unreachable = booking(10, patient=PatientFactory())  # no consent on any channel
    withdrawn = PatientFactory()
    withdraw(withdrawn, Purpose.CARE, Channel.SMS)
    unreachable_early = booking(8, 45, patient=withdrawn)
    attended = booking(8, status=Appointment.Status.ATTENDED)

    response = desk.get(reverse("desk:day"))

    assert row_ids(response) == [
        unreachable_early.pk,
        unreachable.pk,
        unconfirmed_early.pk,
        unconfirmed_late.pk,
        attended.pk,
        confirmed.pk,
    ]
    by_time = desk.get(reverse("desk:day"), {"order": "time"})
    assert row_ids(by_time)[0] == attended.pk
    page = response.content.decode()
    assert "無法聯絡" in page
    assert str(SkipReason.WITHDRAWN.label) in page


def test_a_patient_with_consent_but_no_address_is_unreachable(desk):
    patient = PatientFactory(phone="", email="")
    grant(patient, Purpose.CARE, Channel.SMS)
    appointment = booking(9, patient=patient)

    view = desk.get(reverse("desk:day")).context["view"]

    (row,) = view.rows
    assert row.appointment.pk == appointment.pk
    assert not row.reachable
    assert row.unreachable_reason == str(SkipReason.NO_CONTACT_POINT.label)


def test_a_landline_only_patient_is_unreachable_by_sms(desk):
    patient = PatientFactory(phone="02-2345-6789", email="")
    grant(patient, Purpose.CARE, Channel.SMS)
    booking(9, patient=patient)

    (row,) = desk.get(reverse("desk:day")).context["view"].rows

    assert not row.reachable


def test_filters_by_doctor_and_by_department(desk):
    wang = booking(9, doctor="王醫師", department="家醫科")
    chen = booking(10, doctor="陳醫師", department="內科")
    lee = booking(11, doctor="李醫師", department="骨科")

    by_doctor = desk.get(reverse("desk:day"), {"doctor": "陳醫師"})
    by_department = desk.get(reverse("desk:day"), {"department": "骨科"})

    assert row_ids(by_doctor) == [chen.pk]
    assert row_ids(by_department) == [lee.pk]
    both = desk.get(reverse("desk:day"), {"doctor": "王醫師", "department": "內科"})
    assert row_ids(both) == []
    # The choices list every doctor and department of the day, whatever the filter.
    assert by_doctor.context["view"].doctors == ["李醫師", "王醫師", "陳醫師"]
    assert wang.pk not in row_ids(by_doctor)


def test_reminders_show_sent_delivered_failed_and_not_sent_with_the_reason_in_words(desk):
    delivered = booking(9)
    message(delivered, Status.DELIVERED)
    sent = booking(9, 15)
    message(sent, Status.SENT, rule_name="回診通知")
    failed = booking(9, 30)
    message(failed, Status.FAILED, error="號碼錯誤")
    skipped = booking(9, 45)
    Skip.objects.create(
        rule=Rule.objects.get(name__startswith="回診確認"),
        patient=skipped.patient,
        occurrence_key=f"appointment:{skipped.pk}:2026-03-09T02:00:00+00:00",
        reason=SkipReason.WITHDRAWN,
        at=NOW - dt.timedelta(days=1),
    )
    # A skip of another appointment of the same patient stays with that appointment.
    other = booking(10, day=TODAY + dt.timedelta(days=30), patient=skipped.patient)
    Skip.objects.create(
        rule=Rule.objects.get(name__startswith="回診通知"),
        patient=skipped.patient,
        occurrence_key=f"appointment:{other.pk}:2026-04-09T02:00:00+00:00",
        reason=SkipReason.FREQUENCY_CAP,
        at=NOW,
    )

    response = desk.get(reverse("desk:day"), {"order": "time"})

    rows = {row.appointment.pk: row for row in response.context["view"].rows}
    assert [r.state for r in rows[delivered.pk].reminders] == ["delivered"]
    assert [r.state for r in rows[sent.pk].reminders] == ["sent"]
    assert [(r.state, r.reason) for r in rows[failed.pk].reminders] == [("failed", "號碼錯誤")]
    (skip,) = rows[skipped.pk].reminders
    assert skip.state == "not_sent"
    assert skip.reason == str(SkipReason.WITHDRAWN.label)
    page = response.content.decode()
    for words in (
        "已送達",
        "已發送",
        "失敗",
        "號碼錯誤",
        "未發送",
        str(SkipReason.WITHDRAWN.label),
    ):
        assert words in page
    assert str(SkipReason.FREQUENCY_CAP.label) not in page


def test_how_an_appointment_was_confirmed_is_shown_in_words(desk):
    booking(
        9,
        status=Appointment.Status.CONFIRMED,
        confirmed_via=Appointment.ConfirmedVia.LINE,
        confirmed_at=NOW - dt.timedelta(hours=20),
    )
    booking(10, status=Appointment.Status.CONFIRMED, confirmed_via=Appointment.ConfirmedVia.REPLY)

    page = desk.get(reverse("desk:day")).content.decode()

    assert "LINE 按鈕" in page
    assert "病人回覆" in page


def test_the_page_is_audited_as_a_list_of_the_patients_shown(desk, front_desk_user):
    shown = [booking(9), booking(10, doctor="陳醫師")]
    booking(11, day=TODAY + dt.timedelta(days=1))

    desk.get(reverse("desk:day"))

    entry = AuditEntry.objects.get(action=AuditEntry.Action.LIST)
    assert entry.actor == front_desk_user
    assert entry.path == reverse("desk:day")
    assert set(entry.patients.all()) == {a.patient for a in shown}


def test_an_empty_day_writes_no_audit_entry(desk):
    response = desk.get(reverse("desk:day"))

    assert response.status_code == 200
    assert not AuditEntry.objects.exists()


def test_the_day_view_asks_a_visitor_to_log_in(client):
    response = client.get(reverse("desk:day"))

    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_staff_without_appointment_rights_may_not_see_the_day(client):
    user = User.objects.create_user("intern", password="x", is_staff=True)
    client.force_login(user)

    assert client.get(reverse("desk:day")).status_code == 403


def test_the_number_of_queries_does_not_grow_with_the_appointments(
    desk, django_assert_max_num_queries
):
    def fill(count, day):
        for n in range(count):
            appointment = booking(8 + n % 10, day=day)
            message(appointment, Status.DELIVERED if n % 2 else Status.FAILED)

    fill(3, TODAY)
    fill(30, TODAY + dt.timedelta(days=1))

    with django_assert_max_num_queries(18) as few:
        desk.get(reverse("desk:day"))
    with django_assert_max_num_queries(len(few.captured_queries)):
        desk.get(reverse("desk:day"), {"day": (TODAY + dt.timedelta(days=1)).isoformat()})
    with django_assert_max_num_queries(len(few.captured_queries)):
        desk.get(reverse("desk:day_calls"), {"day": (TODAY + dt.timedelta(days=1)).isoformat()})


def test_the_print_stylesheet_hides_navigation_and_buttons_on_a4(desk):
    booking(9)

    page = desk.get(reverse("desk:day")).content.decode()

    assert "desk/desk.css" in page
    css = open(finders.find("desk/desk.css"), encoding="utf-8").read()
    print_rules = css[css.index("@media print") :]
    assert "size: A4" in print_rules
    assert re.search(r"\.no-print\s*\{\s*display:\s*none", print_rules)
    assert re.search(r'<header class="desk-header no-print"', page)
    assert re.search(r'class="day-actions no-print"', page)
    assert re.search(r'class="day-filters no-print"', page)


def test_a_day_the_clinic_is_closed_warns_about_its_appointments(desk):
    ClinicDay.objects.create(date=TODAY, kind=ClinicDay.Kind.TYPHOON, note="颱風假")
    booking(9)

    today = desk.get(reverse("desk:day")).content.decode()
    tomorrow = desk.get(reverse("desk:day"), {"day": "2026-03-11"}).content.decode()

    assert "颱風假" in today and str(ClinicDay.Kind.TYPHOON.label) in today
    assert "day-closure" in today
    assert "day-closure" not in tomorrow


def test_a_make_up_workday_is_no_closure(desk):
    ClinicDay.objects.create(date=TODAY, kind=ClinicDay.Kind.WORKDAY)
    booking(9)

    assert "day-closure" not in desk.get(reverse("desk:day")).content.decode()


# --- the call list ---------------------------------------------------------------------------


def test_the_call_list_names_whom_to_phone_without_their_numbers(desk):
    unreachable = booking(9, patient=PatientFactory(phone="+886912000111"))
    failed = booking(10)
    message(failed, Status.FAILED, error="號碼錯誤")
    fine = booking(11)
    message(fine, Status.DELIVERED)
    confirmed = booking(12, status=Appointment.Status.CONFIRMED)

    response = desk.get(reverse("desk:day_calls"))

    assert row_ids(response) == [unreachable.pk, failed.pk]
    page = response.content.decode()
    # Every way a number could be written, not "0912" alone: a random token on the page (the
    # CSRF token, a signed undo link) contains those four digits now and then.
    for patient in (unreachable.patient, failed.patient):
        local = "0" + patient.phone.removeprefix("+886")
        shown = f"{local[:4]} {local[4:7]} {local[7:]}"
        assert local not in page and shown not in page and patient.phone[4:] not in page
    assert confirmed.pk not in row_ids(response) and fine.pk not in row_ids(response)
    entry = AuditEntry.objects.get(action=AuditEntry.Action.LIST)
    assert set(entry.patients.all()) == {unreachable.patient, failed.patient}


def test_revealing_a_phone_number_is_a_post_and_is_audited(desk, front_desk_user):
    appointment = booking(9, patient=PatientFactory(phone="+886912345678"))
    url = reverse("desk:appointment_phone", args=[appointment.pk])

    assert desk.get(url).status_code == 405
    response = desk.post(url)

    assert response.status_code == 200
    assert response.json() == {"phone": "0912 345 678"}
    entry = AuditEntry.objects.get(action=AuditEntry.Action.VIEW)
    assert entry.actor == front_desk_user
    assert list(entry.patients.all()) == [appointment.patient]
    assert "phone" in entry.detail and "912" not in entry.detail


def test_revealing_a_phone_number_needs_the_right_to_see_patients(client):
    appointment = booking(9)
    user = User.objects.create_user("clerk", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_appointment"))
    client.force_login(user)

    response = client.post(reverse("desk:appointment_phone", args=[appointment.pk]))

    assert response.status_code == 403
    assert not AuditEntry.objects.exists()


# --- landing after login ---------------------------------------------------------------------


def test_the_front_desk_lands_on_the_day_view_after_logging_in(client, front_desk_user):
    login = reverse("admin:login")
    client.get(login)

    response = client.post(
        login,
        {"username": "desk", "password": "correct horse 42", "next": reverse("admin:index")},
    )

    assert response.status_code == 302
    assert response.url == reverse("desk:day")


def test_a_manager_still_lands_in_the_admin_and_a_page_asked_for_wins(client, manager_user):
    login = reverse("admin:login")

    response = client.post(
        login,
        {"username": "manager", "password": "correct horse 42", "next": reverse("admin:index")},
    )

    assert response.url == reverse("admin:index")
    assert client.get(reverse("admin:index")).status_code == 200


def test_the_front_desk_asking_for_a_page_goes_there(client, front_desk_user):
    wanted = reverse("admin:patients_patient_changelist")

    response = client.post(
        reverse("admin:login"),
        {"username": "desk", "password": "correct horse 42", "next": wanted},
    )

    assert response.url == wanted


def test_a_wrong_password_stays_on_the_login_page(client, front_desk_user):
    response = client.post(
        reverse("admin:login"),
        {"username": "desk", "password": "wrong", "next": reverse("admin:index")},
    )

    assert response.status_code == 200
    assert not response.wsgi_request.user.is_authenticated
