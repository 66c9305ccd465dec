"""`seed_demo` makes a live today and tomorrow for the day view: 20-40 appointments each, in
every state, with reminders in every state, the same for the same seed."""

import datetime as dt
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.apps import apps
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connection, transaction
from django.urls import reverse

from campaigns.models import Skip
from campaigns.sendwindow import day_bounds
from patients.models import Appointment
from reminders.models import OutboxMessage

TAIPEI = ZoneInfo("Asia/Taipei")
NOW = dt.datetime(2026, 3, 10, 9, 30, tzinfo=TAIPEI)
TODAY = NOW.date()
TOMORROW = TODAY + dt.timedelta(days=1)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _development(settings):
    settings.DEBUG = True  # demo data is for development machines


@pytest.fixture
def seeded():
    with time_machine.travel(NOW, tick=False):
        out = StringIO()
        call_command("seed_demo", patients=150, seed=3, stdout=out)
        yield out.getvalue()


def on(day):
    start, end = day_bounds(day)
    return Appointment.objects.filter(starts_at__gte=start, starts_at__lt=end)


def test_today_and_tomorrow_each_have_20_to_40_appointments(seeded):
    assert 20 <= on(TODAY).count() <= 40
    assert 20 <= on(TOMORROW).count() <= 40
    assert on(TODAY).values("doctor").distinct().count() >= 3
    assert "today and tomorrow" in seeded


def test_today_has_every_status_and_every_way_of_confirming(seeded):
    statuses = set(on(TODAY).values_list("status", flat=True))
    assert statuses == set(Appointment.Status.values)
    ways = set(
        Appointment.objects.filter(starts_at__date__gte=TODAY - dt.timedelta(days=1))
        .exclude(confirmed_via="")
        .values_list("confirmed_via", flat=True)
    )
    assert ways == set(Appointment.ConfirmedVia.values)


def test_the_days_reminders_are_sent_delivered_failed_and_skipped_with_reasons(seeded):
    days = on(TODAY) | on(TOMORROW)
    outcomes = set(
        OutboxMessage.objects.filter(appointment__in=days).values_list("status", flat=True)
    )
    assert {"sent", "delivered", "failed"} <= outcomes
    keys = [f"appointment:{pk}:" for pk in days.values_list("pk", flat=True)]
    skips = [s for s in Skip.objects.all() if any(s.occurrence_key.startswith(k) for k in keys)]
    assert len({s.reason for s in skips}) >= 2


def test_the_same_seed_makes_the_same_day():
    def run():
        with transaction.atomic(), time_machine.travel(NOW, tick=False):
            # The holdout is a hash of patient ids: PostgreSQL's sequences don't roll back, so
            # each run starts them again to give the same patients the same ids.
            with connection.cursor() as cursor:
                for sql in connection.ops.sequence_reset_sql(no_style(), apps.get_models()):
                    cursor.execute(sql)
            call_command("seed_demo", patients=80, seed=5, stdout=StringIO())
            day = list(
                on(TODAY)
                .order_by("starts_at", "patient__chart_no")
                .values_list("starts_at", "patient__chart_no", "doctor", "status", "confirmed_via")
            )
            reminders = sorted(
                OutboxMessage.objects.values_list("patient__chart_no", "status", "channel")
            )
            transaction.set_rollback(True)  # the second run starts from the same empty database
        return day, reminders

    first = run()

    assert first[0] and first[1]
    assert run() == first


def test_the_day_view_is_alive_after_seeding(seeded, client, front_desk_user):
    client.force_login(front_desk_user)

    with time_machine.travel(NOW, tick=False):
        response = client.get(reverse("desk:day"))

    assert response.status_code == 200
    rows = response.context["view"].rows
    assert 20 <= len(rows) <= 40
    states = {r.state for row in rows for r in row.reminders}
    assert {"delivered", "failed", "not_sent"} <= states
