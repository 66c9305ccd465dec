"""Webhooks from the messaging providers. Each checks the provider's signature first."""

import logging

from django.conf import settings
from django.http import HttpResponse, HttpResponseForbidden
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from twilio.request_validator import RequestValidator

from reminders.services import message_delivery_report

log = logging.getLogger(__name__)


@csrf_exempt  # Twilio can't send our CSRF token; the signature check stands in for it
@require_POST
def twilio_status(request):
    """Twilio's status callback for an SMS we sent (delivered, undelivered, failed)."""
    # Twilio signs the exact URL it called, which is the public one, not what the proxy passed.
    url = f"{settings.PUBLIC_BASE_URL}{request.path}"
    signature = request.headers.get("X-Twilio-Signature", "")
    params = request.POST.dict()
    if not settings.TWILIO_AUTH_TOKEN or not RequestValidator(settings.TWILIO_AUTH_TOKEN).validate(
        url, params, signature
    ):
        log.warning("twilio status callback with a bad signature")
        return HttpResponseForbidden("bad signature")
    message_delivery_report(
        provider_id=params.get("MessageSid", ""),
        provider_status=params.get("MessageStatus", ""),
        error_code=params.get("ErrorCode", ""),
    )
    return HttpResponse(status=204)
