"""Webhooks from the messaging providers. Each checks the provider's signature first and
changes nothing for a request that isn't signed (403). A signed request we cannot read is a
400, logged without its content; each event is applied once however often it comes."""

import logging
import uuid

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from reminders.channels import line, sms_twilio
from reminders.channels.base import InvalidSignature
from reminders.receipts import message_delivery_report
from reminders.replies import reply_handle

log = logging.getLogger(__name__)
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _twilio_params(request: HttpRequest) -> dict[str, str]:
    # Twilio signs the exact URL it called, which is the public one, not what the proxy passed.
    url = f"{settings.PUBLIC_BASE_URL}{request.path}"
    return sms_twilio.verified_params(
        url, request.POST.dict(), request.headers.get("X-Twilio-Signature", "")
    )


@csrf_exempt  # providers can't send our CSRF token; the signature check stands in for it
@require_POST
def twilio_status(request: HttpRequest, message_uuid: uuid.UUID | None = None) -> HttpResponse:
    """Twilio's status callback for an SMS we sent (delivered, undelivered, failed). The URL
    names our message; without it (SMS sent before it did) the MessageSid finds it."""
    try:
        params = _twilio_params(request)
    except InvalidSignature:
        log.warning("twilio status callback with a bad signature")
        return HttpResponseForbidden("bad signature")
    try:
        report = sms_twilio.status_report(params)
    except ValueError as exc:
        log.warning("twilio status callback for message %s refused: %s", message_uuid, exc)
        return HttpResponseBadRequest("malformed status callback")
    outcome = message_delivery_report(
        message_uuid=message_uuid,
        provider_id=report.sid,
        provider_status=report.status,
        error_code=report.error_code,
        now=timezone.now(),
    )
    log.info(
        "twilio status %s for %s (message %s): %s", report.status, report.sid, message_uuid, outcome
    )
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def twilio_sms(request: HttpRequest) -> HttpResponse:
    """An SMS a patient sent to our number: STOP, or 1 / 2 to a confirmation request."""
    try:
        params = _twilio_params(request)
    except InvalidSignature:
        log.warning("twilio incoming sms with a bad signature")
        return HttpResponseForbidden("bad signature")
    try:
        sms = sms_twilio.inbound_sms(params)
    except ValueError as exc:
        log.warning("twilio incoming sms refused: %s", exc)
        return HttpResponseBadRequest("malformed incoming sms")
    done = reply_handle(inbound=sms.inbound, event_id=sms.sid)
    log.info("incoming sms %s: %s", sms.sid, done)
    # An empty TwiML answer: no automatic reply text.
    return HttpResponse(EMPTY_TWIML, content_type="text/xml")


@csrf_exempt
@require_POST
def line_webhook(request: HttpRequest) -> HttpResponse:
    """LINE's webhook: unfollow (the patient blocked us), and text replies."""
    try:
        events = line.inbound_events(request.body, request.headers.get("X-Line-Signature", ""))
    except InvalidSignature:
        log.warning("line webhook with a bad signature")
        return HttpResponseForbidden("bad signature")
    except ValueError as exc:
        log.warning("line webhook refused: %s", exc)
        return HttpResponseBadRequest("malformed webhook body")
    for event in events:
        done = reply_handle(
            inbound=event.inbound, event_id=event.event_id, occurred_at=event.occurred_at
        )
        redelivered = " (redelivered)" if event.redelivered else ""
        log.info("line %s %s%s: %s", event.inbound.kind, event.event_id, redelivered, done)
    return HttpResponse(status=200)
