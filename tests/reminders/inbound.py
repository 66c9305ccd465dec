"""Signed webhook calls from patients, as the providers sign them (Twilio's RequestValidator,
LINE's HMAC checked with the SDK's own SignatureValidator): shared by the inbox tests."""

import base64
import hashlib
import hmac
import json
import uuid

from django.urls import reverse
from django.utils import timezone
from linebot.v3.webhook import SignatureValidator
from twilio.request_validator import RequestValidator

TOKEN, SECRET = "test-auth-token", "test-line-secret"
BASE = "https://crm.clinic.example"


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
