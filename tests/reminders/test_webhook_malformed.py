"""Never a 500 from a webhook. A request without a good signature is a 403 before anything in
it is decoded; a signed one we cannot read is a 400, logged without the patient's data."""

import base64
import copy
import hashlib
import hmac
import json
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone
from twilio.request_validator import RequestValidator

from consent.models import Channel, Purpose
from consent.selectors import may_contact
from tests.factories import PatientFactory, grant

from .fake_providers import payload

pytestmark = pytest.mark.django_db
TOKEN, SECRET = "test-auth-token", "test-line-secret"
BASE = "https://crm.clinic.example"
LINE_ID = "U" + "5" * 32
PHONE = "+886912345678"


@pytest.fixture(autouse=True)
def provider_settings(settings):
    settings.TWILIO_AUTH_TOKEN = TOKEN
    settings.LINE_CHANNEL_SECRET = SECRET
    settings.PUBLIC_BASE_URL = BASE


@pytest.fixture
def patient():
    patient = PatientFactory(phone=PHONE, line_user_id=LINE_ID)
    for channel in (Channel.SMS, Channel.LINE):
        grant(patient, Purpose.CARE, channel)
    return patient


def line_sign(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def post_line(client, body: bytes, signature: str | None = None):
    headers = {} if signature is None else {"HTTP_X_LINE_SIGNATURE": signature}
    return client.post(reverse("line-webhook"), body, content_type="application/json", **headers)


def stop_on_line() -> dict:
    """LINE's sample text-message webhook body, sent just now by our patient."""
    body = payload("line_webhook_text")
    body["events"][0]["timestamp"] = int(timezone.now().timestamp() * 1000)
    return body


def encoded(body: object) -> bytes:
    return json.dumps(body).encode()


# --- LINE ---------------------------------------------------------------------------------------


def test_the_sample_body_is_acted_on(client, patient):
    # The base of the tests below is good: without a defect it opts the patient out.
    body = encoded(stop_on_line())

    response = post_line(client, body, line_sign(body))

    assert response.status_code == 200
    assert not may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)


@pytest.mark.parametrize("signature", [None, "", "forged", "\u00e9t\u00e9", line_sign(b"other")])
def test_unsigned_garbage_bytes_are_refused_before_anything_is_decoded(client, signature):
    response = post_line(client, b"\xff\xfe\x80 not utf-8 \xc3\x28", signature)

    assert response.status_code == 403


def test_a_good_body_with_a_bad_signature_is_refused_and_changes_nothing(client, patient):
    body = encoded(stop_on_line())

    response = post_line(client, body, line_sign(body, secret="not-ours"))

    assert response.status_code == 403
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)


def test_without_a_channel_secret_every_call_is_refused(client, settings):
    settings.LINE_CHANNEL_SECRET = ""
    body = encoded(stop_on_line())

    assert post_line(client, body, line_sign(body, secret="")).status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x80 not utf-8 \xc3\x28",  # undecodable
        b"{'events': []}",  # not JSON
        b"",
        b"[]",  # JSON, but not an object
        b'{"destination": "U0"}',  # no events
        b'{"events": {"type": "unfollow"}}',  # events not a list
        b'{"events": ["unfollow"]}',  # an event not an object
    ],
    ids=["undecodable", "not-json", "empty", "array", "no-events", "events-object", "event-str"],
)
def test_a_signed_body_that_is_not_lines_json_is_a_400(client, body):
    response = post_line(client, body, line_sign(body))

    assert response.status_code == 400


def _drop(event: dict, *path: str) -> None:
    for key in path[:-1]:
        event = event[key]
    del event[path[-1]]


@pytest.mark.parametrize(
    "change",
    [
        lambda e: _drop(e, "webhookEventId"),
        lambda e: e.update(webhookEventId=""),
        lambda e: e.update(webhookEventId="x" * 101),
        lambda e: e.update(webhookEventId=42),
        lambda e: _drop(e, "deliveryContext"),
        lambda e: _drop(e, "timestamp"),
        lambda e: e.update(timestamp="yesterday"),
        lambda e: e.update(timestamp=10**20),
        lambda e: _drop(e, "message", "text"),
        lambda e: e.update(source="U55555555555555555555555555555555"),
        lambda e: e.update(source={"type": "user", "userId": ["U5"]}),
    ],
    ids=[
        "no-event-id",
        "empty-event-id",
        "long-event-id",
        "numeric-event-id",
        "no-delivery-context",
        "no-timestamp",
        "text-timestamp",
        "timestamp-out-of-range",
        "no-text",
        "source-string",
        "user-id-list",
    ],
)
def test_a_signed_event_with_missing_or_wrong_fields_is_a_400_and_changes_nothing(
    client, patient, change
):
    body = stop_on_line()
    change(body["events"][0])
    raw = encoded(body)

    response = post_line(client, raw, line_sign(raw))

    assert response.status_code == 400
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.update(type="postback", postback={"data": "x"}),
        lambda e: e.update(type="an event type LINE adds next year"),
        lambda e: e.update(type=["message"]),
        lambda e: e.update(message={"type": "sticker", "id": "1", "packageId": "1"}),
        lambda e: e.update(message={"type": "a message type LINE adds next year"}),
        lambda e: e.update(source={"type": "group", "groupId": "C1", "userId": LINE_ID}),
    ],
    ids=["postback", "new-event-type", "type-list", "sticker", "new-message-type", "group"],
)
def test_a_signed_event_we_do_not_act_on_is_taken_and_changes_nothing(client, patient, change):
    body = stop_on_line()
    change(body["events"][0])
    raw = encoded(body)

    response = post_line(client, raw, line_sign(raw))

    assert response.status_code == 200
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)


def test_lines_empty_verification_call_is_taken(client):
    raw = encoded({"destination": "U" + "0" * 32, "events": []})

    assert post_line(client, raw, line_sign(raw)).status_code == 200


def test_a_refused_body_is_logged_without_the_patients_data(client, patient, caplog):
    body = stop_on_line()
    event = copy.deepcopy(body["events"][0])
    event["message"]["text"] = "王小明 0912345678"
    del event["deliveryContext"]
    body["events"].append(event)
    raw = encoded(body)

    with caplog.at_level("INFO"):
        response = post_line(client, raw, line_sign(raw))

    assert response.status_code == 400
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "event 1 (message)" in logged
    for secret in (LINE_ID, "王小明", "0912345678", "STOP"):
        assert secret not in logged
    # the whole call was refused: the good event beside the bad one did nothing either
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)


# --- Twilio -------------------------------------------------------------------------------------


def post_twilio(client, path: str, params: dict[str, str], signature: str | None = None):
    if signature is None:
        signature = RequestValidator(TOKEN).compute_signature(BASE + path, params)
    return client.post(path, params, HTTP_X_TWILIO_SIGNATURE=signature)


def status_path(message_uuid=None) -> str:
    return reverse("twilio-status", args=[message_uuid or uuid.uuid4()])


@pytest.mark.parametrize("name", ["twilio-status-by-sid", "twilio-sms"])
def test_unsigned_garbage_to_twilio_webhooks_is_a_403(client, name):
    response = client.post(
        reverse(name), b"\xff\xfe\x80garbage", content_type="application/octet-stream"
    )

    assert response.status_code == 403


def test_a_form_body_that_does_not_parse_is_a_400_not_a_500(client):
    response = client.post(
        reverse("twilio-sms"),
        b"--x\r\nContent-Disposition: form-data\r\n\r\n",
        content_type="multipart/form-data",  # no boundary: Django can't read the params
        HTTP_X_TWILIO_SIGNATURE="whatever",
    )

    assert response.status_code == 400


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"MessageStatus": "delivered"},
        {"MessageSid": "SM" + "a" * 32},
        {"MessageSid": "not a sid", "MessageStatus": "delivered"},
        {"MessageSid": "SM" + "a" * 32, "MessageStatus": "Delivered!"},
        {"MessageSid": "SM" + "a" * 32, "MessageStatus": "failed", "ErrorCode": "30003; DROP"},
    ],
    ids=["empty", "no-sid", "no-status", "bad-sid", "bad-status", "bad-error-code"],
)
def test_a_signed_status_callback_with_missing_or_malformed_fields_is_a_400(client, params):
    response = post_twilio(client, status_path(), params)

    assert response.status_code == 400


@pytest.mark.parametrize("name", ["twilio-status-by-sid", "twilio-sms"])
def test_a_signed_twilio_call_with_no_params_is_a_400(client, name):
    assert post_twilio(client, reverse(name), {}).status_code == 400


def test_a_status_callback_for_an_unknown_message_is_answered_not_a_500(client):
    params = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered"}

    assert post_twilio(client, status_path(uuid.uuid4()), params).status_code == 204


def test_a_status_callback_url_that_is_not_a_uuid_is_a_404(client):
    path = reverse("twilio-status-by-sid") + "not-a-uuid/"

    assert post_twilio(client, path, {"MessageSid": "SM" + "a" * 32}).status_code == 404


@pytest.mark.parametrize(
    "params",
    [
        {"Body": "STOP", "MessageSid": "SM" + "1" * 32},
        {"From": PHONE, "Body": "STOP"},
        {"From": PHONE, "Body": "STOP", "MessageSid": "SM-1"},
        {"From": "+" + "9" * 80, "Body": "STOP", "MessageSid": "SM" + "1" * 32},
    ],
    ids=["no-from", "no-sid", "bad-sid", "long-from"],
)
def test_a_signed_incoming_sms_with_missing_or_malformed_fields_is_a_400_and_changes_nothing(
    client, patient, params, caplog
):
    with caplog.at_level("INFO"):
        response = post_twilio(client, reverse("twilio-sms"), params)

    assert response.status_code == 400
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "912345678" not in logged and "STOP" not in logged
