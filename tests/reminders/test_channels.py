"""The channel adapters, through the real SDKs, against fake providers on 127.0.0.1."""

import logging
import smtplib
import socket
import uuid

import pytest
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend

from reminders.channels import memory
from reminders.channels.base import ChannelError, OutcomeUnknown, OutgoingMessage, get_channel
from reminders.channels.email import EmailChannel
from reminders.channels.line import LineChannel
from reminders.channels.memory import MemoryChannel
from reminders.channels.sms_twilio import TwilioSMSChannel

from . import contract
from .fake_providers import payload

PHONE = "+886912345678"
LINE_USER = "U" + "4af4980629" * 3 + "ab"
BODY = "王小明 您好：提醒您明天 10:00 回診。回覆 STOP 取消通知。"


def sms(body: str = BODY, to: str = PHONE) -> OutgoingMessage:
    return OutgoingMessage(id=uuid.uuid4(), channel="sms", to=to, body=body)


def line(body: str = BODY, to: str = LINE_USER) -> OutgoingMessage:
    return OutgoingMessage(id=uuid.uuid4(), channel="line", to=to, body=body)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- SMS through Twilio -------------------------------------------------------------------


def test_sms_send_returns_the_message_sid_and_posts_what_twilio_expects(fake_twilio):
    message = sms()

    sid = get_channel("sms").send(message)

    [created] = fake_twilio.messages
    assert sid == created["sid"] and sid.startswith("SM")
    [request] = fake_twilio.requests
    assert request.path == f"/2010-04-01/Accounts/{fake_twilio.account_sid}/Messages.json"
    assert request.form == {
        "To": [PHONE],
        "Body": [BODY],
        "From": ["+15017122661"],
        "StatusCallback": [f"https://clinic.example/webhooks/twilio/status/{message.id}/"],
    }
    assert contract.twilio_create_message(fake_twilio.account_sid, request.form) == []


def test_sms_through_a_messaging_service_sends_its_sid_instead_of_from(fake_twilio, settings):
    settings.TWILIO_FROM_NUMBER = ""
    settings.TWILIO_MESSAGING_SERVICE_SID = "MG" + "0123456789abcdef" * 2

    get_channel("sms").send(sms())

    [request] = fake_twilio.requests
    assert "From" not in request.form
    assert request.form["MessagingServiceSid"] == [settings.TWILIO_MESSAGING_SERVICE_SID]


def test_sms_reaches_the_fake_even_with_twilio_edge_and_region_in_the_environment(
    fake_twilio, monkeypatch
):
    # The SDK would otherwise send to "127.0.0.1:PORT.sydney.au1..." and fail to resolve it.
    monkeypatch.setenv("TWILIO_EDGE", "sydney")
    monkeypatch.setenv("TWILIO_REGION", "au1")

    sid = get_channel("sms").send(sms())

    assert sid == fake_twilio.messages[0]["sid"]


@pytest.mark.parametrize(
    "code",
    [21211, 21408, 21610, 21614],
    ids=["invalid-to", "region-disabled", "unsubscribed", "not-mobile"],
)
def test_sms_rejected_number_is_a_permanent_error(fake_twilio, code):
    body = payload("twilio_error_21211") | {"code": code}
    fake_twilio.reply_next(400, body)

    with pytest.raises(ChannelError) as caught:
        get_channel("sms").send(sms())

    assert caught.value.permanent is True
    assert str(code) in str(caught.value)
    assert "886" not in str(caught.value)  # Twilio's text quotes the number: keep it out


def test_sms_rate_limit_is_transient_with_twilios_retry_after(fake_twilio):
    fake_twilio.reply_next(429, payload("twilio_error_20429"), headers={"Retry-After": "7"})

    with pytest.raises(ChannelError) as caught:
        get_channel("sms").send(sms())

    assert caught.value.permanent is False
    assert caught.value.retry_after == 7.0


def test_sms_full_sender_queue_is_transient(fake_twilio):
    fake_twilio.reply_next(400, payload("twilio_error_21211") | {"code": 21611})

    with pytest.raises(ChannelError) as caught:
        get_channel("sms").send(sms())

    assert caught.value.permanent is False


def test_sms_server_error_is_transient(fake_twilio):
    fake_twilio.reply_next(500, {"code": 20500, "message": "Internal Server Error", "status": 500})

    with pytest.raises(ChannelError) as caught:
        get_channel("sms").send(sms())

    assert caught.value.permanent is False
    assert caught.value.retry_after is None


def test_sms_timeout_after_sending_is_outcome_unknown_not_a_retry(fake_twilio, monkeypatch):
    monkeypatch.setattr(TwilioSMSChannel, "timeout_seconds", 0.5)
    fake_twilio.hang_next()

    with pytest.raises(OutcomeUnknown):
        get_channel("sms").send(sms())

    # Twilio did create the message: a blind resend would text the patient twice.
    assert len(fake_twilio.messages) == 1


def test_sms_connection_dropped_after_sending_is_outcome_unknown(fake_twilio):
    fake_twilio.drop_next()

    with pytest.raises(OutcomeUnknown):
        get_channel("sms").send(sms())

    assert len(fake_twilio.messages) == 1


def test_sms_connection_refused_is_transient(fake_twilio, settings):
    settings.TWILIO_API_BASE_URL = closed_port_url()

    with pytest.raises(ChannelError) as caught:
        get_channel("sms").send(sms())

    assert caught.value.permanent is False


def test_sms_body_over_twilios_limit_is_permanent_and_not_sent(fake_twilio):
    with pytest.raises(ChannelError) as caught:
        get_channel("sms").send(sms(body="回" * 1601))

    assert caught.value.permanent is True
    assert fake_twilio.requests == []


# --- LINE push ----------------------------------------------------------------------------


def test_line_push_carries_the_message_id_as_retry_key(fake_line):
    message = line()

    sent_id = get_channel("line").send(message)

    [request] = fake_line.requests
    assert request.status == 200
    assert sent_id == request.answer["sentMessages"][0]["id"]
    assert request.header("X-Line-Retry-Key") == str(message.id)
    assert request.header("Authorization") == f"Bearer {fake_line.access_token}"
    assert request.json["to"] == LINE_USER
    assert request.json["messages"] == [{"type": "text", "text": BODY}]
    assert contract.line_push_message(request.headers, request.json) == []


def test_line_same_message_sent_twice_is_delivered_once(fake_line):
    message = line()
    channel = get_channel("line")

    first = channel.send(message)
    second = channel.send(message)

    assert [r.status for r in fake_line.requests] == [200, 409]
    assert second == first
    assert len(fake_line.delivered) == 1


def test_line_conflict_without_sent_messages_returns_the_accepted_request_id(fake_line):
    accepted_id = str(uuid.uuid4())
    fake_line.reply_next(
        409,
        {"message": "The retry key is already accepted"},
        headers={"x-line-accepted-request-id": accepted_id},
    )

    assert get_channel("line").send(line()) == accepted_id


def test_line_timeout_is_transient_and_the_retry_is_not_a_duplicate(fake_line, monkeypatch):
    monkeypatch.setattr(LineChannel, "timeout_seconds", (1.0, 0.5))
    fake_line.hang_next()
    message = line()

    with pytest.raises(ChannelError) as caught:
        get_channel("line").send(message)
    assert caught.value.permanent is False

    sent_id = get_channel("line").send(message)
    first, retry = fake_line.requests
    assert retry.status == 409
    assert sent_id == retry.answer["sentMessages"][0]["id"]
    assert len(fake_line.delivered) == 1


def test_line_dropped_connection_is_transient_and_the_retry_is_not_a_duplicate(fake_line):
    fake_line.drop_next()
    message = line()

    with pytest.raises(ChannelError) as caught:
        get_channel("line").send(message)
    get_channel("line").send(message)

    assert caught.value.permanent is False
    assert fake_line.requests[1].status == 409
    assert len(fake_line.delivered) == 1


def test_line_error_does_not_spend_the_retry_key(fake_line):
    fake_line.reply_next(500, {"message": "An error occurred in the backend"})
    message = line()

    with pytest.raises(ChannelError) as caught:
        get_channel("line").send(message)
    get_channel("line").send(message)

    assert caught.value.permanent is False
    assert [r.status for r in fake_line.requests] == [500, 200]
    assert len(fake_line.delivered) == 1


@pytest.mark.parametrize("status", [400, 401, 403])
def test_line_refused_request_is_a_permanent_error(fake_line, status):
    fake_line.reply_next(status, payload("line_invalid_to"))

    with pytest.raises(ChannelError) as caught:
        get_channel("line").send(line())

    assert caught.value.permanent is True


def test_line_rate_limit_is_transient_with_retry_after(fake_line):
    fake_line.reply_next(429, {"message": "Too Many Requests"}, headers={"Retry-After": "30"})

    with pytest.raises(ChannelError) as caught:
        get_channel("line").send(line())

    assert caught.value.permanent is False
    assert caught.value.retry_after == 30.0


def test_line_monthly_quota_is_permanent_so_the_outbox_falls_through(fake_line):
    fake_line.reply_next(429, payload("line_monthly_limit"))

    with pytest.raises(ChannelError) as caught:
        get_channel("line").send(line())

    assert caught.value.permanent is True


def test_line_connection_refused_is_transient(fake_line, settings):
    settings.LINE_API_BASE_URL = closed_port_url()

    with pytest.raises(ChannelError) as caught:
        get_channel("line").send(line())

    assert caught.value.permanent is False


def test_line_text_over_5000_characters_is_permanent_and_not_sent(fake_line):
    with pytest.raises(ChannelError) as caught:
        get_channel("line").send(line(body="好" * 5001))

    assert caught.value.permanent is True
    assert fake_line.requests == []


# --- E-mail -------------------------------------------------------------------------------


def email(html_body: str = "<p>明天 10:00 回診</p>") -> OutgoingMessage:
    return OutgoingMessage(
        id=uuid.uuid4(),
        channel="email",
        to="patient@example.com",
        body="明天 10:00 回診",
        subject="回診提醒",
        html_body=html_body,
    )


class FailingBackend(BaseEmailBackend):
    error: Exception = OSError("unset")

    def send_messages(self, email_messages):
        raise self.error


def test_email_sends_text_with_html_alternative_and_returns_its_message_id(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    message = email()

    message_id = EmailChannel().send(message)

    [sent] = mail.outbox
    assert sent.subject == "回診提醒"
    assert sent.body == "明天 10:00 回診"
    assert sent.to == ["patient@example.com"]
    assert sent.alternatives == [("<p>明天 10:00 回診</p>", "text/html")]
    assert sent.message()["Message-ID"] == message_id
    assert message.id.hex[:8] in message_id


def test_email_without_html_is_plain_text(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

    EmailChannel().send(email(html_body=""))

    assert mail.outbox[0].alternatives == []


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (smtplib.SMTPRecipientsRefused({"patient@example.com": (550, b"no such user")}), True),
        (smtplib.SMTPRecipientsRefused({"patient@example.com": (450, b"greylisted")}), False),
        (smtplib.SMTPServerDisconnected("gone"), False),
        (TimeoutError("timed out"), False),
    ],
    ids=["recipient-550", "recipient-450", "disconnected", "timeout"],
)
def test_email_smtp_failures_are_classified(settings, monkeypatch, error, permanent):
    settings.EMAIL_BACKEND = f"{__name__}.FailingBackend"
    monkeypatch.setattr(FailingBackend, "error", error)

    with pytest.raises(ChannelError) as caught:
        EmailChannel().send(email())

    assert caught.value.permanent is permanent


def test_email_smtp_server_down_is_transient(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = int(closed_port_url().rsplit(":", 1)[1])

    with pytest.raises(ChannelError) as caught:
        EmailChannel().send(email())

    assert caught.value.permanent is False


# --- Console and memory -------------------------------------------------------------------


def test_console_logs_ids_and_length_but_no_body_phone_or_name(settings, caplog):
    settings.REMINDER_CHANNELS = {"sms": "reminders.channels.console.ConsoleChannel"}
    message = sms()

    with caplog.at_level(logging.INFO, logger="reminders.channels.console"):
        provider_id = get_channel("sms").send(message)

    assert provider_id == f"console-{message.id}"
    assert str(message.id) in caplog.text
    assert "***678" in caplog.text
    assert f"body_chars={len(BODY)}" in caplog.text
    for secret in (PHONE, PHONE[1:], "912345678", "王小明", BODY, "回診"):
        assert secret not in caplog.text


def test_memory_channel_records_sends_and_fails_on_demand(settings):
    settings.REMINDER_CHANNELS = {"sms": "reminders.channels.memory.MemoryChannel"}
    MemoryChannel.reset()
    MemoryChannel.fail_next(ChannelError("busy", permanent=False), times=2)
    message = sms()

    for _ in range(2):
        with pytest.raises(ChannelError):
            get_channel("sms").send(message)
    provider_id = get_channel("sms").send(message)

    assert provider_id == f"memory-{message.id}"
    assert memory.outbox == [message]
    MemoryChannel.reset()
    assert memory.outbox == []


# --- The contract checks themselves -------------------------------------------------------


def test_twilio_contract_catches_a_missing_to_and_a_misspelt_parameter():
    problems = contract.twilio_create_message(
        "AC123", {"Body": ["hi"], "StatusCallBack": ["https://clinic.example/x"]}
    )

    assert any("'To' is a required property" in p for p in problems)
    assert any("StatusCallBack" in p for p in problems)
    assert any(p.startswith("path") for p in problems)


def test_line_contract_catches_a_bad_retry_key_and_an_unknown_message_type():
    problems = contract.line_push_message(
        {"Authorization": "Bearer x", "Content-Type": "application/json", "X-Line-Retry-Key": "1"},
        {"to": LINE_USER, "messages": [{"type": "txt", "text": "hi"}]},
    )

    assert any(p.startswith("header/X-Line-Retry-Key") for p in problems)
    assert any("messages/0/type" in p for p in problems)
