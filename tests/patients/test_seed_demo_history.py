"""`seed_demo` writes the last 120 days of what the care rules did: messages in every status with
their attempts, skips with reasons, a holdout, replies, confirmations and opt-outs, and outcomes
that depend on the reminders, the same for the same seed and day."""

import datetime as dt
import re
from collections import Counter
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.apps import apps
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q

from campaigns.kinds import NEVER_PLANNED
from campaigns.models import MessageTemplate, Rule, RuleKind, Skip, SkipReason
from campaigns.policy import is_held_out
from campaigns.sendwindow import day_bounds, is_open_day
from campaigns.templating import sms_size
from consent.models import Action, ConsentEntry, ConsentState, Source
from patients.management.demo_history import HISTORY_DAYS
from patients.models import Appointment, ClinicDay, ClinicProfile, RefillWindow
from reminders.models import Attempt, OutboxMessage, Status, TrackedLink

TAIPEI = ZoneInfo("Asia/Taipei")
NOW = dt.datetime(2026, 3, 10, 9, 30, tzinfo=TAIPEI)
TODAY = NOW.date()
START = TODAY - dt.timedelta(days=HISTORY_DAYS)
CLOSURE = dt.date(2026, 2, 17)  # 春節: closed on a Tuesday
REACHED = [Status.SENT, Status.DELIVERED, Status.UNKNOWN]
# Enough patients for the held-out group of the confirmation request to have a rate.
PATIENTS = 1500


def seed(patients: int, seed: int = 3) -> str:
    out = StringIO()
    with time_machine.travel(NOW, tick=False):
        call_command("seed_demo", patients=patients, seed=seed, stdout=out)
    return out.getvalue()


def closed_on_sundays_and_new_year() -> None:
    profile = ClinicProfile.load()
    profile.closed_weekdays = [6]
    profile.save()
    ClinicDay.objects.create(date=CLOSURE, open=False, kind=ClinicDay.Kind.HOLIDAY)


@pytest.fixture(scope="module")
def seeded(django_db_setup, django_db_blocker):
    """One seeded clinic for the whole module, rolled back at its end."""
    with django_db_blocker.unblock(), transaction.atomic():
        from django.conf import settings

        debug, settings.DEBUG = settings.DEBUG, True  # demo data is for development machines
        # links lead here
        site, settings.PUBLIC_BASE_URL = settings.PUBLIC_BASE_URL, "http://127.0.0.1:8000"
        try:
            # The holdout hashes patient ids, and the rates compared below come from a sample
            # of 1,500: the same ids every time (sequences don't roll back on PostgreSQL, so
            # they would depend on the tests that ran before) make the same sample.
            with connection.cursor() as cursor:
                for sql in connection.ops.sequence_reset_sql(no_style(), apps.get_models()):
                    cursor.execute(sql)
            closed_on_sundays_and_new_year()
            yield seed(PATIENTS)
        finally:
            settings.DEBUG, settings.PUBLIC_BASE_URL = debug, site
            transaction.set_rollback(True)


pytestmark = pytest.mark.django_db


def past_messages():
    return OutboxMessage.objects.filter(due_at__lt=NOW, created_at__lt=day_bounds(TODAY)[0])


def confirmation_rule() -> Rule:
    return Rule.objects.get(kind=RuleKind.APPOINTMENT, asks_confirmation=True)


def no_show_rate(appointments) -> float:
    final = appointments.filter(
        status__in=[Appointment.Status.ATTENDED, Appointment.Status.NO_SHOW]
    )
    total = final.count()
    assert total >= 10, "too few appointments to compare"
    return final.filter(status=Appointment.Status.NO_SHOW).count() / total


def test_the_summary_counts_the_history(seeded):
    assert re.search(
        r"the last 120 days: [\d,]+ messages \([\d,]+ attempts\), [\d,]+ skipped", seeded
    )


def test_the_past_has_messages_in_every_status_with_their_attempts(seeded):
    statuses = set(OutboxMessage.objects.values_list("status", flat=True))
    assert statuses >= {"queued", "sent", "delivered", "failed", "dropped", "unknown"}
    queued = OutboxMessage.objects.filter(status=Status.QUEUED)
    assert queued.exists()
    assert not queued.filter(due_at__lte=NOW).exists()  # queued only for what is still ahead
    assert not OutboxMessage.objects.filter(
        status__in=[Status.QUEUED, Status.DROPPED], attempts_log__isnull=False
    ).exists()
    reached = past_messages().filter(status__in=[Status.SENT, Status.DELIVERED])
    assert not reached.filter(sent_at__isnull=True).exists()
    assert not reached.exclude(attempts_log__outcome=Attempt.Outcome.SENT).exists()
    delivered = OutboxMessage.objects.filter(status=Status.DELIVERED)
    assert not delivered.filter(Q(delivered_at__isnull=True) | Q(channel__in=["line", "email"]))
    failed = past_messages().filter(status=Status.FAILED)
    assert failed.exists() and not failed.filter(error="").exists()
    assert not failed.exclude(attempts_log__isnull=False).exists()
    unknown = OutboxMessage.objects.filter(status=Status.UNKNOWN)
    assert not unknown.exclude(attempts_log__outcome=Attempt.Outcome.UNKNOWN).exists()
    # Planned when the rule ran that day, not when the demo was seeded.
    assert OutboxMessage.objects.filter(created_at__lt=NOW - dt.timedelta(days=60)).exists()


def test_every_shipped_rule_has_a_past(seeded):
    with_messages = set(OutboxMessage.objects.values_list("rule__kind", flat=True))
    # The LINE link code and staff messages are sent by staff, not by a shipped rule; the visit
    # survey ships switched off (a clinic chooses to ask), so the demo has no past of it.
    assert with_messages == set(RuleKind.values) - NEVER_PLANNED - {RuleKind.VISIT_SURVEY}
    reasons = set(Skip.objects.values_list("reason", flat=True))
    assert {
        SkipReason.NO_CONSENT,
        SkipReason.WITHDRAWN,
        SkipReason.NO_CONTACT_POINT,
        SkipReason.STALE,
        SkipReason.ALREADY_CONFIRMED,
        SkipReason.HOLDOUT,
    } <= reasons


def test_sms_messages_record_segments_and_country(seeded):
    sms = list(OutboxMessage.objects.filter(channel="sms")[:300])
    assert sms
    for message in sms:
        assert message.country == "TW"
        assert message.segments == sms_size(message.body).segments >= 1
    assert OutboxMessage.objects.filter(channel="sms", segments__gt=1).exists()
    others = OutboxMessage.objects.exclude(channel="sms")
    assert others.exists() and not others.exclude(segments=1, country="").exists()


def test_no_message_went_out_at_night_or_on_a_closed_day(seeded):
    profile = ClinicProfile.load()
    moments = list(OutboxMessage.objects.exclude(sent_at=None).values_list("sent_at", flat=True))
    moments += list(Attempt.objects.values_list("started_at", flat=True))
    moments += list(
        OutboxMessage.objects.filter(status=Status.QUEUED).values_list("due_at", flat=True)
    )
    assert len(moments) > 1000
    for moment in moments:
        local = moment.astimezone(TAIPEI)
        assert profile.send_window_start <= local.time() < profile.send_window_end, local
        assert is_open_day(local.date(), profile), local
    sent_days = {m.astimezone(TAIPEI).date() for m in moments}
    assert CLOSURE not in sent_days
    assert CLOSURE - dt.timedelta(days=1) in sent_days  # the visits after it, asked the day before


def test_past_appointments_were_attended_or_missed(seeded):
    past = Appointment.objects.filter(starts_at__lt=day_bounds(TODAY)[0])
    statuses = Counter(past.values_list("status", flat=True))
    assert statuses[Appointment.Status.ATTENDED] > statuses[Appointment.Status.NO_SHOW] > 0
    assert set(statuses) == {
        Appointment.Status.ATTENDED,
        Appointment.Status.NO_SHOW,
        Appointment.Status.CANCELLED,
    }
    confirmed = past.exclude(confirmed_at=None)
    assert set(confirmed.values_list("confirmed_via", flat=True)) >= {"reply", "line", "phone"}
    assert not past.filter(confirmed_at__isnull=False, confirmed_via="").exists()


def test_a_confirmation_reply_confirms_its_appointment(seeded):
    replied = OutboxMessage.objects.filter(rule=confirmation_rule(), replied_at__isnull=False)
    assert replied.count() > 20
    for message in replied.select_related("appointment"):
        appointment = message.appointment
        assert appointment.confirmed_at == message.replied_at > message.sent_at
        assert appointment.confirmed_via == ("line" if message.channel == "line" else "reply")
    # Other rules get a word back now and then (a post-op check-in most often).
    assert OutboxMessage.objects.filter(
        rule__kind=RuleKind.POSTOP, replied_at__isnull=False
    ).exists()


def test_held_out_patients_get_a_holdout_skip_and_never_that_rule_s_message(seeded):
    rule = confirmation_rule()
    assert rule.holdout_percent == 20
    assert not Rule.objects.exclude(pk=rule.pk).filter(holdout_percent__gt=0).exists()
    held = Skip.objects.filter(rule=rule, reason=SkipReason.HOLDOUT)
    held_patients = set(held.values_list("patient_id", flat=True))
    assert len(held_patients) >= 20
    assert all(is_held_out(rule, patient_id) for patient_id in held_patients)
    messaged = set(OutboxMessage.objects.filter(rule=rule).values_list("patient_id", flat=True))
    assert not held_patients & messaged
    assert not any(is_held_out(rule, patient_id) for patient_id in messaged)
    # Held out of the confirmation request only: the week-ahead notice still reaches them.
    notice = Rule.objects.get(kind=RuleKind.APPOINTMENT, asks_confirmation=False)
    assert OutboxMessage.objects.filter(rule=notice, patient_id__in=held_patients).exists()


def test_no_shows_are_rarer_when_the_confirmation_request_arrived(seeded):
    rule = confirmation_rule()
    past = Appointment.objects.filter(starts_at__lt=day_bounds(TODAY)[0])
    asked = OutboxMessage.objects.filter(rule=rule, status__in=REACHED)
    reminded = past.filter(pk__in=asked.values("appointment_id"))
    held = past.filter(
        patient_id__in=Skip.objects.filter(rule=rule, reason=SkipReason.HOLDOUT).values(
            "patient_id"
        ),
        starts_at__gte=rule.enabled_since + dt.timedelta(days=2),
    )
    any_reminder = OutboxMessage.objects.filter(appointment_id=OuterRef("pk"))
    never_reminded = past.filter(~Exists(any_reminder))

    reminded_rate = no_show_rate(reminded)
    assert 0.03 < reminded_rate < 0.12
    assert no_show_rate(held) > reminded_rate + 0.04
    assert no_show_rate(never_reminded) > 0.15
    assert no_show_rate(past.exclude(confirmed_at=None)) < 0.06


def test_refills_are_picked_up_more_often_after_a_reminder(seeded):
    closed = RefillWindow.objects.filter(closes_on__lt=TODAY, opens_on__gte=START)
    reached = OutboxMessage.objects.filter(refill_window_id=OuterRef("pk"), status__in=REACHED)

    def pickup(windows) -> float:
        total = windows.count()
        assert total >= 30
        return windows.exclude(picked_up_on=None).count() / total

    reminded, not_reminded = (
        pickup(closed.filter(Exists(reached))),
        pickup(closed.filter(~Exists(reached))),
    )
    assert reminded > 0.78
    assert not_reminded < 0.72
    assert reminded > not_reminded + 0.1
    picked = closed.exclude(picked_up_on=None)
    assert all(w.opens_on <= w.picked_up_on <= w.closes_on for w in picked)


def test_rules_were_switched_on_100_days_ago_and_the_refill_closing_one_40(seeded):
    shipped_on = Rule.objects.filter(asks_confirmation=False, enabled=True)
    rules = {rule.kind: rule for rule in shipped_on}
    for kind, rule in rules.items():
        days = (TODAY - rule.enabled_since.astimezone(TAIPEI).date()).days
        assert days == (41 if kind == RuleKind.REFILL_CLOSES else 101), kind
        assert not OutboxMessage.objects.filter(rule=rule, created_at__lt=rule.enabled_since)
        assert not Skip.objects.filter(rule=rule, at__lt=rule.enabled_since)
    # The dashboard's "before it was switched on": refill windows that closed in the 30 days
    # before, without the closing reminder, against those after.
    late = rules[RuleKind.REFILL_CLOSES]
    switched = late.enabled_since.astimezone(TAIPEI).date()
    before = RefillWindow.objects.filter(
        closes_on__gte=switched - dt.timedelta(days=30), closes_on__lt=switched
    )
    after = RefillWindow.objects.filter(closes_on__gte=switched, closes_on__lt=TODAY)
    rate_before = before.exclude(picked_up_on=None).count() / before.count()
    rate_after = after.exclude(picked_up_on=None).count() / after.count()
    assert rate_after > rate_before


def test_recalled_patients_book_a_visit(seeded):
    recall = Rule.objects.get(kind=RuleKind.RECALL)
    sent = OutboxMessage.objects.filter(rule=recall, status__in=REACHED)
    assert sent.count() >= 10
    booked = sent.filter(
        Exists(
            Appointment.objects.filter(
                patient_id=OuterRef("patient_id"),
                starts_at__gt=OuterRef("sent_at"),
                starts_at__lt=OuterRef("sent_at") + dt.timedelta(days=30),
            ).exclude(status=Appointment.Status.CANCELLED)
        )
    )
    assert booked.exists()


def test_opt_outs_are_in_the_ledger_and_the_current_state_agrees(seeded):
    opt_outs = ConsentEntry.objects.filter(
        action=Action.WITHDRAW,
        source__in=[Source.SMS_KEYWORD, Source.LINE_FOLLOW],
        recorded_at__gte=day_bounds(START)[0],
        evidence__in=["回覆 STOP", "封鎖 LINE 官方帳號"],
    )
    assert opt_outs.exists()
    for entry in opt_outs:
        state = ConsentState.objects.get(
            patient_id=entry.patient_id, purpose=entry.purpose, channel=entry.channel
        )
        newest = ConsentEntry.objects.filter(
            patient_id=entry.patient_id, purpose=entry.purpose, channel=entry.channel
        ).first()
        assert state.entry == newest and state.granted == (newest.action == Action.GRANT)
        # What the patient stopped, stopped: nothing more on that channel for that purpose.
        assert not OutboxMessage.objects.filter(
            patient_id=entry.patient_id,
            purpose=entry.purpose,
            channel=entry.channel,
            sent_at__gt=entry.recorded_at,
        ).exists()


def test_the_day_view_s_reminders_follow_the_holdout_too(seeded):
    rule = confirmation_rule()
    start, end = day_bounds(TODAY)[0], day_bounds(TODAY + dt.timedelta(days=1))[1]
    days = Appointment.objects.filter(starts_at__gte=start, starts_at__lt=end)
    messaged = OutboxMessage.objects.filter(rule=rule, appointment__in=days)
    assert messaged.exists()
    assert not any(is_held_out(rule, p) for p in messaged.values_list("patient_id", flat=True))


def test_the_birthday_greeting_links_to_the_health_talks_and_some_patients_open_it(seeded):
    rule = Rule.objects.get(kind=RuleKind.BIRTHDAY)
    templates = MessageTemplate.objects.filter(rule=rule)
    assert templates.exists() and all("{% link " in t.body for t in templates)
    links = TrackedLink.objects.filter(rule=rule).select_related("message")
    assert links.count() == OutboxMessage.objects.filter(rule=rule).count() > 20
    for link in links:
        assert f"http://127.0.0.1:8000/r/{link.token}/" in link.message.body
        assert link.url == "https://anxin-clinic.example/health-talks"
        assert link.created_at == link.message.created_at
    clicked = [link for link in links if link.clicks]
    assert clicked
    for link in clicked:
        assert link.message.status in REACHED
        assert link.message.sent_at < link.first_clicked_at < NOW
    assert not TrackedLink.objects.exclude(rule=rule).exists()
