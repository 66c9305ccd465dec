"""Two planners at once (two worker hosts whose schedules fire together) create nothing twice:
both finish without an error, and together they write exactly what one planner alone writes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

from campaigns.models import Skip
from reminders.models import OutboxMessage, StaffTask, TrackedLink

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="two processes need a database they share"
    ),
]

ROOT = Path(__file__).resolve().parents[2]
AT = "2026-12-07T08:00"  # a Monday morning


def planner() -> subprocess.Popen:
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
    }
    return subprocess.Popen(  # noqa: S603  # our own manage.py
        [sys.executable, "manage.py", "run_rules", "--at", AT],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def written() -> dict[str, list[tuple]]:
    return {
        "messages": sorted(
            OutboxMessage.objects.values_list("rule_id", "patient_id", "occurrence_key", "channel")
        ),
        "skips": sorted(Skip.objects.values_list("rule_id", "patient_id", "occurrence_key")),
        "tasks": sorted(StaffTask.objects.values_list("kind", "patient_id", "due_on")),
        "links": sorted(TrackedLink.objects.values_list("message_id", flat=True)),
    }


def test_two_planners_at_once_write_what_one_writes(settings):
    settings.DEBUG = True  # seed_demo's guard: demo data only where nothing really sends
    call_command("seed_demo", patients=300, seed=11, stdout=open(os.devnull, "w"))  # noqa: SIM115
    OutboxMessage.objects.filter(status="queued").delete()  # the demo's own queue aside
    baseline = written()

    first, second = planner(), planner()
    outputs = [process.communicate(timeout=600) for process in (first, second)]

    assert first.returncode == 0, outputs[0][1][-3000:]
    assert second.returncode == 0, outputs[1][1][-3000:]
    together = written()
    assert len(together["messages"]) > len(baseline["messages"]), "nothing was planned"
    assert len(set(together["links"])) == len(together["links"]), "a message got two links"

    # One more planner, alone, finds nothing left to write: the two wrote it all, once.
    alone = planner()
    _out, err = alone.communicate(timeout=600)
    assert alone.returncode == 0, err[-3000:]
    assert written() == together
