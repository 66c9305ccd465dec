"""How was your visit? (issue 10, item 6): the survey kind selects attended visits its offset
ago, one per patient and day, never a patient asked within SURVEY_MIN_DAYS (in SQL, at the
planner); the answer comes as a LINE quick reply or an SMS digit, a text after it is its
comment, and low ratings and comments reach the inbox as feedback."""

import datetime as dt
import uuid

import pytest
import time_machine
from django.urls import reverse

from campaigns.models import Rule, RuleKind
from consent.models import Channel, Purpose
from patients.models import Appointment
from patients.services import patient_erase
from reminders.models import InboundMessage, OutboxMessage, StaffTask, Status
from reminders.retention import retention_apply
from reminders.services import messages_dispatch
from surveys.models import VisitRating
from surveys.services import feedback_ids
from tests.factories import (
    AppointmentFactory,
    PatientFactory,
    ProcedureFactory,
    VisitFactory,
    grant,
)
from tests.helpers import only, plan, taipei, text_of
from tests.reminders.inbound import (
    LINE_ID,
    PHONE,
    frozen_at,
    line_event,
    line_post,
    line_text,
    sms_from,
)
from tests.reminders.test_line_buttons import _nested_violations

pytestmark = pytest.mark.django_db
NOW = taipei(2026, 3, 10, 9, 0)  # a Tuesday; the survey goes out at 10:00
TODAY = NOW.date()
SEND_AT = taipei(2026, 3, 10, 10, 0)


frozen = frozen_at(NOW)


@pytest.fixture
def survey():
    rule = only("就診滿意度")
    assert rule is not None and rule.kind == RuleKind.VISIT_SURVEY and not rule.enabled
    rule.enabled = True  # shipped switched off
    rule.save()
    return rule


def consenting(**fields):
    patient = PatientFactory(**fields)
    for channel in (Channel.SMS, Channel.LINE):
        grant(patient, Purpose.RELATIONSHIP, channel)
    return patient


def planned(rule):
    return OutboxMessage.objects.filter(rule=rule)


def asked(rule, patient, due_at, status=Status.SENT):
    return OutboxMessage.objects.create(
        rule=rule,
        patient=patient,
        occurrence_key=f"survey:visit:{uuid.uuid4().int % 10**6}",
        purpose=Purpose.RELATIONSHIP,
        channel="sms",
        due_at=due_at,
        next_attempt_at=due_at,
        expires_at=due_at + dt.timedelta(hours=12),
        body="…",
        status=status,
        sent_at=due_at if status == Status.SENT else None,
    )


# --- who is asked ----------------------------------------------------------------------------


def test_attended_visits_a_day_ago_are_asked_once_per_patient_and_day(survey):
    yesterday = TODAY - dt.timedelta(days=1)
    visited = consenting()
    first = VisitFactory(patient=visited, visited_on=yesterday, doctor="王醫師")
    VisitFactory(patient=visited, visited_on=yesterday, department="眼科")  # same day: once
    VisitFactory(patient=consenting(), visited_on=TODAY - dt.timedelta(days=2))  # not the offset
    VisitFactory(patient=consenting(), visited_on=TODAY)  # today: tomorrow's
    # Booked, cancelled or a no-show yesterday: no visit was recorded, nothing to ask about.
    for status in (Appointment.Status.BOOKED, Appointment.Status.NO_SHOW):
        AppointmentFactory(patient=consenting(), starts_at=taipei(2026, 3, 9, 10, 0), status=status)

    plan(NOW)

    [message] = planned(survey)
    assert (message.patient, message.occurrence_key) == (visited, f"survey:visit:{first.pk}")
    assert message.due_at == SEND_AT
    text = text_of(message).body
    assert "王醫師" in text and "1 到 5" in text


@pytest.mark.parametrize(
    ("days_ago", "status", "asked_again"),
    [
        (89, Status.SENT, False),
        (90, Status.SENT, True),  # the boundary: SURVEY_MIN_DAYS after the last one, again
        (30, Status.QUEUED, False),
        (30, Status.DROPPED, True),  # dropped by the gate: never asked
        (30, Status.FAILED, True),
    ],
)
def test_a_patient_is_asked_at_most_once_per_period(survey, days_ago, status, asked_again):
    patient = consenting()
    VisitFactory(patient=patient, visited_on=TODAY - dt.timedelta(days=1))
    before = asked(survey, patient, SEND_AT - dt.timedelta(days=days_ago), status)

    plan(NOW)

    assert planned(survey).exclude(pk=before.pk).exists() == asked_again


def test_the_period_is_a_setting(survey, settings):
    settings.SURVEY_MIN_DAYS = 30
    patient = consenting()
    VisitFactory(patient=patient, visited_on=TODAY - dt.timedelta(days=1))
    asked(survey, patient, SEND_AT - dt.timedelta(days=45))

    plan(NOW)

    assert planned(survey).count() == 2


def test_planning_twice_queues_nothing_more(survey):
    VisitFactory(patient=consenting(), visited_on=TODAY - dt.timedelta(days=1))

    plan(NOW)
    plan(NOW + dt.timedelta(hours=2))

    assert planned(survey).count() == 1


# --- answers ---------------------------------------------------------------------------------


@pytest.fixture
def patient():
    return consenting(phone=PHONE, line_user_id=LINE_ID)


def sent_survey(rule, patient, channel, *, hours_ago=2, visit=None):
    visit = visit or VisitFactory(
        patient=patient, visited_on=TODAY - dt.timedelta(days=1), department="眼科", doctor="林醫師"
    )
    at = NOW - dt.timedelta(hours=hours_ago)
    return OutboxMessage.objects.create(
        rule=rule,
        patient=patient,
        occurrence_key=f"survey:visit:{visit.pk}",
        purpose=Purpose.RELATIONSHIP,
        channel=channel,
        due_at=at,
        next_attempt_at=at,
        expires_at=at + dt.timedelta(hours=12),
        body="這次看診您滿意嗎？請回覆 1 到 5 分",
        status=Status.SENT,
        sent_at=at,
    )


def tap(client, data):
    event = line_event("postback", LINE_ID, replyToken=uuid.uuid4().hex, postback={"data": data})
    assert line_post(client, event).status_code == 200
    return event


def test_the_survey_goes_out_on_line_with_quick_replies_1_to_5(survey, patient, fake_line):
    message = sent_survey(survey, patient, "line")
    OutboxMessage.objects.filter(pk=message.pk).update(status=Status.QUEUED, sent_at=None)

    with time_machine.travel(SEND_AT, tick=False):
        messages_dispatch(batch_size=5, time_budget=10)

    [line_message] = fake_line.delivered[0]["messages"]
    items = [item["action"] for item in line_message["quickReply"]["items"]]
    assert [a["data"] for a in items] == [f"rate{n}:{message.uuid}" for n in range(1, 6)]
    assert _nested_violations(line_message) == []


def test_a_line_rating_is_stored_with_the_visits_doctor_and_department(client, survey, patient):
    message = sent_survey(survey, patient, "line")

    event = tap(client, f"rate4:{message.uuid}")
    line_post(client, {**event, "deliveryContext": {"isRedelivery": True}})  # replayed
    tap(client, f"rate1:{message.uuid}")  # rated already: the first answer stands

    rating = VisitRating.objects.get()
    assert (rating.patient, rating.message, rating.channel) == (patient, message, "line")
    assert (rating.rating, rating.department, rating.doctor) == (4, "眼科", "林醫師")
    assert rating.rated_at == NOW and rating.visit is not None
    assert not InboundMessage.objects.exists()  # a good rating asks nothing of staff
    message.refresh_from_db()
    assert message.replied_at == NOW


def test_a_low_rating_lands_in_the_inbox_as_feedback(client, survey, patient):
    message = sent_survey(survey, patient, "line")

    tap(client, f"rate2:{message.uuid}")

    rating = VisitRating.objects.get()
    note = InboundMessage.objects.get()
    assert rating.rating == 2 and rating.low_rating_note == note
    assert note.patient == patient and "2" in note.text
    assert feedback_ids(InboundMessage.objects.all()) == {note.pk}


def test_an_sms_digit_rates_and_the_next_text_is_its_comment(client, survey, patient):
    sent_survey(survey, patient, "sms")

    sms_from(client, PHONE, "５")  # full-width from a Chinese keyboard
    sms_from(client, PHONE, "醫師很親切，謝謝")
    sms_from(client, PHONE, "請問下次幾點？")  # a second text is only for the inbox

    rating = VisitRating.objects.get()
    assert (rating.rating, rating.comment, rating.commented_at) == (5, "醫師很親切，謝謝", NOW)
    kept = InboundMessage.objects.order_by("id")
    assert [row.text for row in kept] == ["醫師很親切，謝謝", "請問下次幾點？"]
    assert feedback_ids(kept) == {kept[0].pk} == {rating.comment_message_id}


def test_an_answer_goes_to_the_newest_open_survey_on_that_channel(client, survey, patient):
    sent_survey(survey, patient, "line")  # LINE's survey is not answered by SMS
    old = sent_survey(survey, patient, "sms", hours_ago=5)
    new = sent_survey(survey, patient, "sms", hours_ago=1)

    sms_from(client, PHONE, "3")
    sms_from(client, PHONE, "4")

    assert dict(VisitRating.objects.values_list("message", "rating")) == {new.pk: 3, old.pk: 4}


def test_a_survey_older_than_the_window_is_not_answered(client, survey, patient):
    sent_survey(survey, patient, "sms", hours_ago=8 * 24)

    sms_from(client, PHONE, "5")

    assert not VisitRating.objects.exists()
    assert InboundMessage.objects.get().text == "5"  # kept for staff, as any text


def test_a_digit_answers_what_was_asked_last(client, survey, patient):
    appointment = AppointmentFactory(patient=patient, starts_at=NOW + dt.timedelta(days=1))
    confirmation = Rule.objects.get(kind=RuleKind.APPOINTMENT, asks_confirmation=True)
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
        sent_at=NOW - dt.timedelta(hours=3),
    )
    sent_survey(survey, patient, "sms", hours_ago=1)

    sms_from(client, PHONE, "1")  # the survey came after the confirmation request
    sms_from(client, PHONE, "1")  # the survey is rated: now it confirms

    assert VisitRating.objects.get().rating == 1
    appointment.refresh_from_db()
    assert appointment.status == Appointment.Status.CONFIRMED


def test_a_rating_of_another_patients_survey_changes_nothing(client, survey, patient):
    other = consenting(line_user_id="U" + "6" * 32)
    theirs = sent_survey(survey, other, "line")

    tap(client, f"rate5:{theirs.uuid}")
    line_post(client, line_text(LINE_ID, "5"))  # no survey of theirs open on LINE

    assert not VisitRating.objects.exists()


def test_the_conversation_marks_the_feedback_to_follow_up(client, survey, patient, front_desk_user):
    message = sent_survey(survey, patient, "line")
    tap(client, f"rate1:{message.uuid}")
    line_post(client, line_text(LINE_ID, "等了一個半小時"))
    line_post(client, line_text(LINE_ID, "請問停車場在哪？"))  # not feedback
    client.force_login(front_desk_user)

    html = client.get(reverse("desk:conversation", args=[patient.pk])).content.decode()

    assert html.count("就診意見：請追蹤") == 2
    assert VisitRating.objects.get().comment == "等了一個半小時"


def test_comments_are_blanked_after_the_inbox_retention_and_with_the_patient(
    client, survey, patient, settings, front_desk_user
):
    settings.RETAIN_INBOX_TEXT_DAYS = 180
    sent_survey(survey, patient, "sms")
    sms_from(client, PHONE, "2")
    sms_from(client, PHONE, "櫃台態度不好")

    assert retention_apply(now=NOW + dt.timedelta(days=179))["visit comments"] == 0
    done = retention_apply(now=NOW + dt.timedelta(days=181))

    rating = VisitRating.objects.get()
    assert done["visit comments"] == 1
    assert (rating.rating, rating.comment) == (2, "")  # the rating stays for the dashboard

    rating.comment = "再寫一次"
    rating.save()
    patient_erase(patient=patient, actor=front_desk_user)
    rating.refresh_from_db()
    assert rating.comment == ""


def test_a_3_after_a_later_postop_checkin_asks_for_the_call_not_a_rating(client, survey, patient):
    sent_survey(survey, patient, "sms", hours_ago=5)
    checkin = OutboxMessage.objects.create(
        rule=Rule.objects.get(name__startswith="術後關懷"),
        patient=patient,
        procedure=ProcedureFactory(patient=patient),
        occurrence_key="postop:1",
        purpose="care",
        channel="sms",
        due_at=NOW - dt.timedelta(hours=1),
        next_attempt_at=NOW - dt.timedelta(hours=1),
        expires_at=NOW,
        body="恢復還好嗎？回覆 3 請護理師來電",
        status=Status.SENT,
        sent_at=NOW - dt.timedelta(hours=1),
    )

    sms_from(client, PHONE, "3")

    assert not VisitRating.objects.exists()
    assert StaffTask.objects.get().message == checkin
