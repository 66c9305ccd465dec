"""The same provider event delivered twice acts once: Twilio's incoming SMS (MessageSid), its
delivery reports (MessageSid + MessageStatus) and LINE's events (webhookEventId). The record of
what was applied is kept WEBHOOK_DEDUPE_DAYS and then forgotten by a daily task."""

import datetime as dt
import threading

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_q.models import Schedule

from consent.models import Action, Channel, ConsentEntry, Purpose
from consent.selectors import may_contact
from tests.factories import PatientFactory, grant

from .test_replies import LINE_ID, line_event, line_events, sms_from
from .test_webhooks import outbox_sms

pytestmark = pytest.mark.django_db
SID = "SM" + "7" * 32


@pytest.fixture(autouse=True)
def provider_settings(settings):
    settings.TWILIO_AUTH_TOKEN = "test-auth-token"
    settings.LINE_CHANNEL_SECRET = "test-line-secret"
    settings.PUBLIC_BASE_URL = "https://crm.clinic.example"


@pytest.fixture
def patient():
    patient = PatientFactory(phone="+886912345678", line_user_id=LINE_ID)
    for channel in (Channel.SMS, Channel.LINE):
        grant(patient, Purpose.CARE, channel)
    return patient


def withdrawals(patient) -> int:
    return ConsentEntry.objects.filter(patient=patient, action=Action.WITHDRAW).count()


def test_a_replayed_stop_does_not_withdraw_consent_renewed_since(client, patient):
    # given: the patient texted STOP, then agreed to texts again at the desk
    sms_from(client, "+886912345678", "STOP", sid=SID)
    grant(patient, Purpose.CARE, Channel.SMS)

    # when: the same signed request arrives again (Twilio's retry, or someone replaying it)
    response = sms_from(client, "+886912345678", "STOP", sid=SID)

    # then: it is answered, and the renewed consent stands
    assert response.status_code == 200
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)
    assert withdrawals(patient) == 1


def test_a_new_stop_after_renewed_consent_still_withdraws_it(client, patient):
    sms_from(client, "+886912345678", "STOP", sid=SID)
    grant(patient, Purpose.CARE, Channel.SMS)

    sms_from(client, "+886912345678", "STOP", sid="SM" + "8" * 32)

    assert not may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)
    assert withdrawals(patient) == 2


def test_a_redelivered_line_unfollow_does_not_withdraw_consent_renewed_since(client, patient):
    unfollow = line_event("unfollow")
    line_events(client, unfollow)
    grant(patient, Purpose.CARE, Channel.LINE)

    redelivered = {**unfollow, "deliveryContext": {"isRedelivery": True}}
    response = line_events(client, redelivered)

    assert response.status_code == 200
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)
    assert withdrawals(patient) == 1


def test_a_redelivered_line_event_never_applied_before_is_applied(client, patient):
    # LINE redelivers what we failed to take; the first delivery never reached us.
    unfollow = {**line_event("unfollow"), "deliveryContext": {"isRedelivery": True}}

    line_events(client, unfollow)

    assert not may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)


def test_the_same_event_twice_in_one_line_call_acts_once(client, patient):
    unfollow = line_event("unfollow")
    follow = line_event("follow", replyToken="r" * 32, follow={"isUnblocked": True})

    response = line_events(client, unfollow, follow, unfollow)

    assert response.status_code == 200

    assert withdrawals(patient) == 1


def test_a_line_event_older_than_the_dedupe_window_is_refused(client, patient, settings):
    # Its record may be forgotten already, so a replay could not be told from a first delivery.
    settings.WEBHOOK_DEDUPE_DAYS = 30
    old = timezone.now() - dt.timedelta(days=31)
    unfollow = {**line_event("unfollow"), "timestamp": int(old.timestamp() * 1000)}

    response = line_events(client, unfollow)

    assert response.status_code == 200
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)


def test_an_event_whose_handling_failed_is_applied_when_it_comes_again(
    client, patient, monkeypatch
):
    # given: the first delivery fails half-way, after the event was noted as seen
    from reminders import replies

    real = replies.consent_withdraw_all
    monkeypatch.setattr(replies, "consent_withdraw_all", _raise)
    with pytest.raises(RuntimeError):
        sms_from(client, "+886912345678", "STOP", sid=SID)
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)

    # when: Twilio retries the same SMS
    monkeypatch.setattr(replies, "consent_withdraw_all", real)
    sms_from(client, "+886912345678", "STOP", sid=SID)

    # then: the note rolled back with the failure, so the retry is applied
    assert not may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)


def _raise(**kwargs):
    raise RuntimeError("the database went away")


def test_the_daily_task_forgets_records_older_than_the_window(settings):
    from reminders import tasks
    from reminders.models import ParkedReport, WebhookEvent

    settings.WEBHOOK_DEDUPE_DAYS = 30
    now = timezone.now()
    for days, event_id in [(40, "old"), (29, "recent")]:
        WebhookEvent.objects.create(
            provider=WebhookEvent.Provider.LINE,
            event_id=event_id,
            received_at=now - dt.timedelta(days=days),
        )
    for days, status in [(40, "delivered"), (0, "undelivered")]:
        ParkedReport.objects.create(
            message=outbox_sms(status="sending"),
            provider_id=SID,
            provider_status=status,
            received_at=now - dt.timedelta(days=days),
        )

    forgotten = tasks.webhook_cleanup_task()

    assert forgotten == 1
    assert list(WebhookEvent.objects.values_list("event_id", flat=True)) == ["recent"]
    assert list(ParkedReport.objects.values_list("provider_status", flat=True)) == ["undelivered"]


def test_setup_schedules_runs_the_cleanup_daily():
    call_command("setup_schedules", stdout=open("/dev/null", "w"))  # noqa: SIM115

    schedule = Schedule.objects.get(func="reminders.tasks.webhook_cleanup_task")
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == (
        Schedule.MINUTES,
        24 * 60,
        -1,
    )


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs concurrent connections")
def test_the_same_stop_arriving_twice_at_once_acts_once():
    # given: a patient with SMS consent for two purposes
    patient = PatientFactory(phone="+886912345678")
    grant(patient, Purpose.CARE, Channel.SMS)
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    start, responses = threading.Barrier(2), []

    def post():
        try:
            start.wait(timeout=5)
            responses.append(sms_from(Client(), "+886912345678", "STOP", sid=SID).status_code)
        finally:
            connection.close()

    # when: Twilio's original and its retry reach two web workers together
    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    # then: one of them withdrew each purpose once; the other changed nothing
    assert responses == [200, 200]
    assert withdrawals(patient) == 2
