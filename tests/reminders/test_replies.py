"""Patients answer: STOP by SMS, a LINE block, and 1 / 2 to a confirmation request. Each goes
through the real signed webhook, with the provider's own signature scheme."""

import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone
from twilio.request_validator import RequestValidator

from campaigns.models import Rule
from consent.models import Channel, ConsentEntry, Purpose
from consent.selectors import may_contact
from patients.models import Appointment
from reminders.models import OutboxMessage, StaffTask, Status
from tests.factories import AppointmentFactory, PatientFactory, grant

pytestmark = pytest.mark.django_db
TOKEN, SECRET = "test-auth-token", "test-line-secret"
BASE = "https://crm.clinic.example"
LINE_ID = "U" + "5" * 32


@pytest.fixture(autouse=True)
def provider_settings(settings):
    settings.TWILIO_AUTH_TOKEN = TOKEN
    settings.LINE_CHANNEL_SECRET = SECRET
    settings.PUBLIC_BASE_URL = BASE


@pytest.fixture
def patient():
    patient = PatientFactory(phone="+886912345678", line_user_id=LINE_ID)
    for channel in (Channel.SMS, Channel.LINE):
        grant(patient, Purpose.CARE, channel)
        grant(patient, Purpose.RELATIONSHIP, channel)
    return patient


def sms_from(client, sender, body, *, signature=None, sid=None):
    """Twilio's incoming-SMS webhook call; each SMS has its own MessageSid unless `sid` says."""
    sid = sid or "SM" + uuid.uuid4().hex
    params = {"From": sender, "To": "+15017122661", "Body": body, "MessageSid": sid}
    url = BASE + reverse("twilio-sms")
    signature = signature or RequestValidator(TOKEN).compute_signature(url, params)
    return client.post(reverse("twilio-sms"), params, HTTP_X_TWILIO_SIGNATURE=signature)


def line_events(client, *events, secret=SECRET):
    body = json.dumps({"destination": "U" + "0" * 32, "events": list(events)})
    digest = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    return client.post(
        reverse("line-webhook"),
        body,
        content_type="application/json",
        HTTP_X_LINE_SIGNATURE=base64.b64encode(digest).decode(),
    )


def line_event(kind, user_id=LINE_ID, **extra):
    """A LINE webhook event that just happened, with its own webhookEventId."""
    return {
        "type": kind,
        "mode": "active",
        "timestamp": int(timezone.now().timestamp() * 1000),
        "source": {"type": "user", "userId": user_id},
        "webhookEventId": "01H" + uuid.uuid4().hex[:23].upper(),
        "deliveryContext": {"isRedelivery": False},
        **extra,
    }


def line_text(text):
    return line_event(
        "message",
        replyToken="0f3779fba3b349968c5d07db31eab56f",
        message={"type": "text", "id": "444573844083572737", "quoteToken": "q", "text": text},
    )


@pytest.mark.parametrize("word", ["STOP", "stop", "取消", "退訂"])
def test_stop_reply_withdraws_sms_consent_at_once(client, patient, word):
    response = sms_from(client, "+886912345678", word)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/xml"
    for purpose in Purpose:
        assert not may_contact(patient=patient, purpose=purpose, channel=Channel.SMS)
        assert may_contact(patient=patient, purpose=purpose, channel=Channel.LINE)
    assert ConsentEntry.objects.filter(patient=patient, source="sms_keyword").count() == 2


def test_stop_from_a_shared_family_phone_stops_texts_to_everyone_on_it(client, patient):
    relative = PatientFactory(phone="+886912345678")
    grant(relative, Purpose.CARE, Channel.SMS)

    sms_from(client, "+886912345678", "STOP")

    assert not may_contact(patient=relative, purpose=Purpose.CARE, channel=Channel.SMS)


def test_forged_sms_is_refused_and_changes_nothing(client, patient):
    response = sms_from(client, "+886912345678", "STOP", signature="forged")

    assert response.status_code == 403
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)


def test_blocking_us_on_line_withdraws_line_consent(client, patient):
    response = line_events(client, line_event("unfollow"))

    assert response.status_code == 200
    assert not may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)
    assert ConsentEntry.objects.filter(patient=patient, source="line_follow").count() == 2


def test_forged_line_webhook_is_refused(client, patient):
    response = line_events(client, line_event("unfollow"), secret="not-ours")

    assert response.status_code == 403
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)


@pytest.fixture
def confirmation_sent(patient):
    """A confirmation request for tomorrow's visit, sent by SMS an hour ago."""
    appointment = AppointmentFactory(patient=patient, starts_at=timezone.now() + dt.timedelta(1))
    now = timezone.now()
    return OutboxMessage.objects.create(
        rule=Rule.objects.get(name__startswith="回診確認"),
        patient=patient,
        appointment=appointment,
        anchor_at=appointment.starts_at,
        occurrence_key="appointment:x",
        purpose="care",
        channel="sms",
        status=Status.SENT,
        sent_at=now - dt.timedelta(hours=1),
        due_at=now,
        next_attempt_at=now,
        expires_at=appointment.starts_at,
        body="請回覆 1 確認、2 更改時間",
    )


@pytest.mark.parametrize("answer", ["1", "１", " 1 "])
def test_reply_1_confirms_the_appointment(client, confirmation_sent, answer):
    sms_from(client, "+886912345678", answer)

    confirmation_sent.appointment.refresh_from_db()
    assert confirmation_sent.appointment.status == Appointment.Status.CONFIRMED


def test_reply_2_asks_staff_to_call_about_a_new_time(client, confirmation_sent):
    sms_from(client, "+886912345678", "2")
    sms_from(client, "+886912345678", "2")  # said twice: still one call to make

    task = StaffTask.objects.get(kind=StaffTask.Kind.RESCHEDULE)
    assert task.message == confirmation_sent
    confirmation_sent.appointment.refresh_from_db()
    assert confirmation_sent.appointment.status == Appointment.Status.BOOKED


def test_a_1_with_no_request_to_answer_changes_nothing(client, patient):
    appointment = AppointmentFactory(patient=patient)

    sms_from(client, "+886912345678", "1")

    appointment.refresh_from_db()
    assert appointment.status == Appointment.Status.BOOKED


def test_reply_on_line_answers_a_request_sent_on_line(client, confirmation_sent):
    OutboxMessage.objects.filter(pk=confirmation_sent.pk).update(channel="line")

    line_events(client, line_text("1"))

    confirmation_sent.appointment.refresh_from_db()
    assert confirmation_sent.appointment.status == Appointment.Status.CONFIRMED


def test_a_number_we_do_not_know_changes_nothing(client, patient):
    response = sms_from(client, "+886987000000", "STOP")

    assert response.status_code == 200
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)
