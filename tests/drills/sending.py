"""What the sending drills share: SMS queued for now, a sender process against a fake Twilio,
waiting, and the one verdict every drill ends with."""

import datetime as dt
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from django.db import connection
from django.utils import timezone

from campaigns.models import Rule
from consent.models import Channel, Purpose
from patients.models import ClinicProfile
from reminders.models import OutboxMessage, Status
from tests.factories import PatientFactory, grant

ROOT = Path(__file__).resolve().parents[2]


def queue_sms(count: int, tag: str) -> None:
    """`count` SMS due now to patients with SMS care consent, in a clinic open day and night."""
    ClinicProfile.objects.update_or_create(
        pk=1,
        defaults={
            "send_window_start": dt.time(0, 0),
            "send_window_end": dt.time(23, 59),
            "closed_weekdays": [],
        },
    )
    rule = Rule.objects.get(name__startswith="術後關懷")  # needs no appointment to check
    now = timezone.now()
    for n in range(count):
        patient = PatientFactory()
        grant(patient, Purpose.CARE, Channel.SMS)
        OutboxMessage.objects.create(
            rule=rule,
            patient=patient,
            occurrence_key=f"{tag}:{n}",
            purpose=Purpose.CARE,
            channel=Channel.SMS,
            due_at=now,
            next_attempt_at=now,
            expires_at=now + dt.timedelta(hours=2),
            body=f"{tag} {n}",
        )


def sender(fake, log: Path, *, seconds: int = 60, **env: str) -> subprocess.Popen:
    """`manage.py dispatch_messages` in a process of its own, sending to `fake` (FakeTwilio)."""
    db = connection.settings_dict
    environment = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_AUTH_TOKEN": fake.auth_token,
        "TWILIO_FROM_NUMBER": "+15017122661",
        "TWILIO_API_BASE_URL": fake.url,
        "DISPATCH_CLAIM_LEASE_SECONDS": "1",
        "REDIS_URL": "",
        **env,
    }
    return subprocess.Popen(  # noqa: S603  # our own manage.py
        [sys.executable, "manage.py", "dispatch_messages", "--seconds", str(seconds)],
        cwd=ROOT,
        env=environment,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def unsettled() -> int:
    return OutboxMessage.objects.filter(status__in=[Status.QUEUED, Status.SENDING]).count()


def settle(fake, log: Path, **env: str) -> None:
    """Senders, past the claim lease, until nothing is left to settle."""
    deadline = time.monotonic() + 120
    while unsettled():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(1.2)
        sender(fake, log, **env).wait(timeout=90)


def assert_nothing_lost_or_doubled(fake, log: Path, messages: int) -> None:
    """Every message final; nobody got the same SMS twice; every SMS the provider took is
    recorded as sent, or as unknown for staff to check; nothing recorded as sent that it
    never took."""
    statuses = Counter(OutboxMessage.objects.values_list("status", flat=True))
    assert set(statuses) <= {Status.SENT, Status.UNKNOWN}, (statuses, log.read_text()[-3000:])
    assert sum(statuses.values()) == messages
    accepted = Counter(r.form["To"][0] for r in fake.requests if r.status == 201)
    assert max(accepted.values()) == 1, "a patient got the same SMS twice"
    phones = {
        status: {m.patient.phone for m in OutboxMessage.objects.filter(status=status)}
        for status in (Status.SENT, Status.UNKNOWN)
    }
    assert phones[Status.SENT] <= set(accepted), "recorded as sent, never reached the provider"
    assert set(accepted) <= phones[Status.SENT] | phones[Status.UNKNOWN]


def busiest_second(moments: list[float]) -> int:
    """The most requests any one-second window saw, as a provider counting them would."""
    moments = sorted(moments)
    return max(
        (sum(1 for m in moments[i:] if m < start + 1.0) for i, start in enumerate(moments)),
        default=0,
    )
