"""LINE push messages through the official line-bot-sdk (v3, `linebot.v3.messaging`)."""

import base64
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3
from django.conf import settings

# line-bot-sdk ships no type information (no py.typed, no stubs): its names are Any to mypy, and
# what we take from them is given a type where it enters our code (ids, status, headers).
from linebot.v3.messaging import (  # type: ignore[import-untyped]
    ApiClient,
    ApiException,
    Configuration,
    FlexBox,
    FlexBubble,
    FlexButton,
    FlexMessage,
    FlexText,
    MessagingApi,
    PostbackAction,
    PushMessageRequest,
    QuickReply,
    QuickReplyItem,
    ReplyMessageRequest,
    TextMessage,
)
from linebot.v3.webhooks import (  # type: ignore[import-untyped]
    Event,
    FollowEvent,
    MessageEvent,
    PostbackEvent,
    UnfollowEvent,
    UserSource,
)

from campaigns.templating import LINE_MAX_TEXT_UNITS
from reminders.answers import (
    CONFIRMATION_ANSWERS,
    MAX_DATA_CHARS,
    POSTOP_ANSWERS,
    RATING_ANSWERS,
    Answer,
    label,
    postback_data,
)

from .base import Channel, ChannelError, Inbound, InvalidSignature, OutgoingMessage

logger = logging.getLogger(__name__)

# LINE's text message limit, kept with the other channels' limits in campaigns.templating (the
# planner refuses a longer text). A reminder that long is a template bug, so it fails rather
# than reaching the patient cut in half.
MAX_TEXT_UNITS = LINE_MAX_TEXT_UNITS

# webhookEventId is a 26-character ULID; the dedupe table keeps up to 100.
MAX_EVENT_ID_CHARS = 100


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
        request = PushMessageRequest(to=message.to, messages=[line_message(message)])
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
            message_id: str = sent[0].id
            return message_id
        request_id: str = (response.headers or {}).get("x-line-request-id", "")
        return request_id


# The rule kinds whose LINE messages carry tap answers, and how (campaigns.models.RuleKind
# values; a confirmation request is an appointment rule that asks to confirm). The SMS and
# e-mail texts of the same messages keep their reply codes.
QUICK_REPLIES: dict[str, tuple[Answer, ...]] = {
    "postop": POSTOP_ANSWERS,
    "visit_survey": RATING_ANSWERS,
}
# LINE shows altText in notifications and chat lists, up to 1,500 characters for Flex.
MAX_ALT_TEXT_CHARS = 1500


def answers_for(message: OutgoingMessage) -> tuple[tuple[Answer, ...], bool]:
    """The answers `message` offers on LINE, and whether as buttons under the text (a Flex
    bubble) rather than quick replies; no answers for a message that asks nothing."""
    if message.rule_kind == "appointment" and message.asks_confirmation:
        return CONFIRMATION_ANSWERS, True
    return QUICK_REPLIES.get(message.rule_kind, ()), False


def _action(answer: Answer, message: OutgoingMessage) -> Any:
    text = label(answer, message.language)
    return PostbackAction(label=text, data=postback_data(answer, message.id), display_text=text)


def line_message(message: OutgoingMessage) -> Any:
    """The SDK message for `message`: its text, with the buttons or quick replies its rule kind
    offers (answers_for). A button's postback names the answer and the message's UUID only."""
    answers, as_buttons = answers_for(message)
    if not answers:
        return TextMessage(text=message.body)
    if not as_buttons:
        items = [QuickReplyItem(action=_action(answer, message)) for answer in answers]
        return TextMessage(text=message.body, quick_reply=QuickReply(items=items))
    # A buttons template would cut the text at 160 characters; a Flex bubble shows it whole.
    buttons = [
        FlexButton(
            action=_action(answer, message),
            style="primary" if index == 0 else "secondary",
            height="sm",
        )
        for index, answer in enumerate(answers)
    ]
    return FlexMessage(
        alt_text=message.body[:MAX_ALT_TEXT_CHARS],
        contents=FlexBubble(
            body=FlexBox(layout="vertical", contents=[FlexText(text=message.body, wrap=True)]),
            footer=FlexBox(layout="vertical", spacing="sm", contents=buttons),
        ),
    )


def reply_text(reply_token: str, text: str) -> bool:
    """Answer a webhook event with one text message through its replyToken (free, and not
    counted against the monthly allowance); returns whether LINE took it. Never raises: a lost
    answer must not undo what the event did. A reply token works once, within a minute, so
    there is no retry."""
    if not reply_token:
        return False
    if not settings.LINE_CHANNEL_ACCESS_TOKEN:
        # Development without a LINE account: say so, and pretend nothing.
        logger.info("line reply not sent: LINE_CHANNEL_ACCESS_TOKEN is not set")
        return False
    configuration = Configuration(
        host=settings.LINE_API_BASE_URL.rstrip("/") or None,
        access_token=settings.LINE_CHANNEL_ACCESS_TOKEN,
    )
    configuration.retries = 0
    request = ReplyMessageRequest(reply_token=reply_token, messages=[TextMessage(text=text)])
    try:
        with ApiClient(configuration) as api_client:
            MessagingApi(api_client).reply_message_with_http_info(
                request, _request_timeout=LineChannel.timeout_seconds
            )
    except ApiException as exc:
        # 400 "Invalid reply token": used already, or older than a minute.
        logger.warning("line reply refused: HTTP %s", exc.status)
        return False
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        logger.warning("line reply not delivered: %s", type(exc).__name__)
        return False
    return True


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


def _body(exc: ApiException) -> dict[str, Any]:  # LINE's JSON error body
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class LineEvent:
    """One webhook event we act on: LINE's id for it, when it happened, and what it means."""

    event_id: str  # webhookEventId: the same on every redelivery of the event
    redelivered: bool  # deliveryContext.isRedelivery: an earlier delivery may have been applied
    occurred_at: datetime
    inbound: Inbound


def signature_ok(body: bytes, signature: str, secret: str) -> bool:
    """Whether `signature` (X-Line-Signature) is LINE's HMAC-SHA256 of the raw `body` with our
    channel secret. On bytes, before anything is decoded: the SDK's SignatureValidator takes
    text, and decoding an unsigned body first lets anyone reach our decoder."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return hmac.compare_digest(base64.b64encode(digest), signature.encode("utf-8", "replace"))


def inbound_events(body: bytes, signature: str) -> list[LineEvent]:
    """The events of a LINE webhook call that we act on. Raises InvalidSignature unless LINE
    signed `body` with our channel secret, and ValueError (naming no user data) when a signed
    body is not the JSON LINE documents."""
    secret = settings.LINE_CHANNEL_SECRET
    if not secret:
        raise InvalidSignature("LINE_CHANNEL_SECRET is not set")
    if not signature_ok(body, signature, secret):
        raise InvalidSignature("X-Line-Signature does not match")
    try:
        payload = json.loads(body.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError("body is not UTF-8 JSON") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        raise ValueError("body has no list of events")
    found = []
    for index, raw in enumerate(payload["events"]):
        event = _event(index, raw)
        if event is not None:
            found.append(event)
    return found


# Messages that are not words (a sticker, a photo, a file, …): answered with "please write".
NOT_TEXT = ("sticker", "image", "video", "audio", "file", "location")
# The event types we act on; the SDK checks their fields against LINE's schema.
_KINDS: dict[str, type[Event]] = {
    "unfollow": UnfollowEvent,
    "follow": FollowEvent,
    "message": MessageEvent,
    "postback": PostbackEvent,
}


def _event(index: int, raw: object) -> LineEvent | None:
    if not isinstance(raw, dict):
        raise ValueError(f"event {index} is not an object")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in _KINDS:
        return None  # a type we don't act on (join, and types LINE adds later)
    content = raw.get("message")
    content_type = content.get("type") if isinstance(content, dict) else None
    if kind == "message" and content_type not in ("text", *NOT_TEXT):
        return None  # a message type newer than this SDK
    try:
        event = _KINDS[kind].from_dict(raw)
        occurred_at = datetime.fromtimestamp(event.timestamp / 1000, tz=UTC)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, OSError) as exc:
        if content_type in NOT_TEXT:
            # Nothing of a sticker or photo is read: passed over, not the whole batch refused
            # (its other events may be a STOP).
            return None
        # The SDK's message quotes the whole event (user id, text): never log it.
        raise ValueError(f"event {index} ({kind}) does not match LINE's schema") from exc
    event_id = event.webhook_event_id
    if not event_id or len(event_id) > MAX_EVENT_ID_CHARS:
        raise ValueError(f"event {index} has no usable webhookEventId")
    # Only one-to-one chats: in a group or room a message's userId is one member among many.
    user_id = event.source.user_id if isinstance(event.source, UserSource) else None
    if not user_id:
        return None
    # Follow and message events carry a replyToken; an unfollow can't be answered.
    reply_token = str(getattr(event, "reply_token", None) or "")
    if isinstance(event, UnfollowEvent):
        inbound = Inbound(channel="line", kind="unfollow", sender=user_id)
    elif isinstance(event, FollowEvent):
        inbound = Inbound(channel="line", kind="follow", sender=user_id, reply_token=reply_token)
    elif content_type in NOT_TEXT:
        # Nothing of it is kept or read: the patient is asked to write in words.
        inbound = Inbound(channel="line", kind="not_text", sender=user_id, reply_token=reply_token)
    elif isinstance(event, PostbackEvent):
        data = event.postback.data if isinstance(event.postback.data, str) else ""
        inbound = Inbound(
            channel="line",
            kind="postback",
            sender=user_id,
            # Longer than any data we put on a button: not ours, and not worth reading.
            postback=data if len(data) <= MAX_DATA_CHARS else "",
            reply_token=reply_token,
        )
    else:
        inbound = Inbound(
            channel="line",
            kind="text",
            sender=user_id,
            text=event.message.text,
            reply_token=reply_token,
        )
    return LineEvent(
        event_id=event_id,
        redelivered=bool(event.delivery_context.is_redelivery),
        occurred_at=occurred_at,
        inbound=inbound,
    )
