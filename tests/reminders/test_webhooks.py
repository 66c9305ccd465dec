import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone
from twilio.request_validator import RequestValidator

from campaigns.models import Rule
from reminders.models import OutboxMessage, Status
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db
TOKEN = "test-auth-token"


@pytest.fixture(autouse=True)
def twilio_settings(settings):
    settings.TWILIO_AUTH_TOKEN = TOKEN
    settings.PUBLIC_BASE_URL = "https://crm.clinic.example"


@pytest.fixture
def sent_sms():

    now = timezone.now()
    return OutboxMessage.objects.create(
        rule=Rule.objects.get(name__startswith="回診通知"),
        patient=PatientFactory(),
        occurrence_key="x",
        purpose="care",
        channel="sms",
        channels_left=["email"],
        fallbacks='{"email": ["回診通知", "text"]}',
        status=Status.SENT,
        provider_id="SM" + "a" * 32,
        due_at=now,
        next_attempt_at=now,
        expires_at=now + dt.timedelta(days=1),
        body="text",
    )


def callback(client, params, *, signature=None):
    url = "https://crm.clinic.example" + reverse("twilio-status")
    if signature is None:
        signature = RequestValidator(TOKEN).compute_signature(url, params)
    return client.post(reverse("twilio-status"), params, HTTP_X_TWILIO_SIGNATURE=signature)


def test_delivered_report_marks_the_message_delivered(client, sent_sms):
    response = callback(client, {"MessageSid": sent_sms.provider_id, "MessageStatus": "delivered"})

    assert response.status_code == 204
    sent_sms.refresh_from_db()
    assert sent_sms.status == Status.DELIVERED and sent_sms.delivered_at


def test_report_with_a_bad_signature_is_refused_and_changes_nothing(client, sent_sms):
    params = {"MessageSid": sent_sms.provider_id, "MessageStatus": "delivered"}

    response = callback(client, params, signature="forged")

    assert response.status_code == 403
    sent_sms.refresh_from_db()
    assert sent_sms.status == Status.SENT


def test_undelivered_sms_moves_on_to_the_next_channel_once(client, sent_sms):
    params = {
        "MessageSid": sent_sms.provider_id,
        "MessageStatus": "undelivered",
        "ErrorCode": "30005",
    }

    callback(client, params)
    callback(client, params)  # Twilio may report twice

    sent_sms.refresh_from_db()
    assert (sent_sms.status, sent_sms.channel, sent_sms.channels_left) == ("queued", "email", [])
    assert "30005" in sent_sms.error


def test_intermediate_statuses_change_nothing(client, sent_sms):
    callback(client, {"MessageSid": sent_sms.provider_id, "MessageStatus": "sent"})

    sent_sms.refresh_from_db()
    assert sent_sms.status == Status.SENT
