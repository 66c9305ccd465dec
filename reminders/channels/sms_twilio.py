"""SMS through Twilio's Programmable Messaging API, with the official `twilio` SDK."""

import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings
from django.urls import reverse

# twilio ships no type information (no py.typed, no stubs): its names are Any to mypy, and what
# we take from them is given a type where it enters our code (the SID, the error's fields).
from twilio.base import values  # type: ignore[import-untyped]
from twilio.base.exceptions import TwilioRestException  # type: ignore[import-untyped]
from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped]
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]
from urllib3.exceptions import NewConnectionError

from .base import (
    Channel,
    ChannelError,
    Inbound,
    InvalidSignature,
    OutcomeUnknown,
    OutgoingMessage,
)

logger = logging.getLogger(__name__)

# Twilio rejects a body over 1,600 characters (error 21617); failing here saves a request.
MAX_BODY_CHARS = 1600

# Twilio's 4xx answers on create are final for this message, for example 21211 (invalid 'To'),
# 21408 (the account may not send to this region), 21610 (the recipient replied STOP; refused
# until they reply START), 21612 (no route from this 'From' to this 'To'), 21614 ('To' is not a
# mobile number), 21617 (body too long). The exceptions are these:
TRANSIENT_ERROR_CODES = {
    20429,  # too many requests
    21611,  # this 'From' has too many queued messages: a 400 that clears by itself
}

# Carrier errors are not raised here: they arrive later in the status callback (MessageStatus
# "undelivered"/"failed" with ErrorCode). The webhook handler can use this set to decide that a
# number is dead rather than the network busy.
PERMANENT_DELIVERY_ERROR_CODES = {
    30003,  # unreachable handset
    30004,  # message blocked (the recipient or the carrier)
    30005,  # unknown destination handset
    30006,  # landline or unreachable carrier
    30007,  # carrier filtered it as spam
    30008,  # Twilio's catch-all; final so a patient is not texted again and again
}


class _LeavingSession(requests.Session):
    # Notes the moment a request is handed to the network: an error raised before that (a
    # credential that can't be encoded, a malformed URL) means Twilio has nothing.
    left = False

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.left = True
        return super().send(request, **kwargs)


# The SDK's client is Any to mypy (see the imports), so subclassing it is subclassing Any.
class _RecordingHttpClient(TwilioHttpClient):  # type: ignore[misc]
    # TwilioRestException carries no response headers, so the Retry-After of a 429 would be
    # lost. One client per send keeps this free of races between threads.
    last_response: object = None  # twilio.http.response.Response; read for its headers

    def __init__(self, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.session = _LeavingSession()

    @property
    def left(self) -> bool:
        return bool(self.session and self.session.left)

    # The SDK calls it as request(method, url, params=..., data=..., headers=..., auth=..., ...).
    def request(self, *args: Any, **kwargs: Any) -> object:
        self.last_response = super().request(*args, **kwargs)
        return self.last_response


class TwilioSMSChannel(Channel):
    """Sends an SMS; returns the Message SID. Raises ChannelError, or OutcomeUnknown when the
    request may have reached Twilio but no answer came back (Twilio has no idempotency key)."""

    name = "sms"
    # One number for connect and read: twilio's HttpClient rejects a (connect, read) tuple.
    timeout_seconds = 15.0

    def send(self, message: OutgoingMessage) -> str:
        if len(message.body) > MAX_BODY_CHARS:
            raise ChannelError(f"SMS body over {MAX_BODY_CHARS} characters", permanent=True)

        if settings.TWILIO_FROM_NUMBER:
            sender = {"from_": settings.TWILIO_FROM_NUMBER}
        elif settings.TWILIO_MESSAGING_SERVICE_SID:
            sender = {"messaging_service_sid": settings.TWILIO_MESSAGING_SERVICE_SID}
        else:
            raise ChannelError("no TWILIO_FROM_NUMBER or MESSAGING_SERVICE_SID", permanent=True)

        http_client = _RecordingHttpClient(timeout=self.timeout_seconds)
        client = self._client(http_client)
        try:
            created = client.messages.create(
                to=message.to,
                body=message.body,
                # Without a public address (check --deploy refuses that) no report could reach
                # us: ask for none rather than give Twilio a URL that goes nowhere.
                status_callback=(
                    status_callback_url(message.id) if settings.PUBLIC_BASE_URL else values.unset
                ),
                **sender,
            )
        except TwilioRestException as exc:
            raise _rest_error(exc, http_client.last_response) from exc
        except Exception as exc:
            if not http_client.left:
                raise ChannelError(
                    f"SMS not sent: the request could not be made ({type(exc).__name__})",
                    permanent=True,
                ) from exc
            if isinstance(exc, requests.RequestException):
                raise _transport_error(exc, message) from exc
            logger.warning(
                "sms outcome unknown message=%s error=%s", message.id, type(exc).__name__
            )
            raise OutcomeUnknown(f"Twilio may have the message: {type(exc).__name__}") from exc
        sid: str = created.sid
        return sid

    @staticmethod
    def _client(http_client: TwilioHttpClient) -> Client:
        client = Client(
            settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, http_client=http_client
        )
        if settings.TWILIO_API_BASE_URL:
            # The SDK builds every Messages URL from the Api domain's base_url. Client reads
            # TWILIO_EDGE/TWILIO_REGION from os.environ even when they are passed as None, and
            # with either set it rewrites the host to "<host>.<edge>.<region>.<tld>": clear them.
            client.edge = None
            client.region = None
            client.api.base_url = settings.TWILIO_API_BASE_URL.rstrip("/")
        return client


def _rest_error(exc: TwilioRestException, response: object) -> ChannelError:
    # Only status and code go into the error: Twilio's message text quotes the phone number.
    status, code = exc.status, exc.code
    text = f"Twilio HTTP {status}, error {code}"
    if status == 429 or code in TRANSIENT_ERROR_CODES:
        headers = getattr(response, "headers", None) or {}
        return ChannelError(text, permanent=False, retry_after=_seconds(headers.get("Retry-After")))
    if status >= 500:
        return ChannelError(text, permanent=False)
    # 401/403 (wrong credentials, suspended account) also land here: no retry of this message
    # can succeed until staff fix the account, so it falls through to the next channel.
    return ChannelError(text, permanent=True)


def _transport_error(exc: requests.RequestException, message: OutgoingMessage) -> Exception:
    # Resending is only safe when the request certainly never left: a refused connection, a
    # failed DNS lookup, a connect timeout, a TLS handshake failure. Everything else (a read
    # timeout, a connection dropped mid-answer) may have created the message at Twilio, and
    # Twilio has no idempotency key to make a resend harmless.
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError):
        return ChannelError(f"Twilio unreachable: {type(exc).__name__}", permanent=False)
    if isinstance(exc, requests.ConnectionError) and _never_connected(exc):
        return ChannelError("Twilio unreachable: no connection", permanent=False)
    logger.warning("sms outcome unknown message=%s error=%s", message.id, type(exc).__name__)
    return OutcomeUnknown(f"Twilio may have the message: {type(exc).__name__}")


def _never_connected(exc: BaseException | None) -> bool:
    # requests wraps urllib3's MaxRetryError, whose `reason` is the NewConnectionError
    # (NameResolutionError is a subclass) raised before a byte was written.
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NewConnectionError):
            return True
        reason = getattr(exc, "reason", None)
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = reason if isinstance(reason, BaseException) else inner or exc.__cause__
    return False


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None  # absent: let the outbox use its own backoff
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return None  # an HTTP date: let the outbox use its own backoff


def status_callback_url(message_id: uuid.UUID) -> str:
    """Where Twilio reports on the SMS `message_id`. Our uuid is in the URL, so a report finds
    its message even before the sender has committed the MessageSid Twilio gave it."""
    path = reverse("twilio-status", kwargs={"message_uuid": message_id})
    return f"{settings.PUBLIC_BASE_URL}{path}"


def verified_params(url: str, params: dict[str, str], signature: str) -> dict[str, str]:
    """`params` of a Twilio webhook call to `url`; raises InvalidSignature unless Twilio signed
    them with our auth token (X-Twilio-Signature covers the exact public URL and every param)."""
    token = settings.TWILIO_AUTH_TOKEN
    if not token or not RequestValidator(token).validate(url, params, signature):
        raise InvalidSignature("X-Twilio-Signature does not match")
    return params


# Twilio's SID format (the spec's pattern for a Message SID is ^(SM|MM)[0-9a-fA-F]{32}$).
_SID = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")
# MessageStatus values are lowercase words (queued, sent, delivered, partially_delivered...);
# Twilio may add new ones, so any such word is accepted and an unknown one changes nothing.
_STATUS = re.compile(r"[a-z_]{1,32}")
_ERROR_CODE = re.compile(r"[0-9]{0,10}")
_ADDRESS_CHARS = 64  # E.164 is at most 16; channel-prefixed addresses ("whatsapp:+886...") more


@dataclass(frozen=True)
class StatusReport:
    """A verified status callback: which Twilio message, its status, and the error code."""

    sid: str
    status: str
    error_code: str = ""


@dataclass(frozen=True)
class IncomingSMS:
    """A verified incoming-SMS webhook call: Twilio's MessageSid for it, and what it says."""

    sid: str
    inbound: Inbound


def _field(params: dict[str, str], name: str, pattern: re.Pattern[str]) -> str:
    # The reason names the field only: the values may be a phone number or a message text.
    value = params.get(name, "")
    if not pattern.fullmatch(value):
        raise ValueError(f"{name} missing or malformed")
    return value


def status_report(params: dict[str, str]) -> StatusReport:
    """A verified status callback's fields; raises ValueError when one is missing or
    malformed."""
    return StatusReport(
        sid=_field(params, "MessageSid", _SID),
        status=_field(params, "MessageStatus", _STATUS),
        error_code=_field(params, "ErrorCode", _ERROR_CODE),
    )


def inbound_sms(params: dict[str, str]) -> IncomingSMS:
    """A verified incoming-SMS webhook call; raises ValueError when MessageSid or From is
    missing or malformed."""
    sender = params.get("From", "")
    if not sender or len(sender) > _ADDRESS_CHARS:
        raise ValueError("From missing or malformed")
    return IncomingSMS(
        sid=_field(params, "MessageSid", _SID),
        inbound=Inbound(channel="sms", kind="text", sender=sender, text=params.get("Body", "")),
    )
