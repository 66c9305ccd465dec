"""Webhooks from the messaging providers. Each checks the provider's signature first and
changes nothing for a request that isn't signed."""

import logging

from django.conf import settings
from django.http import HttpResponse, HttpResponseForbidden
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from reminders.channels import line, sms_twilio
from reminders.channels.base import InvalidSignature
from reminders.replies import reply_handle
from reminders.services import message_delivery_report

log = logging.getLogger(__name__)
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _twilio_params(request) -> dict[str, str]:
    # Twilio signs the exact URL it called, which is the public one, not what the proxy passed.
    url = f"{settings.PUBLIC_BASE_URL}{request.path}"
    return sms_twilio.verified_params(
        url, request.POST.dict(), request.headers.get("X-Twilio-Signature", "")
    )


@csrf_exempt  # providers can't send our CSRF token; the signature check stands in for it
@require_POST
def twilio_status(request):
    """Twilio's status callback for an SMS we sent (delivered, undelivered, failed)."""
    try:
        params = _twilio_params(request)
    except InvalidSignature:
        log.warning("twilio status callback with a bad signature")
        return HttpResponseForbidden("bad signature")
    message_delivery_report(
        provider_id=params.get("MessageSid", ""),
        provider_status=params.get("MessageStatus", ""),
        error_code=params.get("ErrorCode", ""),
    )
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def twilio_sms(request):
    """An SMS a patient sent to our number: STOP, or 1 / 2 to a confirmation request."""
    try:
        params = _twilio_params(request)
    except InvalidSignature:
        log.warning("twilio incoming sms with a bad signature")
        return HttpResponseForbidden("bad signature")
    done = reply_handle(inbound=sms_twilio.inbound_sms(params))
    log.info("incoming sms: %s", done)
    # An empty TwiML answer: no automatic reply text.
    return HttpResponse(EMPTY_TWIML, content_type="text/xml")


@csrf_exempt
@require_POST
def line_webhook(request):
    """LINE's webhook: unfollow (the patient blocked us), and text replies."""
    try:
        events = line.inbound_events(
            request.body.decode(), request.headers.get("X-Line-Signature", "")
        )
    except InvalidSignature:
        log.warning("line webhook with a bad signature")
        return HttpResponseForbidden("bad signature")
    for inbound in events:
        log.info("line %s: %s", inbound.kind, reply_handle(inbound=inbound))
    return HttpResponse(status=200)
