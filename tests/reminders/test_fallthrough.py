"""Issue 7, points 2, 4 and 5: retries that run out fall through to the next channel, a channel
without credentials is off (never "sent" by the console), and `unknown` only when the
provider may have the message."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from campaigns.models import Skip, SkipReason
from campaigns.templating import display_name
from consent.models import Channel, Purpose
from patients.models import Condition
from reminders.channels.base import ChannelError, _load
from reminders.channels.memory import MemoryChannel
from reminders.models import Attempt, OutboxMessage, StaffTask, Status
from tests.factories import (
    AppointmentFactory,
    PatientFactory,
    VisitFactory,
    grant,
)
from tests.helpers import MEMORY, dispatch, only, plan, taipei

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("memory_channels", "english")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def notice(clinic):
    """A return-visit notice due at 10:00 on Nov 24 by SMS (the patient consented to SMS)."""
    only("回診通知")
    patient = PatientFactory(line_user_id="U" + "d" * 32)
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 14, 30))
    plan(taipei(2026, 11, 24, 8, 0))
    return OutboxMessage.objects.get()


def retry_until_settled(message, moment):
    for _ in range(10):
        dispatch(moment)
        message.refresh_from_db()
        if message.status != Status.QUEUED or message.channel != "sms":
            return message
        moment = message.next_attempt_at
    return message


def test_exhausted_retries_fall_through_to_the_next_consented_channel(notice, memory_channels):
    grant(notice.patient, Purpose.CARE, Channel.LINE)
    MemoryChannel.fail_next(ChannelError("HTTP 503", permanent=False), times=5)

    message = retry_until_settled(notice, taipei(2026, 11, 24, 10, 1))
    dispatch(message.next_attempt_at)

    message.refresh_from_db()
    assert (message.channel, message.status) == ("line", Status.SENT)
    assert [m.channel for m in memory_channels] == ["line"]
    outcomes = list(message.attempts_log.values_list("channel", "outcome"))
    assert outcomes == [("sms", Attempt.Outcome.TRANSIENT)] * 5 + [("line", Attempt.Outcome.SENT)]
    assert "gave up after 5 tries" in message.error
    assert not StaffTask.objects.exists()


def test_exhausted_retries_with_no_channel_left_fail_and_ask_staff_to_call(notice, memory_channels):
    MemoryChannel.fail_next(ChannelError("HTTP 503", permanent=False), times=5)

    message = retry_until_settled(notice, taipei(2026, 11, 24, 10, 1))

    # LINE and e-mail have texts but no consent: passed over; the SMS failure decides.
    assert message.status == Status.FAILED
    task = StaffTask.objects.get()
    assert (task.kind, task.message, task.patient) == (
        StaffTask.Kind.CALL_UNREACHED,
        message,
        notice.patient,
    )
    assert memory_channels == []


def test_a_retry_that_would_come_too_late_falls_through_at_once(notice, memory_channels):
    grant(notice.patient, Purpose.CARE, Channel.LINE)
    OutboxMessage.objects.update(expires_at=taipei(2026, 11, 24, 10, 1, 30))
    MemoryChannel.fail_next(ChannelError("HTTP 503", permanent=False))

    dispatch(taipei(2026, 11, 24, 10, 1))

    notice.refresh_from_db()
    assert (notice.channel, notice.status) == ("line", Status.SENT)
    assert notice.attempts_log.count() == 2  # one SMS try, then LINE at once


def test_a_birthday_greeting_that_cannot_be_delivered_makes_no_call_task(clinic, memory_channels):
    only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1960, 11, 24))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    plan(taipei(2026, 11, 24, 8, 0))
    MemoryChannel.fail_next(ChannelError("invalid number", permanent=True))

    dispatch(taipei(2026, 11, 24, 10, 1))

    assert OutboxMessage.objects.get().status == Status.FAILED
    assert not StaffTask.objects.exists()


# --- a later channel's text is made when the message falls through to it ------------------------


def fall_through(message):
    """`message`'s first channel fails for good when it is due; it goes on the next one."""
    MemoryChannel.fail_next(ChannelError("invalid number", permanent=True))
    dispatch(message.due_at)
    message.refresh_from_db()
    dispatch(message.next_attempt_at)
    message.refresh_from_db()
    return message


def test_the_next_channels_text_is_made_at_fall_through_from_the_template_of_now(
    notice, memory_channels
):
    grant(notice.patient, Purpose.CARE, Channel.LINE)
    template = notice.rule.templates.get(channel="line", language="zh-hant")
    template.body = "{{ patient.display_name }}：{{ appointment.date }} {{ appointment.time }} 回診"
    template.save()

    fall_through(notice)

    assert (notice.channel, notice.status) == ("line", Status.SENT)
    name = display_name(notice.patient.name, notice.patient.sex, "zh-hant")
    assert notice.body == f"{name}：12月1日（二） 14:30 回診"
    assert [m.body for m in memory_channels] == [notice.body]


def test_a_fallback_too_long_for_its_channel_is_passed_over_with_the_reason(
    clinic, settings, memory_channels
):
    settings.SMS_MAX_SEGMENTS = 1
    only("生日祝福")
    patient = PatientFactory(
        birth_date=dt.date(1970, 11, 24),
        name="陳" * 80,
        sex="U",
        line_user_id="U" + "b" * 32,
        email="chen@example.test",
        preferred_channel="line",
    )
    for channel in (Channel.LINE, Channel.SMS, Channel.EMAIL):
        grant(patient, Purpose.RELATIONSHIP, channel)
    plan(taipei(2026, 11, 24, 8, 0))
    message = OutboxMessage.objects.get()
    assert (message.channel, message.channels_left) == ("line", ["sms", "email"])

    fall_through(message)

    assert (message.channel, message.status) == ("email", Status.SENT)
    assert "too long for SMS" in message.error  # two segments, at most one
    assert [m.channel for m in memory_channels] == ["email"]
    assert "陳" * 80 in memory_channels[0].body


def test_a_recall_falls_through_with_its_last_visit_read_again(clinic, memory_channels):
    rule = only("慢性病回診召回")
    patient = PatientFactory(line_user_id="U" + "c" * 32, preferred_channel="sms")
    patient.conditions.add(Condition.objects.get(code="hypertension"))
    grant(patient, rule.purpose, Channel.SMS)
    grant(patient, rule.purpose, Channel.LINE)
    last = dt.date(2026, 11, 24) - dt.timedelta(days=max(rule.offsets))
    VisitFactory(patient=patient, visited_on=last, department="心臟內科")
    plan(taipei(2026, 11, 24, 8, 0))
    message = OutboxMessage.objects.get()
    assert message.channel == "sms" and "line" in message.channels_left

    fall_through(message)

    assert (message.channel, message.status) == ("line", Status.SENT)
    assert f"{last.month}月{last.day}日" in message.body


# --- 4: a channel without credentials is off ------------------------------------------------


def test_planner_skips_a_channel_that_is_not_configured(clinic, settings):
    settings.REMINDER_CHANNELS = {"email": MEMORY}  # no SMS, no LINE here
    only("回診通知")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 14, 30))

    plan(taipei(2026, 11, 24, 8, 0))

    assert not OutboxMessage.objects.exists()
    assert Skip.objects.get().reason == SkipReason.CHANNEL_NOT_CONFIGURED


def test_gate_passes_over_a_channel_switched_off_after_planning(notice, settings, memory_channels):
    settings.REMINDER_CHANNELS = {"email": MEMORY}

    dispatch(taipei(2026, 11, 24, 10, 1))

    notice.refresh_from_db()
    assert notice.status == Status.DROPPED
    assert "channel not configured" in notice.error
    assert memory_channels == []
    assert not notice.attempts_log.exists()


def _settings_in_subprocess(env: dict[str, str], code: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO", "LINE", "EMAIL"))}
    clean.pop("CONSOLE_CHANNELS", None)
    key = "qGf0Qn4H2b0mZ3y3o3o0o3o0o3o0o3o0o3o0o3o0o3o="
    clean.update(
        DJANGO_SETTINGS_MODULE="clinic_crm.settings",
        SECRET_KEY="x" * 50,
        FIELD_ENCRYPTION_KEYS=key,
        BLIND_INDEX_KEY=key,
        ALLOWED_HOSTS="clinic.example",
        **env,
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_production_without_credentials_has_no_channel_at_all():
    code = "from django.conf import settings; print(sorted(settings.REMINDER_CHANNELS))"

    assert _settings_in_subprocess({"DEBUG": "0"}, code) == "[]"


def test_production_uses_the_console_only_where_chosen_explicitly():
    code = "from django.conf import settings; print(settings.REMINDER_CHANNELS)"

    shown = _settings_in_subprocess({"DEBUG": "0", "CONSOLE_CHANNELS": "line"}, code)

    assert shown == "{'line': 'reminders.channels.console.ConsoleChannel'}"


def test_development_without_credentials_logs_on_the_console():
    code = "from django.conf import settings; print(sorted(settings.REMINDER_CHANNELS.items()))"

    shown = _settings_in_subprocess({"DEBUG": "1", "TWILIO_ACCOUNT_SID": "AC1"}, code)

    assert shown.count("ConsoleChannel") == 3  # SMS lacks its token: still the console


def test_check_deploy_warns_about_channels_that_are_off(settings, capsys):
    settings.REMINDER_CHANNELS = {"email": MEMORY}

    call_command("check", "--deploy", "--tag", "security")

    err = capsys.readouterr().err
    assert "reminders.W001" in err and "The sms channel is off" in err
    assert "The line channel is off" in err and "The email channel is off" not in err


# --- 5: unknown only when the provider may have it ------------------------------------------


def test_twilio_credentials_that_cannot_be_encoded_fail_plainly_not_unknown(
    notice, fake_twilio, settings
):
    settings.TWILIO_AUTH_TOKEN = "權杖"  # HTTP basic auth is latin-1: refused before sending

    dispatch(taipei(2026, 11, 24, 10, 1))

    notice.refresh_from_db()
    assert notice.status in (Status.FAILED, Status.DROPPED)
    assert notice.status != Status.UNKNOWN
    assert not StaffTask.objects.filter(kind=StaffTask.Kind.REVIEW_UNKNOWN).exists()
    assert fake_twilio.requests == []


def test_an_email_subject_with_a_line_break_fails_plainly_not_unknown(clinic, settings):
    settings.REMINDER_CHANNELS = {"email": "reminders.channels.email.EmailChannel"}
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    _load.cache_clear()
    only("回診通知")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.EMAIL)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 14, 30))
    plan(taipei(2026, 11, 24, 8, 0))
    message = OutboxMessage.objects.get(channel="email")
    # A text already made (a retry sends what the first try was given) with a smuggled header.
    message.subject, message.body = "回診\r\nBcc: someone@example.test", "請記得回診。"
    message.save()

    dispatch(taipei(2026, 11, 24, 10, 1))

    message.refresh_from_db()
    assert message.status == Status.FAILED
    assert message.attempts_log.get().outcome == Attempt.Outcome.PERMANENT
    assert not StaffTask.objects.filter(kind=StaffTask.Kind.REVIEW_UNKNOWN).exists()
