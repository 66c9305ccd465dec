"""Webhooks from the messaging providers. Each checks the provider's signature first and
changes nothing for a request that isn't signed (403). A signed request we cannot read is a
400, logged without its content; each event is applied once however often it comes.

And the one page patients open: a tracked link in a message, /r/<token>/ (campaigns.links)."""

import logging
import re
import uuid

from django.conf import settings
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    HttpResponseNotFound,
    HttpResponseRedirect,
)
from django.utils import timezone, translation
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

from patients.models import ClinicProfile
from reminders.channels import line, sms_twilio
from reminders.channels.base import InvalidSignature
from reminders.linking import reply_for
from reminders.models import TrackedLink
from reminders.receipts import message_delivery_report
from reminders.replies import ReplyOutcome, reply_handle

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
    """LINE's webhook: unfollow (the patient blocked us), follow, text replies, and the link
    code from the desk. Answers (a welcome, how to link) go by the event's reply token once
    the event is applied and committed; a replay gets none."""
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
        if event.inbound.reply_token and done in ANSWERED:
            text = reply_for(done, profile=ClinicProfile.load())
            if text:
                line.reply_text(event.inbound.reply_token, text)
    return HttpResponse(status=200)


# What the clinic answers on LINE itself (reminders.linking.reply_for has the words).
ANSWERED = {
    ReplyOutcome.LINKED,
    ReplyOutcome.WRONG_CODE,
    ReplyOutcome.LINK_RATE_LIMITED,
    ReplyOutcome.GREETED,
    ReplyOutcome.NOT_TEXT,
}


# Apps that fetch a link to draw its preview card (LINE's "line-poker" says facebookexternalhit,
# as do iMessage and WhatsApp) are not the patient clicking: they are sent on, not counted.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,32}")
PREVIEW_FETCHERS = ("facebookexternalhit", "facebot", "bot", "preview", "crawler", "spider")


@require_safe
def tracked_link_open(request: HttpRequest, token: str) -> HttpResponse:
    """A patient opened a message's link: count the click and send them on (302) to the
    address stored with the token, never one from the request. No login: the token is the
    only key, and it names no patient. An unknown token is a plain page in the clinic's
    language, not an error."""
    if not TOKEN_SHAPE.fullmatch(token):
        # Not one we make (secrets.token_urlsafe): no query, and no NUL byte for PostgreSQL.
        return _link_not_found()
    links = TrackedLink.objects.filter(token=token)
    url = links.values_list("url", flat=True).first()
    if url is None:
        return _link_not_found()
    agent = request.headers.get("User-Agent", "").lower()
    if request.method == "GET" and not any(word in agent for word in PREVIEW_FETCHERS):
        # One UPDATE: clicks at once from two phones both count.
        links.update(
            clicks=F("clicks") + 1,
            first_clicked_at=Coalesce("first_clicked_at", Value(timezone.now())),
        )
    response = HttpResponseRedirect(url)
    # Each click must reach us; the page it leads to needn't learn the token.
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    response["X-Robots-Tag"] = "noindex"
    return response


def _link_not_found() -> HttpResponse:
    # Patients open these links, not staff: the clinic's language, no menu, no way in.
    with translation.override("zh-hant"):
        page = format_html(
            '<!DOCTYPE html><html lang="zh-Hant"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="robots" content="noindex"><title>{title}</title></head>'
            '<body style="font-family: sans-serif; max-width: 32rem; margin: 3rem auto; '
            'padding: 0 1rem; line-height: 1.6"><h1>{title}</h1><p>{text}</p></body></html>',
            title=_("This link does not work"),
            text=_(
                "The link is mistyped or no longer in use. If you need help, please call the "
                "clinic."
            ),
        )
    return HttpResponseNotFound(page)
