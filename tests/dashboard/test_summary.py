"""The outbox summary (dashboard.MessageDay): the page's figures are the same read from it as
counted live, a summarised day is read from the summary (not the outbox), today stays live,
and the management command and the scheduled refresh fill it."""

import datetime as dt

import pytest
from django.core.management import call_command
from django.urls import reverse

from dashboard import selectors, summary
from dashboard.models import MessageDay, SummarisedDay
from reminders.models import OutboxMessage, Status
from tests.dashboard.conftest import NOW, RANGE, _message, at
from tests.dashboard.test_dashboard_numbers import parsed

pytestmark = pytest.mark.django_db


def steps_of(f):
    return sorted(
        (row["rule_id"], row["channel"], row["week"], *(row[n] for n in selectors.SUMMED))
        for row in selectors.message_steps(f)
    )


def test_figures_from_the_summary_equal_those_counted_live(small_clinic):
    for extra in ({}, {"channel": "sms"}, {"rule": str(small_clinic.visit_rule.pk)}):
        live = steps_of(parsed(**extra))
        assert live  # the fixture has messages in every one of these
        summary.refresh_since()
        assert SummarisedDay.objects.filter(day=dt.date(2026, 3, 9)).exists()
        assert MessageDay.objects.exists()
        assert steps_of(parsed(**extra)) == live
        SummarisedDay.objects.all().delete()


def test_funnel_and_outcomes_from_the_summary_equal_those_counted_live(small_clinic):
    def figures():
        rows = selectors.funnel(parsed(), selectors.rules_all())
        names = (*selectors.STEPS, *selectors.OUTCOMES, "refills", "picked_up")
        return {row.rule.pk: [getattr(row, n) for n in names] for row in rows}

    live = figures()
    assert any(row[len(selectors.STEPS)] for row in live.values())  # some confirmed
    summary.refresh_since()
    assert figures() == live


def test_a_summarised_day_is_read_from_the_summary_until_re_counted(small_clinic):
    f = parsed()
    before = {r.rule.pk: r for r in selectors.funnel(f, selectors.rules_all())}
    summary.refresh_since()
    # A receipt after the count: the summary still says what it counted ...
    message = OutboxMessage.objects.filter(rule=small_clinic.visit_rule, status=Status.SENT)
    message.update(status=Status.DELIVERED)
    row = {r.rule.pk: r for r in selectors.funnel(f, selectors.rules_all())}[
        small_clinic.visit_rule.pk
    ]
    assert row.delivered == before[small_clinic.visit_rule.pk].delivered
    # ... until the worker's next refresh of the recent days.
    assert summary.refresh_recent() > 0
    row = {r.rule.pk: r for r in selectors.funnel(f, selectors.rules_all())}[
        small_clinic.visit_rule.pk
    ]
    assert row.delivered == before[small_clinic.visit_rule.pk].delivered + 1


def test_today_is_counted_live_and_never_summarised(small_clinic):
    summary.refresh_since()
    assert not SummarisedDay.objects.filter(day__gte=NOW.date()).exists()
    today = parsed(end=NOW.date().isoformat())
    before = {r.rule.pk: r.queued for r in selectors.funnel(today, selectors.rules_all())}
    _message(
        small_clinic.recall_rule,
        small_clinic.patients[0],
        99,
        status=Status.QUEUED,
        due=at(10, hour=7),
        sent=False,
    )
    after = {r.rule.pk: r.queued for r in selectors.funnel(today, selectors.rules_all())}
    assert after[small_clinic.recall_rule.pk] == before[small_clinic.recall_rule.pk] + 1


@pytest.mark.parametrize(
    "chosen",
    [
        {"department": "家醫科"},
        {"department": "眼科"},  # p[0] too, by its second visit
        {"doctor": "李醫師"},
        {"doctor": "陳醫師"},  # p[0] alone
        {"department": "眼科", "doctor": "李醫師"},  # the same visit's: not p[0]
        {"department": "眼科", "doctor": "陳醫師"},
        {"department": "家醫科", "doctor": "李醫師"},  # no visit has both: nothing
        {"department": "外科"},
    ],
)
def test_department_and_doctor_figures_from_the_summary_equal_those_counted_live(
    small_clinic, chosen
):
    from tests.factories import VisitFactory

    # A patient of two departments and doctors counts under each of them.
    VisitFactory(patient=small_clinic.patients[0], department="眼科", doctor="陳醫師")
    f = parsed(**chosen)
    live = steps_of(f)
    funnel_live = {
        r.rule.pk: (r.queued, r.sent, r.attended)
        for r in selectors.funnel(f, selectors.rules_all())
    }
    summary.refresh_since()
    assert MessageDay.objects.filter(**chosen).exists() == bool(live)
    assert steps_of(f) == live
    assert {
        r.rule.pk: (r.queued, r.sent, r.attended)
        for r in selectors.funnel(f, selectors.rules_all())
    } == (funnel_live)
    MessageDay.objects.filter(**chosen).update(queued=1000)  # the summary is what was read
    assert (not live) or steps_of(f) != live


def test_the_summary_counts_each_message_once_for_all_and_once_per_group(small_clinic):
    summary.refresh_since()
    everyone = MessageDay.objects.filter(department="", doctor="")
    total = sum(everyone.values_list("queued", flat=True))
    assert total == OutboxMessage.objects.filter(due_at__lt=at(10, hour=0)).count()
    by_department = MessageDay.objects.exclude(department="").filter(doctor="")
    # Every fixture patient has one department: the departments' rows add up to the total.
    assert sum(by_department.values_list("queued", flat=True)) == total


def test_command_rebuilds_from_a_day(small_clinic):
    call_command("dashboard_refresh", "--since", "2026-03-04")
    days = set(SummarisedDay.objects.values_list("day", flat=True))
    assert min(days) == dt.date(2026, 3, 4)
    assert max(days) == dt.date(2026, 3, 9)
    assert not MessageDay.objects.filter(day__lt=dt.date(2026, 3, 4)).exists()


def test_page_says_when_the_summary_was_counted(client, manager_user, small_clinic):
    client.force_login(manager_user)
    page = client.get(reverse("dashboard:index"), RANGE).content.decode()
    assert 'id="summary-as-of"' not in page
    summary.refresh_since()
    page = client.get(reverse("dashboard:index"), RANGE).content.decode()
    assert "今天以前的訊息數量最後更新於 2026-03-10 08:00" in page


def test_setup_schedules_refreshes_the_summary_every_few_minutes():
    from django_q.models import Schedule

    call_command("setup_schedules", stdout=open("/dev/null", "w"))  # noqa: SIM115
    schedule = Schedule.objects.get(func="dashboard.tasks.summary_refresh_task")
    assert (schedule.schedule_type, schedule.minutes) == (Schedule.MINUTES, 5)
    nightly = Schedule.objects.get(func="dashboard.tasks.summary_rebuild_task")
    assert nightly.minutes == 24 * 60


def test_scheduled_task_counts_the_recent_days(small_clinic):
    from dashboard.tasks import summary_refresh_task

    assert summary_refresh_task() > 0
    days = set(SummarisedDay.objects.values_list("day", flat=True))
    # A recall's booking counts within recall_days() of sending: the refresh reaches past it.
    assert summary.recent_days() > selectors.recall_days()
    assert days == {NOW.date() - dt.timedelta(days=n) for n in range(1, summary.recent_days() + 1)}
