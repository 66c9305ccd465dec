"""LINE buttons (issue 10, item 2): a confirmation request goes out as a Flex bubble with
confirm / need to change / call me, a post-op check-in with quick replies, both built with the
real line-bot-sdk and checked against LINE's spec by the fake provider; a tapped button comes
back as a signed postback and acts like the SMS reply code, once per event, only for the
patient the message was sent to and only while it is still open. SMS keeps its codes."""

import datetime as dt
import logging
import uuid

import pytest
from django.utils import timezone

from campaigns.models import Rule
from consent.models import Channel, Purpose
from patients.models import Appointment
from reminders.answers import MAX_DATA_CHARS, Answer, postback_data, postback_parse
from reminders.models import InboundMessage, OutboxMessage, StaffTask, Status
from reminders.services import messages_dispatch
from tests.factories import AppointmentFactory, PatientFactory, ProcedureFactory, grant
from tests.helpers import delete_by_hand, postgresql_only

from . import contract
from .inbound import (
    LINE_ID,
    NOW,
    PHONE,
    frozen_at,
    line_event,
    line_post,
    patient_on_sms_and_line,
    sms_from,
)

pytestmark = pytest.mark.django_db
OTHER_LINE_ID = "U" + "6" * 32


frozen = frozen_at(NOW)


@pytest.fixture
def patient():
    return patient_on_sms_and_line(Purpose.CARE)


def _message(rule, patient, *, channel="line", status=Status.SENT, **refs):
    return OutboxMessage.objects.create(
        rule=rule,
        patient=patient,
        occurrence_key=f"test:{uuid.uuid4()}",
        purpose="care",
        channel=channel,
        due_at=NOW - dt.timedelta(hours=1),
        next_attempt_at=NOW - dt.timedelta(hours=1),
        expires_at=NOW + dt.timedelta(days=1),
        body="王小明您好，您 3/11 14:30 在家醫科有門診，請回覆 1 確認、2 改期。",
        status=status,
        sent_at=NOW - dt.timedelta(hours=1) if status != Status.QUEUED else None,
        **refs,
    )


@pytest.fixture
def appointment(patient):
    return AppointmentFactory(patient=patient, starts_at=NOW + dt.timedelta(days=1))


@pytest.fixture
def request_sent(patient, appointment):
    rule = Rule.objects.filter(asks_confirmation=True).first()
    return _message(rule, patient, appointment=appointment, anchor_at=appointment.starts_at)


@pytest.fixture
def checkin(patient):
    rule = Rule.objects.get(name__startswith="術後關懷")
    return _message(rule, patient, procedure=ProcedureFactory(patient=patient))


def tap(client, user_id, data, *, event=None):
    event = event or line_event(
        "postback", user_id, replyToken=uuid.uuid4().hex, postback={"data": data}
    )
    response = line_post(client, event)
    assert response.status_code == 200
    return event


# --- what goes out ---------------------------------------------------------------------------


def _nested_violations(message: dict) -> list[str]:
    """The fake checks each message against its type's schema; Flex contents and actions sit
    behind further discriminators the schema check does not follow, so they are checked here."""
    spec, _registry = contract._spec("line_messaging_api.yml")
    schemas = spec["components"]["schemas"]
    problems = []

    def check(node: dict, family: str, where: str) -> None:
        target = schemas[family]["discriminator"]["mapping"].get(node.get("type"))
        if target is None:
            problems.append(f"{where}: type {node.get('type')!r} is no {family}")
            return
        problems.extend(
            contract._errors("line_messaging_api.yml", target.removeprefix("#"), node, where)
        )
        for index, child in enumerate(node.get("contents", []) if family != "Action" else []):
            check(child, "FlexComponent", f"{where}/contents/{index}")
        for part in ("body", "footer"):
            if part in node:
                check(node[part], "FlexComponent", f"{where}/{part}")
        if "action" in node:
            check(node["action"], "Action", f"{where}/action")

    if message["type"] == "flex":
        check(message["contents"], "FlexContainer", "contents")
    for index, item in enumerate(message.get("quickReply", {}).get("items", [])):
        check(item["action"], "Action", f"quickReply/items/{index}/action")
    return problems


def _postbacks(actions: list[dict]) -> list[tuple[str, str, str]]:
    return [(a["type"], a["data"], a["label"]) for a in actions]


def test_a_confirmation_request_goes_out_with_three_postback_buttons(fake_line, request_sent):
    request_sent.status, request_sent.sent_at = Status.QUEUED, None
    request_sent.save()

    messages_dispatch(batch_size=5, time_budget=10)

    request_sent.refresh_from_db()
    assert request_sent.status == Status.SENT
    [push] = fake_line.delivered
    [message] = push["messages"]
    assert message["type"] == "flex"
    assert message["altText"] == request_sent.body  # the text, as the outbox keeps it
    assert message["contents"]["body"]["contents"][0]["text"] == request_sent.body
    buttons = [b["action"] for b in message["contents"]["footer"]["contents"]]
    assert _postbacks(buttons) == [
        ("postback", f"confirm:{request_sent.uuid}", "確認會到"),
        ("postback", f"change:{request_sent.uuid}", "需要改期"),
        ("postback", f"callme:{request_sent.uuid}", "請來電"),
    ]
    assert _nested_violations(message) == []


def test_a_postop_checkin_goes_out_with_quick_replies_in_the_patients_language(
    fake_line, checkin, patient
):
    patient.preferred_language = "en"
    patient.save()
    checkin.status, checkin.sent_at = Status.QUEUED, None
    checkin.save()

    messages_dispatch(batch_size=5, time_budget=10)

    [message] = fake_line.delivered[0]["messages"]
    assert (message["type"], message["text"]) == ("text", checkin.body)
    items = [item["action"] for item in message["quickReply"]["items"]]
    assert _postbacks(items) == [
        ("postback", f"fine:{checkin.uuid}", "I'm fine"),
        ("postback", f"pain:{checkin.uuid}", "Some pain"),
        ("postback", f"needcall:{checkin.uuid}", "I need a call"),
    ]
    assert all(item["displayText"] == item["label"] for item in items)
    assert _nested_violations(message) == []


def test_other_messages_and_sms_stay_plain_text_with_their_codes(
    fake_line, fake_twilio, patient, appointment
):  # one patient each: the frequency cap lets one through per patient
    birthday = _message(Rule.objects.get(kind="birthday"), patient, status=Status.QUEUED)
    rule = Rule.objects.filter(asks_confirmation=True).first()
    texted = PatientFactory(phone="+886987654321")
    grant(texted, Purpose.CARE, Channel.SMS)
    appointment.patient = texted
    appointment.save()
    by_sms = _message(
        rule,
        texted,
        channel="sms",
        status=Status.QUEUED,
        appointment=appointment,
        anchor_at=appointment.starts_at,
    )

    messages_dispatch(batch_size=5, time_budget=10)

    [message] = fake_line.delivered[0]["messages"]
    assert message == {"type": "text", "text": birthday.body}
    [sms] = fake_twilio.messages
    assert sms["body"] == by_sms.body  # "請回覆 1 確認、2 改期" as written


# --- what comes back -------------------------------------------------------------------------


def test_confirm_button_confirms_the_appointment_by_line(client, request_sent, appointment):
    tap(client, LINE_ID, f"confirm:{request_sent.uuid}")

    appointment.refresh_from_db()
    request_sent.refresh_from_db()
    assert appointment.status == Appointment.Status.CONFIRMED
    assert appointment.confirmed_via == Appointment.ConfirmedVia.LINE
    assert appointment.confirmed_at == NOW and request_sent.replied_at == NOW
    assert not StaffTask.objects.exists() and not InboundMessage.objects.exists()


@pytest.mark.parametrize("answer", ["change", "callme"])
def test_change_and_call_me_make_the_same_reschedule_task_as_sms_2(
    client, request_sent, appointment, answer
):
    tap(client, LINE_ID, f"{answer}:{request_sent.uuid}")
    tap(client, LINE_ID, f"{answer}:{request_sent.uuid}")  # tapped twice: one task

    task = StaffTask.objects.get()
    assert (task.kind, task.patient_id, task.message) == (
        StaffTask.Kind.RESCHEDULE,
        request_sent.patient_id,
        request_sent,
    )
    appointment.refresh_from_db()
    assert appointment.status == Appointment.Status.BOOKED


def test_need_a_call_button_makes_the_postop_call_task_and_shows_in_the_inbox(
    client, checkin, patient
):
    tap(client, LINE_ID, f"needcall:{checkin.uuid}")

    task = StaffTask.objects.get()
    assert (task.kind, task.patient, task.message) == ("call_requested", patient, checkin)
    assert InboundMessage.objects.get().text == "需要來電"
    checkin.refresh_from_db()
    assert checkin.replied_at == NOW


def test_fine_makes_no_task_and_some_pain_reaches_the_inbox(client, checkin, patient):
    tap(client, LINE_ID, f"fine:{checkin.uuid}")
    tap(client, LINE_ID, f"pain:{checkin.uuid}")

    assert not StaffTask.objects.exists()
    [kept] = InboundMessage.objects.all()
    assert (kept.patient, kept.text) == (patient, "有點痛")


def test_a_replayed_postback_is_applied_once(client, request_sent, appointment):
    event = tap(client, LINE_ID, f"change:{request_sent.uuid}")
    StaffTask.objects.all().delete()  # staff dealt with it

    tap(client, LINE_ID, "", event={**event, "deliveryContext": {"isRedelivery": True}})

    assert not StaffTask.objects.exists()


def test_another_patients_message_changes_nothing(client, request_sent, appointment, caplog):
    PatientFactory(line_user_id=OTHER_LINE_ID)

    with caplog.at_level(logging.INFO):
        tap(client, OTHER_LINE_ID, f"confirm:{request_sent.uuid}")

    appointment.refresh_from_db()
    assert appointment.status == Appointment.Status.BOOKED
    assert "refused" in caplog.text and OTHER_LINE_ID not in caplog.text


@pytest.mark.parametrize(
    "data",
    [
        f"confirm:{uuid.uuid4()}",  # no such message
        "confirm:not-a-uuid",
        "delete:" + str(uuid.uuid4()),
        "confirm:" + "a" * 300,
        "",
        "王小明",
    ],
)
def test_unknown_or_malformed_postbacks_change_nothing(client, request_sent, appointment, data):
    tap(client, LINE_ID, data)

    appointment.refresh_from_db()
    assert appointment.status == Appointment.Status.BOOKED
    assert not StaffTask.objects.exists() and not InboundMessage.objects.exists()


@pytest.mark.parametrize("stale", ["cancelled", "past"])
def test_a_postback_for_a_cancelled_or_past_appointment_changes_nothing(
    client, request_sent, appointment, stale
):
    if stale == "cancelled":
        appointment.status = Appointment.Status.CANCELLED
    else:
        appointment.starts_at = NOW - dt.timedelta(hours=1)
    appointment.save()

    tap(client, LINE_ID, f"confirm:{request_sent.uuid}")
    tap(client, LINE_ID, f"change:{request_sent.uuid}")

    appointment.refresh_from_db()
    assert appointment.status != Appointment.Status.CONFIRMED
    assert not StaffTask.objects.exists()


@postgresql_only
def test_a_postback_for_an_appointment_deleted_by_hand_is_refused(client, request_sent):
    # No database key from the outbox to the appointment (reminders.models): the answer is
    # refused (200, nothing done), not a server error.
    delete_by_hand("patients_appointment", request_sent.appointment_id)

    tap(client, LINE_ID, f"confirm:{request_sent.uuid}")
    tap(client, LINE_ID, f"change:{request_sent.uuid}")

    assert not StaffTask.objects.exists()
    request_sent.refresh_from_db()
    assert request_sent.replied_at is None


def test_an_answer_that_does_not_fit_the_message_changes_nothing(client, checkin, request_sent):
    tap(client, LINE_ID, f"confirm:{checkin.uuid}")
    tap(client, LINE_ID, f"needcall:{request_sent.uuid}")

    assert not StaffTask.objects.exists()
    assert Appointment.objects.get().status == Appointment.Status.BOOKED


def test_a_stale_checkin_is_refused(client, checkin):
    checkin.sent_at = NOW - dt.timedelta(days=5)
    checkin.save()

    tap(client, LINE_ID, f"needcall:{checkin.uuid}")

    assert not StaffTask.objects.exists()


def test_sms_reply_codes_still_work(client, patient, appointment):
    rule = Rule.objects.filter(asks_confirmation=True).first()
    _message(rule, patient, channel="sms", appointment=appointment)

    sms_from(client, PHONE, "1")

    appointment.refresh_from_db()
    assert appointment.confirmed_via == Appointment.ConfirmedVia.REPLY


def test_postback_data_is_bounded_and_names_no_one():
    message_id = uuid.uuid4()
    data = postback_data(Answer.CONFIRM, message_id)

    assert len(data) <= MAX_DATA_CHARS and data == f"confirm:{message_id}"
    assert postback_parse(data) == (Answer.CONFIRM, message_id)
    assert postback_parse(data + "x") is None
    assert postback_parse(f"confirm:{message_id}".upper()) is None
    assert timezone.is_aware(NOW)
