"""Signed webhook calls from patients, as the providers sign them (Twilio's RequestValidator,
LINE's HMAC checked with the SDK's own SignatureValidator), and the clock, settings and patient
the inbox, button, staff-message and survey tests share."""

import base64
import hashlib
import hmac
import json
import uuid

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone
from linebot.v3.webhook import SignatureValidator
from twilio.request_validator import RequestValidator

from consent.models import Channel
from tests.factories import PatientFactory, grant
from tests.helpers import taipei

TOKEN, SECRET = "test-auth-token", "test-line-secret"
BASE = "https://crm.clinic.example"
NOW = taipei(2026, 3, 10, 10, 0)  # a Tuesday morning, inside the send window
PHONE = "+886912345678"
LINE_ID = "U" + "5" * 32


def frozen_at(moment):
    """A module's autouse fixture: the providers' settings, the clinic, the clock at `moment`:
    `frozen = frozen_at(NOW)`."""

    @pytest.fixture(autouse=True)
    def frozen(settings, clinic):
        provider_settings(settings)
        with time_machine.travel(moment, tick=False):
            yield

    return frozen


def patient_on_sms_and_line(purpose=None):
    """A patient with PHONE and LINE_ID; with `purpose`, who consented to it on both."""
    patient = PatientFactory(phone=PHONE, line_user_id=LINE_ID)
    if purpose is not None:
        for channel in (Channel.SMS, Channel.LINE):
            grant(patient, purpose, channel)
    return patient


def provider_settings(settings):
    settings.TWILIO_AUTH_TOKEN = TOKEN
    settings.LINE_CHANNEL_SECRET = SECRET
    settings.PUBLIC_BASE_URL = BASE


def sms_from(client, sender, body, *, sid=None):
    """Twilio's incoming-SMS webhook call; each SMS has its own MessageSid unless `sid` says."""
    params = {
        "From": sender,
        "To": "+15017122661",
        "Body": body,
        "MessageSid": sid or "SM" + uuid.uuid4().hex,
    }
    signature = RequestValidator(TOKEN).compute_signature(BASE + reverse("twilio-sms"), params)
    return client.post(reverse("twilio-sms"), params, HTTP_X_TWILIO_SIGNATURE=signature)


def line_post(client, *events):
    body = json.dumps({"destination": "U" + "0" * 32, "events": list(events)})
    signature = base64.b64encode(
        hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest()
    ).decode()
    assert SignatureValidator(SECRET).validate(body, signature)
    return client.post(
        reverse("line-webhook"),
        body,
        content_type="application/json",
        HTTP_X_LINE_SIGNATURE=signature,
    )


def line_event(kind, user_id, **extra):
    return {
        "type": kind,
        "mode": "active",
        "timestamp": int(timezone.now().timestamp() * 1000),
        "source": {"type": "user", "userId": user_id},
        "webhookEventId": "01H" + uuid.uuid4().hex[:23].upper(),
        "deliveryContext": {"isRedelivery": False},
        **extra,
    }


def line_text(user_id, text):
    return line_event(
        "message",
        user_id,
        replyToken=uuid.uuid4().hex,
        message={"type": "text", "id": "444573844083572737", "quoteToken": "q", "text": text},
    )
