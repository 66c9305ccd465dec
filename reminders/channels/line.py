"""LINE push messages through the official line-bot-sdk (v3, `linebot.v3.messaging`)."""

import json
import logging

import urllib3
from django.conf import settings
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.messaging import (
    ApiClient,
    ApiException,
    Configuration,
    MessagingApi,
    PushMessageRequest,
    TextMessage,
)
from linebot.v3.webhook import WebhookParser
from linebot.v3.webhooks import (
    FollowEvent,
    MessageEvent,
    TextMessageContent,
    UnfollowEvent,
)

from .base import Channel, ChannelError, Inbound, InvalidSignature, OutgoingMessage

logger = logging.getLogger(__name__)

# LINE's text message limit. Counted in UTF-16 code units, which is never more lenient than
# LINE's own count (an emoji outside the BMP counts as two here). A reminder that long is a
# template bug, so it fails rather than reaching the patient cut in half.
MAX_TEXT_UNITS = 5000


class LineChannel(Channel):
    """Pushes a text message to a LINE user id; returns LINE's sent message id. Raises
    ChannelError.

    Every push carries X-Line-Retry-Key = message.id, so LINE accepts a message once however
    often it is sent: a timeout or 5xx is safe to retry and a 409 means "already sent". LINE
    remembers a retry key for 24 hours only, so the outbox must stop retrying a LINE message a
    day after its first attempt (or send it on another channel).
    """

    name = "line"
    timeout_seconds = (5.0, 15.0)  # connect, read

    def send(self, message: OutgoingMessage) -> str:
        if len(message.body.encode("utf-16-le")) // 2 > MAX_TEXT_UNITS:
            raise ChannelError(f"LINE text over {MAX_TEXT_UNITS} characters", permanent=True)

        configuration = Configuration(
            # None means the SDK's own https://api.line.me.
            host=settings.LINE_API_BASE_URL.rstrip("/") or None,
            access_token=settings.LINE_CHANNEL_ACCESS_TOKEN,
        )
        # urllib3 would otherwise retry a failed connection three times inside this call; the
        # outbox owns retries and their backoff.
        configuration.retries = 0
        request = PushMessageRequest(to=message.to, messages=[TextMessage(text=message.body)])
        try:
            with ApiClient(configuration) as api_client:
                response = MessagingApi(api_client).push_message_with_http_info(
                    request,
                    x_line_retry_key=str(message.id),
                    _request_timeout=self.timeout_seconds,
                )
        except ApiException as exc:
            if exc.status == 409:
                return _already_accepted(exc, message)
            raise _api_error(exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # Refused, DNS, timeouts, dropped connections: all safe to resend with the key.
            raise ChannelError(f"LINE unreachable: {type(exc).__name__}", permanent=False) from exc

        sent = response.data.sent_messages if response.data else None
        if sent:
            return sent[0].id
        return (response.headers or {}).get("x-line-request-id", "")


def _already_accepted(exc: ApiException, message: OutgoingMessage) -> str:
    # A 409 answers a reused retry key: an earlier attempt (whose answer we lost) went through.
    # LINE puts the original sentMessages in the error body and the original request's id in
    # x-line-accepted-request-id; prefer the message id so the provider id looks the same
    # whichever attempt got the answer.
    logger.info("line retry key already accepted message=%s", message.id)
    sent = _body(exc).get("sentMessages") or []
    if sent and isinstance(sent[0], dict) and sent[0].get("id"):
        return str(sent[0]["id"])
    headers = exc.headers or {}
    return headers.get("x-line-accepted-request-id") or headers.get("x-line-request-id") or ""


def _api_error(exc: ApiException) -> ChannelError:
    status = exc.status or 0
    text = f"LINE HTTP {status}: {_body(exc).get('message', exc.reason)}"
    if status == 429:
        # The same status means two things. A rate limit clears in seconds; the free message
        # quota ("You have reached your monthly limit.") only clears next month, so that one
        # is permanent and the outbox falls through to the next channel.
        if "monthly limit" in text.lower():
            return ChannelError(text, permanent=True)
        headers = exc.headers or {}
        return ChannelError(text, permanent=False, retry_after=_seconds(headers.get("Retry-After")))
    if status == 0 or status >= 500:  # status 0: the SDK's wrapper for a TLS failure
        return ChannelError(text, permanent=False)
    # 400: invalid user id or request; 401: bad channel access token; 403: the plan may not
    # use this API; 404: no such user. Note that a user who blocked the account still gets a
    # 200 from push; the block arrives as an "unfollow" webhook event.
    return ChannelError(text, permanent=True)


def _body(exc: ApiException) -> dict:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _seconds(value) -> float | None:
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return None


def inbound_events(body: str, signature: str) -> list[Inbound]:
    """The events of a LINE webhook call that we act on; raises InvalidSignature unless LINE
    signed `body` with our channel secret (X-Line-Signature)."""
    secret = settings.LINE_CHANNEL_SECRET
    if not secret:
        raise InvalidSignature("LINE_CHANNEL_SECRET is not set")
    try:
        events = WebhookParser(secret).parse(body, signature)
    except InvalidSignatureError as exc:
        raise InvalidSignature("X-Line-Signature does not match") from exc
    found = []
    for event in events:
        user_id = getattr(getattr(event, "source", None), "user_id", None)
        if not user_id:  # group and room events carry no one patient
            continue
        if isinstance(event, UnfollowEvent):
            found.append(Inbound(channel="line", kind="unfollow", sender=user_id))
        elif isinstance(event, FollowEvent):
            found.append(Inbound(channel="line", kind="follow", sender=user_id))
        elif isinstance(event, MessageEvent) and isinstance(event.message, TextMessageContent):
            found.append(
                Inbound(channel="line", kind="text", sender=user_id, text=event.message.text)
            )
    return found
