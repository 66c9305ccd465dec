"""Staff write to a patient from the conversation page: through the outbox and the same gate
(campaigns.policy), which counts an answer within 24 hours of the patient's own message on that
channel as service (allowed without consent for messages) unless the channel was withdrawn.
What is allowed reaches the fake provider through the real SDKs and the dispatch helpers."""

import datetime as dt

import pytest
import time_machine
from django.urls import reverse

from campaigns.models import RuleKind
from campaigns.policy import SERVICE_WINDOW, channel_decision, service_reply
from consent.models import Channel, Purpose
from patients.models import AuditEntry
from reminders.inbox import MessageRefused, staff_message_queue
from reminders.models import InboundMessage, OutboxMessage, Snippet, Status
from tests.factories import grant, withdraw
from tests.helpers import dispatch, taipei

from .inbound import (
    LINE_ID,
    NOW,
    PHONE,
    frozen_at,
    line_event,
    line_post,
    line_text,
    patient_on_sms_and_line,
    sms_from,
)

pytestmark = pytest.mark.django_db


frozen = frozen_at(NOW)


@pytest.fixture
def patient():
    """A patient who never agreed to messages on any channel."""
    return patient_on_sms_and_line()


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


def wrote_at(moment, patient, channel="sms", text="請問可以改時間嗎"):
    return InboundMessage.objects.create(
        channel=channel,
        event_id=f"ev-{moment.timestamp()}-{channel}",
        received_at=moment,
        patient=patient,
        sender=PHONE if channel == "sms" else LINE_ID,
        text=text,
    )


def reply_page(patient):
    return reverse("desk:conversation_reply", args=[patient.pk])


def test_an_answer_within_24_hours_goes_out_without_consent(desk, patient, fake_twilio):
    # given: the patient texted us an hour ago, and never agreed to messages (kept through
    # the webhook in tests/reminders/test_inbox.py; the fake Twilio has its own auth token)
    wrote_at(NOW - dt.timedelta(hours=1), patient)

    # when: the desk answers by SMS
    response = desk.post(
        reply_page(patient), {"channel": "sms", "body": "可以，請來電 02-2345-6789"}
    )

    # then: it is queued through the outbox as a staff message and the worker sends it
    assert response.status_code == 302
    message = OutboxMessage.objects.get(patient=patient)
    assert message.rule.kind == RuleKind.STAFF and message.channels_left == []
    assert (message.channel, message.purpose, message.anchor_at) == ("sms", "care", NOW)
    dispatch(NOW + dt.timedelta(minutes=1))
    message.refresh_from_db()
    assert message.status == Status.SENT
    assert fake_twilio.requests[0].form["To"] == [PHONE]
    assert fake_twilio.requests[0].form["Body"] == ["可以，請來電 02-2345-6789"]
    sent = AuditEntry.objects.get(detail__contains=str(message.uuid))
    assert sent.action == AuditEntry.Action.SEND and list(sent.patients.all()) == [patient]


def test_an_answer_on_line_reaches_the_fake_line(desk, patient, fake_line):
    line_post(desk, line_text(LINE_ID, "傷口有點紅"))

    desk.post(reply_page(patient), {"channel": "line", "body": "請拍照傳給我們"})
    dispatch(NOW + dt.timedelta(minutes=1))

    assert OutboxMessage.objects.get(patient=patient).status == Status.SENT
    (pushed,) = fake_line.delivered
    assert pushed["to"] == LINE_ID and pushed["messages"][0]["text"] == "請拍照傳給我們"


def test_after_24_hours_without_consent_it_is_refused_with_the_reason_in_words(desk, patient):
    wrote_at(NOW - dt.timedelta(hours=25), patient)

    response = desk.post(reply_page(patient), {"channel": "sms", "body": "您好"})

    page = response.content.decode()
    assert response.status_code == 200
    assert "未以簡訊傳送" in page and "24 小時" in page
    assert not OutboxMessage.objects.exists()


def test_an_answer_on_the_other_channel_is_no_service(desk, patient, memory_channels):
    wrote_at(NOW - dt.timedelta(hours=1), patient, channel="line")

    with pytest.raises(MessageRefused):
        staff_message_queue(patient=patient, channel="sms", body="您好", now=NOW)


@pytest.mark.parametrize(
    ("ago", "allowed"),
    [
        (dt.timedelta(0), True),
        (SERVICE_WINDOW - dt.timedelta(minutes=1), True),
        (SERVICE_WINDOW, False),
        (SERVICE_WINDOW + dt.timedelta(minutes=1), False),
    ],
)
def test_the_gate_counts_the_24_hours_from_when_staff_wrote(patient, memory_channels, ago, allowed):
    wrote_at(NOW - ago, patient)
    message = OutboxMessage(
        rule=staff_rule(),
        patient=patient,
        channel="sms",
        purpose="care",
        anchor_at=NOW,
    )

    assert service_reply(message) is allowed
    assert channel_decision(message).allowed is allowed


def staff_rule():
    from reminders.inbox import _staff_rule

    return _staff_rule()


def test_a_message_from_the_future_is_no_answer(patient, memory_channels):
    wrote_at(NOW + dt.timedelta(minutes=5), patient)
    message = OutboxMessage(rule=staff_rule(), patient=patient, channel="sms", anchor_at=NOW)

    assert not service_reply(message)


def test_other_rule_kinds_get_no_service_exception(patient, memory_channels):
    from campaigns.models import Rule

    wrote_at(NOW, patient)
    message = OutboxMessage(
        rule=Rule.objects.get(name__startswith="術後關懷"),
        patient=patient,
        channel="sms",
        purpose="care",
        anchor_at=NOW,
    )

    assert not channel_decision(message).allowed


def test_stop_withdraws_the_channel_even_within_24_hours(desk, patient, memory_channels):
    # given: the patient wrote, then texted STOP (never having agreed to anything)
    sms_from(desk, PHONE, "請問報告出來了嗎")
    sms_from(desk, PHONE, "STOP")

    response = desk.post(reply_page(patient), {"channel": "sms", "body": "報告出來了"})

    assert "未以簡訊傳送" in response.content.decode()
    assert "已撤回" in response.content.decode()
    assert not OutboxMessage.objects.exists()


def test_a_line_block_withdraws_line_even_within_24_hours(desk, patient, fake_line):
    line_post(desk, line_text(LINE_ID, "請問營業時間"))
    line_post(desk, line_event("unfollow", LINE_ID))

    response = desk.post(reply_page(patient), {"channel": "line", "body": "週一至週六"})

    assert "未以LINE傳送" in response.content.decode()
    assert not OutboxMessage.objects.exists()


def test_a_withdrawal_after_queueing_stops_it_at_the_gate(desk, patient, memory_channels):
    grant(patient, Purpose.CARE, Channel.SMS)
    wrote_at(NOW - dt.timedelta(hours=1), patient)
    message = staff_message_queue(patient=patient, channel="sms", body="您好", now=NOW)
    withdraw(patient, Purpose.CARE, Channel.SMS)

    dispatch(NOW + dt.timedelta(minutes=1))

    message.refresh_from_db()
    assert message.status == Status.DROPPED and memory_channels == []


def test_with_consent_staff_may_write_without_a_message_from_the_patient(
    desk, patient, memory_channels
):
    grant(patient, Purpose.CARE, Channel.SMS)

    desk.post(reply_page(patient), {"channel": "sms", "body": "提醒您明天回診"})
    dispatch(NOW + dt.timedelta(minutes=1))

    assert [m.to for m in memory_channels] == [PHONE]


def test_at_night_it_waits_for_the_send_window_and_the_page_says_so(desk, patient, memory_channels):
    night = taipei(2026, 3, 10, 22, 30)
    with time_machine.travel(night, tick=False):
        sms_from(desk, PHONE, "睡不著，傷口痛")
        page = desk.get(reverse("desk:conversation", args=[patient.pk])).content.decode()
        response = desk.post(
            reply_page(patient), {"channel": "sms", "body": "請明早來電"}, follow=True
        )
        dispatch(night + dt.timedelta(minutes=1))

    assert "2026-03-11 09:00" in page
    assert "2026-03-11 09:00" in response.content.decode()
    message = OutboxMessage.objects.get()
    assert message.status == Status.QUEUED and memory_channels == []
    assert message.next_attempt_at == taipei(2026, 3, 11, 9, 0)
    # in the morning, still an answer (written within 24 h of the patient's message), it goes
    dispatch(taipei(2026, 3, 11, 9, 1))
    assert [m.body for m in memory_channels] == ["請明早來電"]


@pytest.mark.parametrize("body", ["", "   ", "字" * 1001])
def test_empty_or_too_long_messages_are_refused(desk, patient, body):
    grant(patient, Purpose.CARE, Channel.SMS)

    response = desk.post(reply_page(patient), {"channel": "sms", "body": body})

    assert response.status_code == 200 and not OutboxMessage.objects.exists()


def test_a_saved_answer_fills_the_box(desk, patient):
    snippet = Snippet.objects.create(title="營業時間", text="門診時間：週一至週六 9:00-21:00")
    Snippet.objects.create(title="停用", text="old", active=False)
    page = reverse("desk:conversation", args=[patient.pk])

    listed = desk.get(page).content.decode()
    filled = desk.get(page, {"snippet": snippet.pk}).content.decode()

    assert "營業時間" in listed and "停用" not in listed
    assert 'id="snippet-texts"' in listed  # the texts for the insert button's script
    assert "門診時間：週一至週六 9:00-21:00</textarea>" in filled


def test_the_manager_edits_saved_answers_in_the_admin(client, manager_user):
    client.force_login(manager_user)

    response = client.post(
        reverse("admin:reminders_snippet_add"),
        {"title": "報告", "text": "報告已出來，請回診說明。", "position": 1, "active": "on"},
    )

    assert response.status_code == 302
    assert Snippet.objects.get().title == "報告"
    assert "常用回覆" in client.get(reverse("admin:reminders_snippet_changelist")).content.decode()
