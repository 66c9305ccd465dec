"""Twilio delivery reports through the real signed webhook. The callback URL names our message
(its uuid); reports for SMS sent before that still find theirs by MessageSid."""

import datetime as dt
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone
from twilio.request_validator import RequestValidator

from campaigns.models import Rule
from reminders.models import OutboxMessage, Status
from tests.factories import AppointmentFactory, PatientFactory

pytestmark = pytest.mark.django_db
TOKEN = "test-auth-token"
BASE = "https://crm.clinic.example"
SID = "SM" + "a" * 32


@pytest.fixture(autouse=True)
def twilio_settings(settings):
    settings.TWILIO_AUTH_TOKEN = TOKEN
    settings.PUBLIC_BASE_URL = BASE


def outbox_sms(**fields):
    """A return-visit notice by SMS, with e-mail to fall through to (its text made then)."""
    now = timezone.now()
    patient = PatientFactory()
    return OutboxMessage.objects.create(
        rule=Rule.objects.get(name__startswith="回診通知"),
        patient=patient,
        appointment=AppointmentFactory(patient=patient, starts_at=now + dt.timedelta(days=2)),
        occurrence_key=uuid.uuid4().hex,
        purpose="care",
        channel="sms",
        channels_left=["email"],
        due_at=now,
        next_attempt_at=now,
        expires_at=now + dt.timedelta(days=1),
        body="text",
        **fields,
    )


@pytest.fixture
def sent_sms():
    return outbox_sms(status=Status.SENT, provider_id=SID, sent_at=timezone.now())


def callback(client, message, params, *, signature=None):
    """Twilio's signed POST to the StatusCallback URL it was given for `message` (a message,
    a uuid, or None for the URL of SMS sent before the uuid was in it)."""
    if message is None:
        path = reverse("twilio-status-by-sid")
    else:
        path = reverse("twilio-status", args=[getattr(message, "uuid", message)])
    if signature is None:
        signature = RequestValidator(TOKEN).compute_signature(BASE + path, params)
    return client.post(path, params, HTTP_X_TWILIO_SIGNATURE=signature)


def report(status, sid=SID, **extra):
    return {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC" + "0" * 32, **extra}


def test_delivered_report_marks_the_message_delivered(client, sent_sms):
    response = callback(client, sent_sms, report("delivered"))

    assert response.status_code == 204
    sent_sms.refresh_from_db()
    assert sent_sms.status == Status.DELIVERED and sent_sms.delivered_at


def test_report_with_a_bad_signature_is_refused_and_changes_nothing(client, sent_sms):
    from reminders.models import WebhookEvent

    response = callback(client, sent_sms, report("delivered"), signature="forged")

    assert response.status_code == 403
    sent_sms.refresh_from_db()
    assert sent_sms.status == Status.SENT
    # nor is it noted as seen: a forger can't make us ignore the real report later
    assert not WebhookEvent.objects.exists()


def test_report_signed_for_another_message_url_is_refused(client, sent_sms):
    # The signature covers the URL, so a report can't be pointed at another message.
    other = outbox_sms(status=Status.SENT, provider_id="SM" + "b" * 32)
    signed_for_other = RequestValidator(TOKEN).compute_signature(
        BASE + reverse("twilio-status", args=[other.uuid]), report("delivered")
    )

    response = callback(client, sent_sms, report("delivered"), signature=signed_for_other)

    assert response.status_code == 403
    sent_sms.refresh_from_db()
    assert sent_sms.status == Status.SENT


def test_undelivered_sms_moves_on_to_the_next_channel_once(client, sent_sms):
    params = report("undelivered", ErrorCode="30005")

    callback(client, sent_sms, params)
    callback(client, sent_sms, params)  # Twilio may report twice

    sent_sms.refresh_from_db()
    assert (sent_sms.status, sent_sms.channel, sent_sms.channels_left) == ("queued", "email", [])
    assert sent_sms.subject and "回診" in sent_sms.body  # the e-mail's text, made now
    assert "30005" in sent_sms.error


def test_intermediate_statuses_change_nothing(client, sent_sms):
    callback(client, sent_sms, report("sent"))

    sent_sms.refresh_from_db()
    assert sent_sms.status == Status.SENT


def test_report_on_the_old_url_finds_its_message_by_message_sid(client, sent_sms):
    response = callback(client, None, report("delivered"))

    assert response.status_code == 204
    sent_sms.refresh_from_db()
    assert sent_sms.status == Status.DELIVERED


def test_undelivered_after_delivered_changes_nothing(client, sent_sms):
    callback(client, sent_sms, report("delivered"))

    callback(client, sent_sms, report("undelivered", ErrorCode="30003"))

    sent_sms.refresh_from_db()
    assert (sent_sms.status, sent_sms.channel, sent_sms.error) == (Status.DELIVERED, "sms", "")


def test_a_report_for_a_message_already_on_its_next_channel_changes_nothing(client, sent_sms):
    callback(client, sent_sms, report("undelivered", ErrorCode="30005"))
    OutboxMessage.objects.filter(pk=sent_sms.pk).update(
        status=Status.SENT, provider_id="<e-mail id>"
    )

    callback(client, sent_sms, report("delivered"))  # late, for the SMS that never arrived

    sent_sms.refresh_from_db()
    assert (sent_sms.status, sent_sms.channel) == (Status.SENT, "email")
    assert sent_sms.delivered_at is None


def test_a_report_under_another_message_sid_changes_nothing(client, sent_sms):
    callback(client, sent_sms, report("delivered", sid="SM" + "c" * 32))

    sent_sms.refresh_from_db()
    assert sent_sms.status == Status.SENT


def test_a_report_for_an_unknown_message_is_answered_and_changes_nothing(client, sent_sms):
    response = callback(client, uuid.uuid4(), report("delivered"))

    assert response.status_code == 204
    sent_sms.refresh_from_db()
    assert sent_sms.status == Status.SENT


def test_the_same_report_twice_is_recorded_once(client, sent_sms):
    from reminders.models import WebhookEvent

    callback(client, sent_sms, report("delivered"))
    callback(client, sent_sms, report("delivered"))
    callback(client, sent_sms, report("read"))

    assert sorted(WebhookEvent.objects.values_list("provider", "event_id")) == [
        ("twilio_status", f"{SID}:delivered"),
        ("twilio_status", f"{SID}:read"),
    ]


def test_a_delivered_report_settles_an_sms_whose_hand_over_was_unknown(client):
    # given an SMS whose send timed out: unknown, with a review task for staff
    from reminders.models import Attempt, StaffTask

    message = outbox_sms(status=Status.UNKNOWN)
    Attempt.objects.create(
        message=message,
        channel="sms",
        started_at=timezone.now(),
        outcome=Attempt.Outcome.UNKNOWN,
    )
    today = timezone.localdate()
    task = StaffTask.objects.create(
        kind=StaffTask.Kind.REVIEW_UNKNOWN,
        message=message,
        patient=message.patient,
        due_on=today,
        until=today,
    )

    # when Twilio reports it delivered, to the callback URL that names the message
    response = callback(client, message, report("delivered"))

    # then it was sent after all, and no one needs to check by hand
    assert response.status_code == 204
    message.refresh_from_db()
    assert (message.status, message.provider_id) == (Status.DELIVERED, SID)
    assert message.sent_at and message.delivered_at
    task.refresh_from_db()
    assert task.done_at is not None
