"""`seed_demo`'s history is the same for the same seed and day, and costs no query per patient."""

import datetime as dt
import re
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.apps import apps
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connection, transaction

from campaigns.models import Rule, Skip
from consent.models import ConsentEntry
from patients.models import Appointment, RefillWindow
from reminders.models import Attempt, OutboxMessage, TrackedLink

NOW = dt.datetime(2026, 3, 10, 9, 30, tzinfo=ZoneInfo("Asia/Taipei"))

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _development(settings):
    settings.DEBUG = True  # demo data is for development machines
    settings.PUBLIC_BASE_URL = "http://127.0.0.1:8000"  # the birthday greeting gets its link


def restart_ids() -> None:
    """Ids continue from the highest on file, as on a fresh database: PostgreSQL's sequences
    don't roll back with a transaction, and the holdout is a hash of the patient's id."""
    statements = connection.ops.sequence_reset_sql(no_style(), apps.get_models())
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def seed(patients: int, seed: int) -> None:
    with time_machine.travel(NOW, tick=False):
        call_command("seed_demo", patients=patients, seed=seed, stdout=StringIO())


def fingerprint() -> dict[str, list]:
    def unid(key: str) -> str:
        return re.sub(r":\d+:", ":#:", key)

    messages = OutboxMessage.objects.select_related("rule", "patient").order_by("uuid")
    return {
        "messages": [
            (
                m.uuid,
                m.rule.name,
                m.patient.chart_no,
                unid(m.occurrence_key),
                m.status,
                m.channel,
                m.body,
                m.due_at,
                m.sent_at,
                m.delivered_at,
                m.replied_at,
                m.segments,
                m.created_at,
                m.error,
                m.attempts,
            )
            for m in messages
        ],
        "attempts": sorted(
            Attempt.objects.values_list("message__uuid", "started_at", "outcome", "error")
        ),
        "skips": sorted(
            (s.rule.name, s.patient.chart_no, unid(s.occurrence_key), s.reason, s.at)
            for s in Skip.objects.select_related("rule", "patient")
        ),
        "appointments": sorted(
            Appointment.objects.values_list(
                "patient__chart_no", "starts_at", "status", "confirmed_via", "confirmed_at"
            )
        ),
        "refills": sorted(
            RefillWindow.objects.values_list(
                "prescription__patient__chart_no", "opens_on", "picked_up_on"
            ),
            key=str,
        ),
        "consent": sorted(
            ConsentEntry.objects.values_list(
                "patient__chart_no", "purpose", "channel", "action", "recorded_at"
            )
        ),
        "links": sorted(
            TrackedLink.objects.values_list("token", "message__uuid", "clicks", "first_clicked_at")
        ),
        "rules": sorted(Rule.objects.values_list("name", "enabled_since", "holdout_percent")),
    }


def test_the_same_seed_and_day_write_the_same_history():
    def run() -> dict[str, list]:
        with transaction.atomic():
            restart_ids()
            seed(300, seed=5)
            result = fingerprint()
            transaction.set_rollback(True)  # the second run starts from the same database
        return result

    first = run()

    assert len(first["messages"]) > 100 and first["attempts"] and first["skips"]
    assert run() == first


def test_seeding_makes_no_query_per_patient():
    def queries(patients: int) -> int:
        """Queries other than INSERTs (which SQLite splits by its limit on parameters)."""
        count = 0

        def counted(execute, sql, params, many, context):
            nonlocal count
            count += not sql.lstrip().upper().startswith("INSERT")
            return execute(sql, params, many, context)

        with transaction.atomic(), connection.execute_wrapper(counted):
            seed(patients, seed=5)
            transaction.set_rollback(True)
        return count

    assert queries(400) <= queries(100) + 3
