"""The inbox keeps what patients write that no keyword handles: through the real signed webhooks,
encrypted at rest, once per provider event, apart for unknown senders until staff link them,
erased after the retention period, and never a 500 for odd input. A post-op "need a call"
becomes a call task at once."""

import datetime as dt

import pytest
import time_machine
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Rule
from consent.models import Purpose
from reminders.inbox import (
    MAX_TEXT_CHARS,
    TRUNCATED_MARK,
    LinkRefused,
    inbox_conversations,
    inbox_unknown_senders,
    inbox_unread_count,
    sender_link,
)
from reminders.models import InboundMessage, OutboxMessage, StaffTask, Status
from reminders.retention import retention_apply
from tests.factories import AppointmentFactory, PatientFactory, ProcedureFactory

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
STRANGER = "U" + "9" * 32


frozen = frozen_at(NOW)


@pytest.fixture
def patient():
    return patient_on_sms_and_line(Purpose.CARE)


def raw_text(row):
    with connection.cursor() as cursor:
        cursor.execute("SELECT text, sender FROM reminders_inboundmessage WHERE id = %s", [row.pk])
        return cursor.fetchone()


def test_an_sms_that_is_no_keyword_is_kept_encrypted_for_its_patient(client, patient):
    response = sms_from(client, "0912-345-678", "請問明天幾點看診？")

    assert response.status_code == 200
    row = InboundMessage.objects.get()
    assert (row.patient, row.channel, row.text) == (patient, "sms", "請問明天幾點看診？")
    assert row.received_at == NOW and row.event_id.startswith("SM")
    assert row.sender == PHONE and row.read_at is None and row.handled_at is None
    text, sender = raw_text(row)
    assert "明天" not in text and PHONE not in sender  # encrypted at rest
    assert inbox_unread_count() == 1


def test_a_line_text_is_kept_for_its_patient(client, patient, fake_line):
    message = line_text(LINE_ID, "傷口有點癢 😣")

    response = line_post(client, message)

    assert response.status_code == 200
    row = InboundMessage.objects.get()
    assert (row.patient, row.channel, row.text) == (patient, "line", "傷口有點癢 😣")
    assert row.event_id == message["webhookEventId"]
    assert LINE_ID not in raw_text(row)[1]
    assert fake_line.replies == []  # a known patient gets no automatic answer


def test_a_replayed_webhook_keeps_one_row(client, patient, fake_line):
    sms_from(client, PHONE, "謝謝", sid="SM" + "1" * 32)
    sms_from(client, PHONE, "謝謝", sid="SM" + "1" * 32)
    message = line_text(LINE_ID, "你好")
    line_post(client, message)
    line_post(client, {**message, "deliveryContext": {"isRedelivery": True}})

    assert InboundMessage.objects.filter(channel="sms").count() == 1
    assert InboundMessage.objects.filter(channel="line").count() == 1


def test_keywords_answers_and_link_codes_are_not_kept(client, patient, fake_line):
    confirmation = Rule.objects.filter(asks_confirmation=True).first()
    appointment = AppointmentFactory(patient=patient, starts_at=NOW + dt.timedelta(days=1))
    OutboxMessage.objects.create(
        rule=confirmation,
        patient=patient,
        appointment=appointment,
        occurrence_key="confirm",
        purpose="care",
        channel="sms",
        due_at=NOW,
        next_attempt_at=NOW,
        expires_at=NOW + dt.timedelta(days=1),
        body="回覆 1 確認",
        status=Status.SENT,
        sent_at=NOW - dt.timedelta(hours=1),
    )

    sms_from(client, PHONE, "1")  # confirms the appointment
    line_post(client, line_text(STRANGER, "綁定代碼 ABC234"))  # a (wrong) link code
    sms_from(client, PHONE, "STOP")

    assert not InboundMessage.objects.exists()


def test_an_unknown_sender_is_listed_apart_then_linked(client, patient, fake_line):
    sms_from(client, "+886987654321", "我是王小明的家人，想問報告")
    line_post(client, line_text(STRANGER, "你好，請問營業時間"))

    assert inbox_conversations() == []
    unknown = {sender.channel: sender for sender in inbox_unknown_senders()}
    assert unknown["sms"].sender == "+886987654321" and unknown["sms"].count == 1
    assert unknown["line"].shared_by == 0
    assert "綁定代碼" in fake_line.replies[0]["messages"][0]["text"]  # told how to link

    # a number that isn't the patient's needs staff to confirm it; with it, it is linked
    with pytest.raises(LinkRefused):
        sender_link(
            channel="sms",
            sender_bidx=unknown["sms"].sender_bidx,
            patient=patient,
            confirmed=False,
            now=NOW,
        )
    linked = sender_link(
        channel="sms",
        sender_bidx=unknown["sms"].sender_bidx,
        patient=patient,
        confirmed=True,
        now=NOW,
    )

    assert linked == 1
    assert [row.patient for row in inbox_conversations()] == [patient]
    assert [sender.channel for sender in inbox_unknown_senders()] == ["line"]


def test_a_phone_several_patients_share_waits_for_staff_and_links_without_asking(client):
    mother = PatientFactory(phone=PHONE)
    PatientFactory(phone=PHONE)

    sms_from(client, PHONE, "我媽媽的藥吃完了")

    (shared,) = inbox_unknown_senders()
    assert shared.shared_by == 2
    assert sender_link(
        channel="sms", sender_bidx=shared.sender_bidx, patient=mother, confirmed=False, now=NOW
    )
    assert InboundMessage.objects.get().patient == mother


def test_inbox_texts_are_erased_after_the_retention_period(client, patient, settings):
    settings.RETAIN_INBOX_TEXT_DAYS = 180
    sms_from(client, PHONE, "old question")
    with time_machine.travel(NOW + dt.timedelta(days=100), tick=False):
        sms_from(client, PHONE, "newer question")

    done = retention_apply(now=NOW + dt.timedelta(days=181), batch=1)

    assert done["inbox texts"] == 1
    old, newer = InboundMessage.objects.order_by("received_at")
    assert (old.text, newer.text) == ("", "newer question")
    assert old.patient == patient and old.channel == "sms"  # the row stays
    settings.RETAIN_INBOX_TEXT_DAYS = 0
    assert "inbox texts" not in retention_apply(now=NOW + dt.timedelta(days=999))


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        ("a\x00b\x07c\r\nline two", "abc\r\nline two"),
        ("   ", None),
        ("", None),
        ("🙂" * 10, "🙂" * 10),
    ],
)
def test_control_characters_are_stripped_and_empty_texts_not_kept(client, patient, body, kept):
    response = sms_from(client, PHONE, body)

    assert response.status_code == 200
    texts = list(InboundMessage.objects.values_list("id", flat=True))
    if kept is None:
        assert texts == []
    else:
        assert InboundMessage.objects.get().text == kept


def test_an_oversized_text_is_kept_shortened_with_a_mark(client, patient, fake_line):
    response = line_post(client, line_text(LINE_ID, "字" * 5000))

    assert response.status_code == 200
    row = InboundMessage.objects.get()
    assert len(row.text) == MAX_TEXT_CHARS and row.text.endswith(TRUNCATED_MARK)
    assert row.truncated


def test_stickers_images_and_bad_bodies_are_never_a_500(client, patient, fake_line):
    sticker = line_event(
        "message",
        LINE_ID,
        replyToken="r",
        message={"type": "sticker", "id": "1", "packageId": "1", "stickerId": "1"},
    )
    assert line_post(client, sticker).status_code == 200
    assert line_post(client, {"type": "message", "webhookEventId": 5}).status_code in (200, 400)
    unsigned = client.post(
        reverse("line-webhook"),
        b"\xff\xfe",
        content_type="application/json",
        HTTP_X_LINE_SIGNATURE="x",
    )
    assert unsigned.status_code == 403
    assert not InboundMessage.objects.exists()


# --- post-op "need a call" --------------------------------------------------------------------


@pytest.fixture
def checkin(patient):
    procedure = ProcedureFactory(patient=patient)
    return OutboxMessage.objects.create(
        rule=Rule.objects.get(name__startswith="術後關懷"),
        patient=patient,
        procedure=procedure,
        occurrence_key="postop:1",
        purpose="care",
        channel="sms",
        due_at=NOW - dt.timedelta(days=1),
        next_attempt_at=NOW - dt.timedelta(days=1),
        expires_at=NOW,
        body="恢復還好嗎？",
        status=Status.DELIVERED,
        sent_at=NOW - dt.timedelta(days=1),
    )


@pytest.mark.parametrize("answer", ["3", "３", "請打電話給我", "call me please"])
def test_need_a_call_after_a_postop_checkin_is_a_call_task_at_once(
    client, patient, checkin, answer
):
    sms_from(client, PHONE, answer)
    sms_from(client, PHONE, "3")  # asking twice makes one task

    task = StaffTask.objects.get()
    assert (task.kind, task.patient, task.message) == ("call_requested", patient, checkin)
    assert task.due_on == timezone.localdate(NOW) and task.done_at is None
    assert InboundMessage.objects.filter(patient=patient).count() == 2  # staff see it too


def test_the_call_task_leads_to_the_conversation(client, patient, checkin, front_desk_user):
    sms_from(client, PHONE, "3")
    client.force_login(front_desk_user)

    html = client.get(reverse("desk:tasks")).content.decode()

    assert "病人回覆術後關懷，要求來電" in html
    assert reverse("desk:conversation", args=[patient.pk]) in html


def test_other_answers_or_no_checkin_make_no_call_task(client, patient, checkin):
    sms_from(client, PHONE, "還好，謝謝")
    checkin.sent_at = NOW - dt.timedelta(days=5)
    checkin.save()
    sms_from(client, PHONE, "3")

    assert not StaffTask.objects.exists()


def test_erasing_the_patient_blanks_what_they_wrote(client, patient, front_desk_user):
    from patients.services import patient_erase

    sms_from(client, PHONE, "我的地址是台北市信義路一段1號")

    patient_erase(patient=patient, actor=front_desk_user)

    row = InboundMessage.objects.get()
    assert (row.text, row.sender, row.sender_bidx) == ("", "", "")  # nothing finds them by it
