"""The weekly summary e-mail (dashboard.weekly), on the dashboard tests' hand-counted clinic
(tests/dashboard/conftest.py: messages 2–6 March 2026), sent on Tuesday 10 March: last week is
Monday 2 to Sunday 8 March."""

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, User
from django.core import mail
from django.core.management import call_command
from django_q.models import Schedule, Task

from campaigns.forecast import week_ahead
from clinic_crm.roles import CLINIC_MANAGER, FRONT_DESK
from dashboard.tasks import weekly_summary_task
from dashboard.weekly import TASK, week_summary, weekly_email_send
from patients.models import Patient
from tests.dashboard.conftest import NOW, TAIPEI
from tests.factories import AppointmentFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def weekly(settings, small_clinic):
    settings.DASHBOARD_WEEKLY_EMAIL = True
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.PUBLIC_BASE_URL = "https://clinic.example.tw"
    settings.SMS_PRICE_PER_SEGMENT = {"TW": Decimal("1.5")}
    settings.SMS_PRICE_DEFAULT = Decimal(3)
    settings.LINE_MONTHLY_ALLOWANCE = 200
    small_clinic.visit_rule.asks_confirmation = True
    small_clinic.visit_rule.save()
    # Something in the week ahead: the one patient with SMS consent has a visit on Thursday.
    AppointmentFactory(
        patient=small_clinic.patients[0], starts_at=dt.datetime(2026, 3, 12, 10, tzinfo=TAIPEI)
    )
    return small_clinic


def user(name: str, group: str, *, email: str = "", active: bool = True) -> User:
    person = User.objects.create_user(name, email=email, is_active=active)
    person.groups.add(Group.objects.get(name=group))
    return person


@pytest.fixture
def managers(weekly):
    user("boss", CLINIC_MANAGER, email="boss@clinic.example.tw")
    user("deputy", CLINIC_MANAGER, email="deputy@clinic.example.tw")
    user("gone", CLINIC_MANAGER, email="gone@clinic.example.tw", active=False)
    user("noaddress", CLINIC_MANAGER)
    user("desk", FRONT_DESK, email="desk@clinic.example.tw")


def test_last_weeks_figures_are_the_hand_counted_ones(weekly):
    summary = week_summary(now=NOW)

    assert (summary.start, summary.end) == (dt.date(2026, 3, 2), dt.date(2026, 3, 8))
    # sent: m0, m1 (return visit), m7, m8 (recall), m9, m10 (refill, LINE); m0 and m9 delivered
    assert (summary.sent, summary.delivered, summary.failed) == (6, 2, 1)
    # the return-visit rule asks to confirm: 2 sent, a1 confirmed by reply after m0 went out
    assert summary.confirmation_rate == pytest.approx(0.5)
    # its reminded appointments with an outcome: a1 attended, a2 no-show
    assert summary.no_show_rate == pytest.approx(0.5)
    # SMS at the default NT$3 a segment: m0 2 segments, m1, m7, m8 one each; LINE within the
    # monthly allowance
    assert summary.cost == Decimal(15)
    # failed m2 + unknown m3; three test rules lack a template for a channel they list
    assert (summary.failed_or_unknown, summary.rules_missing_template) == (2, 3)
    expected_ahead = sum(row.messages for row in week_ahead(now=NOW))
    assert summary.ahead_total == expected_ahead > 0
    assert [day for day, _n in summary.ahead_days] == [
        dt.date(2026, 3, 10) + dt.timedelta(days=n) for n in range(7)
    ]


def test_each_active_manager_with_an_address_gets_the_summary_in_zh_hant(managers):
    sent_to = weekly_email_send(now=NOW)

    assert sent_to == 2
    assert sorted(m.to[0] for m in mail.outbox) == [
        "boss@clinic.example.tw",
        "deputy@clinic.example.tw",
    ]
    message = mail.outbox[0]
    assert len(message.to) == 1  # no one sees the other managers' addresses
    assert message.subject == "每週摘要 03/02–03/08"
    assert "上週（2026-03-02 至 2026-03-08）" in message.body
    assert "已發送訊息: 6" in message.body
    assert "確認率: 50.0 %" in message.body
    assert "估計費用: NT$ 15" in message.body
    assert "https://clinic.example.tw/dashboard/?range=week" in message.body
    html, mimetype = message.alternatives[0]
    assert mimetype == "text/html"
    assert 'href="https://clinic.example.tw/dashboard/?range=week"' in html
    assert "已送達" in html


def test_the_summary_names_no_patient(managers):
    weekly_email_send(now=NOW)

    message = mail.outbox[0]
    everything = message.subject + message.body + message.alternatives[0][0]
    for patient in Patient.objects.all():
        for value in (patient.name, patient.phone, patient.email, patient.chart_no):
            assert value not in everything


def test_nothing_is_sent_while_the_setting_is_off(managers, settings):
    settings.DASHBOARD_WEEKLY_EMAIL = False

    assert weekly_email_send(now=NOW) == 0
    assert mail.outbox == []


def worker_ran(at: dt.datetime, result: int) -> None:
    """What django-q2's worker keeps of a finished run of the weekly task."""
    Task.objects.create(
        id=uuid.uuid4().hex,
        name="weekly",
        func=TASK,
        started=at,
        stopped=at,
        success=True,
        result=result,
    )


def test_a_second_run_in_the_same_week_sends_nothing(managers):
    monday = dt.datetime(2026, 3, 9, 8, 0, tzinfo=TAIPEI)
    worker_ran(monday, weekly_summary_task())
    assert len(mail.outbox) == 2

    assert weekly_email_send(now=NOW) == 0
    assert len(mail.outbox) == 2


def test_a_run_that_sent_nothing_does_not_stop_the_next(managers):
    worker_ran(dt.datetime(2026, 3, 9, 8, 0, tzinfo=TAIPEI), 0)  # e.g. switched off then

    assert weekly_email_send(now=NOW) == 2


def test_last_weeks_run_does_not_stop_this_weeks(managers):
    worker_ran(dt.datetime(2026, 3, 2, 8, 0, tzinfo=TAIPEI), 2)

    assert weekly_email_send(now=NOW) == 2


def test_setup_schedules_runs_the_summary_on_monday_at_eight_clinic_time(frozen):
    call_command("setup_schedules", stdout=open("/dev/null", "w"))  # noqa: SIM115

    schedule = Schedule.objects.get(func="dashboard.tasks.weekly_summary_task")
    assert schedule.schedule_type == Schedule.WEEKLY
    assert schedule.repeats == -1
    assert schedule.next_run == dt.datetime(2026, 3, 16, 8, 0, tzinfo=TAIPEI)
