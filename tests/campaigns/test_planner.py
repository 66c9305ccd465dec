import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from campaigns.models import Rule, Skip
from campaigns.planner import message_text
from consent.models import Channel, Purpose
from patients.models import Appointment, ClinicProfile, Condition, RefillWindow
from patients.services import prescription_sync_refills
from reminders.models import OutboxMessage, StaffTask
from tests.factories import (
    AppointmentFactory,
    PatientFactory,
    PrescriptionFactory,
    ProcedureFactory,
    VisitFactory,
    grant,
    withdraw,
)
from tests.helpers import only, plan, taipei, text_of

pytestmark = pytest.mark.django_db
TPE = ZoneInfo("Asia/Taipei")


def skip_reason(patient, rule) -> str:
    return Skip.objects.get(patient=patient, rule=rule).reason


# --- birthday ---------------------------------------------------------------------------------


def test_birthday_greeting_is_queued_on_the_day_in_the_patients_language(clinic):
    rule = only("生日祝福")
    patient = PatientFactory(name="Chen Ya-ting", birth_date=dt.date(1970, 11, 24), sex="F")
    patient.preferred_language = "en"
    patient.save()
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(taipei(2026, 11, 24, 8, 0))

    message = OutboxMessage.objects.get(patient=patient)
    assert message.rule == rule and message.channel == "sms"
    assert text_of(message).body.startswith("Happy birthday, Chen Ya-ting!")
    assert message.due_at == taipei(2026, 11, 24, 10, 0)


def test_planning_twice_queues_nothing_more():
    only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1970, 11, 24))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    first = plan(taipei(2026, 11, 24, 8, 0))
    second = plan(taipei(2026, 11, 24, 8, 5))

    assert sum(r.queued for r in first.values()) == 1
    assert sum(r.queued for r in second.values()) == 0
    assert OutboxMessage.objects.count() == 1


def test_zh_hant_greeting_addresses_the_patient_politely(clinic):
    only("生日祝福")
    patient = PatientFactory(name="林美玲", sex="F", birth_date=dt.date(1960, 11, 24))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(taipei(2026, 11, 24, 8, 0))

    assert text_of(OutboxMessage.objects.get()).body.startswith("林小姐生日快樂！安心診所")


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (dt.date(2027, 2, 28), True),  # common year: Feb 29 birthdays greeted on Feb 28
        (dt.date(2028, 2, 28), False),  # leap year: wait for the real day
        (dt.date(2028, 2, 29), True),
        (dt.date(2027, 3, 1), False),
    ],
)
def test_feb_29_birthdays(today, expected):
    only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1960, 2, 29))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(taipei(today.year, today.month, today.day, 8, 0))

    assert OutboxMessage.objects.filter(patient=patient).exists() is expected


def test_month_end_birthday_is_not_confused_with_the_next_month():
    only("生日祝福")
    born_31st = PatientFactory(birth_date=dt.date(1980, 1, 31))
    born_1st = PatientFactory(birth_date=dt.date(1980, 2, 1))
    for patient in (born_31st, born_1st):
        grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(taipei(2027, 1, 31, 8, 0))

    assert list(OutboxMessage.objects.values_list("patient", flat=True)) == [born_31st.pk]


def test_birthday_needs_relationship_consent_not_care_consent():
    rule = only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1970, 11, 24))
    grant(patient, Purpose.CARE, Channel.SMS)

    plan(taipei(2026, 11, 24, 8, 0))

    assert not OutboxMessage.objects.exists()
    assert skip_reason(patient, rule) == "no_consent"


def test_withdrawn_consent_is_recorded_as_the_reason():
    rule = only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1970, 11, 24))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    withdraw(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(taipei(2026, 11, 24, 8, 0))

    assert not OutboxMessage.objects.exists()
    assert skip_reason(patient, rule) == "withdrawn"


def test_erased_patient_is_skipped_as_erased(manager_user):
    from patients.services import patient_erase

    rule = only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1970, 11, 24))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    patient_erase(patient=patient, actor=manager_user)

    plan(taipei(2026, 11, 24, 8, 0))

    assert skip_reason(patient, rule) == "erased"


def test_consent_on_a_channel_without_an_address_is_recorded_as_no_contact_point():
    rule = only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1970, 11, 24), line_user_id="")
    grant(patient, Purpose.RELATIONSHIP, Channel.LINE)

    plan(taipei(2026, 11, 24, 8, 0))

    assert skip_reason(patient, rule) == "no_contact_point"


def test_later_consent_lets_the_next_planning_run_queue_it():
    rule = only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1970, 11, 24))
    plan(taipei(2026, 11, 24, 8, 0))
    assert skip_reason(patient, rule) == "no_consent"

    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    plan(taipei(2026, 11, 24, 9, 0))

    assert OutboxMessage.objects.filter(patient=patient).count() == 1


def test_audience_age_range_is_applied_and_explained():
    rule = only("生日祝福")
    rule.min_age = 65
    rule.save()
    old = PatientFactory(birth_date=dt.date(1950, 11, 24))
    young = PatientFactory(birth_date=dt.date(2000, 11, 24))
    for patient in (old, young):
        grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(taipei(2026, 11, 24, 8, 0))

    assert list(OutboxMessage.objects.values_list("patient", flat=True)) == [old.pk]
    assert skip_reason(young, rule) == "outside_audience"


def test_relationship_frequency_cap(settings):
    settings.RELATIONSHIP_MESSAGES_PER_30_DAYS = 1
    rule = only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1970, 11, 24))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    other = Rule.objects.create(
        name="健康新知", kind="birthday", purpose="relationship", offsets=[1], channel_order=["sms"]
    )
    OutboxMessage.objects.create(
        rule=other,
        patient=patient,
        occurrence_key="news:1",
        purpose="relationship",
        channel="sms",
        status="sent",
        due_at=taipei(2026, 11, 20, 10),
        next_attempt_at=taipei(2026, 11, 20, 10),
        expires_at=taipei(2026, 11, 21),
        body="x",
    )

    plan(taipei(2026, 11, 24, 8, 0))

    assert skip_reason(patient, rule) == "frequency_cap"


def test_closed_day_makes_a_same_day_greeting_stale(clinic):
    clinic.closed_weekdays = [1]  # Tuesday; 2026-11-24 is a Tuesday
    clinic.save()
    rule = only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1970, 11, 24))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(taipei(2026, 11, 24, 8, 0))

    assert not OutboxMessage.objects.exists()
    assert skip_reason(patient, rule) == "stale"


def test_preferred_channel_goes_first_and_the_others_wait_with_their_texts_made_when_needed():
    only("生日祝福")
    patient = PatientFactory(
        birth_date=dt.date(1970, 11, 24), line_user_id="U" + "b" * 32, preferred_channel="sms"
    )
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    grant(patient, Purpose.RELATIONSHIP, Channel.LINE)

    plan(taipei(2026, 11, 24, 8, 0))

    message = OutboxMessage.objects.get()
    assert message.channel == "sms"
    assert message.channels_left == ["line", "email"]
    assert "生日快樂" in text_of(message).body
    # The LINE text is made only if the message falls through to LINE (tests/reminders/
    # test_fallthrough.py); made now, it greets the same patient.
    line = message_text(message, "line", now=taipei(2026, 11, 24, 10, 0))
    assert line is not None and "生日快樂" in line.body


# --- post-op ----------------------------------------------------------------------------------


def test_post_op_check_ins_on_day_1_3_and_7_and_instructions_on_the_day():
    only("術後")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    procedure = ProcedureFactory(
        patient=patient,
        performed_at=taipei(2026, 11, 20, 9),
        discharged_at=taipei(2026, 11, 20, 15),
        procedure_type="白內障手術",
    )

    for day in (20, 21, 22, 23, 24, 27):
        plan(taipei(2026, 11, day, 8, 0))

    keys = sorted(OutboxMessage.objects.values_list("occurrence_key", flat=True))
    assert keys == [f"procedure:{procedure.pk}:day{d}" for d in (0, 1, 3, 7)]
    day3 = OutboxMessage.objects.get(occurrence_key__endswith="day3")
    assert "白內障手術後第 3 天" in text_of(day3).body
    day0 = OutboxMessage.objects.get(occurrence_key__endswith="day0")
    assert day0.due_at == taipei(2026, 11, 20, 15)


def test_post_op_call_task_for_day_1_to_3_needs_no_message_consent():
    only("術後關懷")
    procedure = ProcedureFactory(
        performed_at=taipei(2026, 11, 23, 9), discharged_at=taipei(2026, 11, 23, 12)
    )

    plan(taipei(2026, 11, 24, 8, 0))
    plan(taipei(2026, 11, 25, 8, 0))

    task = StaffTask.objects.get()
    assert task.procedure == procedure and task.kind == "postop_call"
    assert (task.due_on, task.until) == (dt.date(2026, 11, 24), dt.date(2026, 11, 26))


# --- medication -------------------------------------------------------------------------------


def test_dose_reminders_only_when_switched_on_and_not_at_night():
    only("用藥提醒")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    wanted = PrescriptionFactory(
        patient=patient,
        frequency="TID",
        dose_times=["08:00", "12:00", "18:00"],
        start_date=dt.date(2026, 11, 20),
        days_supplied=7,
        dose_reminders=True,
    )
    PrescriptionFactory(patient=patient, start_date=dt.date(2026, 11, 20), dose_reminders=False)

    plan(taipei(2026, 11, 24, 7, 0))

    keys = set(OutboxMessage.objects.values_list("occurrence_key", flat=True))
    # 07:45 for the 08:00 dose is before the 09:00 window, and the dose is over by then.
    assert keys == {
        f"dose:{wanted.pk}:2026-11-24T12:00:15",
        f"dose:{wanted.pk}:2026-11-24T18:00:15",
    }
    noon = OutboxMessage.objects.get(occurrence_key=f"dose:{wanted.pk}:2026-11-24T12:00:15")
    assert noon.due_at == taipei(2026, 11, 24, 11, 45)
    assert noon.expires_at == taipei(2026, 11, 24, 12, 0)
    assert "12:00 請服用 Amlodipine 5mg" in text_of(noon).body
    assert not OutboxMessage.objects.filter(occurrence_key__contains="T08:00").exists()


def test_no_dose_reminders_after_the_course_ends():
    only("用藥提醒")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    PrescriptionFactory(
        patient=patient, start_date=dt.date(2026, 11, 1), days_supplied=7, dose_reminders=True
    )

    plan(taipei(2026, 11, 24, 7, 0))

    assert not OutboxMessage.objects.exists()


def test_chronic_refill_reminders_when_the_window_opens_and_before_it_closes():
    only("慢箋")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    prescription = PrescriptionFactory(
        patient=patient, start_date=dt.date(2026, 11, 1), days_supplied=28, refills=2
    )
    prescription_sync_refills(prescription=prescription)
    first = prescription.refill_windows.get(number=1)
    assert (first.opens_on, first.closes_on) == (dt.date(2026, 11, 19), dt.date(2026, 11, 28))

    plan(taipei(2026, 11, 19, 8, 0))
    plan(taipei(2026, 11, 26, 8, 0))

    keys = sorted(OutboxMessage.objects.values_list("occurrence_key", flat=True))
    assert keys == [f"refill:{first.pk}:closes_on-2", f"refill:{first.pk}:opens_on+0"]
    opening = OutboxMessage.objects.get(occurrence_key__endswith="opens_on+0")
    assert "第 1 次領藥期間為 11月19日（四） 至 11月28日（六）" in text_of(opening).body


def test_no_refill_reminder_once_picked_up():
    only("慢箋即將逾期")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    prescription = PrescriptionFactory(
        patient=patient, start_date=dt.date(2026, 11, 1), days_supplied=28, refills=1
    )
    prescription_sync_refills(prescription=prescription)
    RefillWindow.objects.update(picked_up_on=dt.date(2026, 11, 20))

    plan(taipei(2026, 11, 26, 8, 0))

    assert not OutboxMessage.objects.exists()


# --- return visits ----------------------------------------------------------------------------


def test_return_visit_notice_seven_days_before_with_the_details():
    only("回診通知")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(
        patient=patient,
        starts_at=taipei(2026, 12, 1, 14, 30),
        department="家醫科",
        doctor="王醫師",
        location="二樓 3 診",
        bring_notes="健保卡",
    )

    plan(taipei(2026, 11, 24, 8, 0))

    body = text_of(OutboxMessage.objects.get()).body
    assert "12月1日（二） 14:30 家醫科 王醫師 回診，地點：二樓 3 診。請攜帶：健保卡。" in body


def test_no_reminders_for_cancelled_or_attended_appointments():
    only("回診")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    for status in (Appointment.Status.CANCELLED, Appointment.Status.ATTENDED):
        AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 10), status=status)
        AppointmentFactory(patient=patient, starts_at=taipei(2026, 11, 25, 10), status=status)

    plan(taipei(2026, 11, 24, 8, 0))

    assert not OutboxMessage.objects.exists()


def test_confirmation_request_skips_an_already_confirmed_appointment():
    rule = only("回診確認")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(
        patient=patient, starts_at=taipei(2026, 11, 25, 10), status=Appointment.Status.CONFIRMED
    )

    plan(taipei(2026, 11, 24, 8, 0))

    assert skip_reason(patient, rule) == "already_confirmed"


def test_rescheduled_appointment_gets_a_new_reminder_with_the_new_time():
    only("回診確認")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    appointment = AppointmentFactory(patient=patient, starts_at=taipei(2026, 11, 25, 10))
    plan(taipei(2026, 11, 24, 8, 0))

    appointment.starts_at = taipei(2026, 11, 25, 15, 30)
    appointment.save()
    plan(taipei(2026, 11, 24, 9, 0))

    bodies = {m.occurrence_key: text_of(m).body for m in OutboxMessage.objects.all()}
    assert len(bodies) == 2
    new_start = taipei(2026, 11, 25, 15, 30).astimezone(dt.UTC)
    new_key = f"appointment:{appointment.pk}:{new_start.isoformat()}"
    assert "15:30" in bodies[new_key]


# --- recall -----------------------------------------------------------------------------------


def test_recall_for_a_chronic_patient_with_no_visit_booked():
    only("慢性病回診召回")
    due = PatientFactory()
    due.conditions.add(Condition.objects.get(code="hypertension"))
    booked = PatientFactory()
    booked.conditions.add(Condition.objects.get(code="diabetes"))
    healthy = PatientFactory()
    for patient in (due, booked, healthy):
        grant(patient, Purpose.CARE, Channel.SMS)
        VisitFactory(patient=patient, visited_on=dt.date(2026, 8, 26))
    AppointmentFactory(patient=booked, starts_at=taipei(2026, 12, 3, 9))

    plan(taipei(2026, 11, 24, 8, 0))

    message = OutboxMessage.objects.get()
    assert message.patient == due
    assert message.occurrence_key == "recall:2026-08-26"
    assert "8月26日（三）" in text_of(message).body


def test_recall_is_not_repeated_on_the_following_days():
    only("慢性病回診召回")
    patient = PatientFactory()
    patient.conditions.add(Condition.objects.get(code="hypertension"))
    grant(patient, Purpose.CARE, Channel.SMS)
    VisitFactory(patient=patient, visited_on=dt.date(2026, 8, 26))

    for day in (24, 25, 26):
        plan(taipei(2026, 11, day, 8, 0))

    assert OutboxMessage.objects.count() == 1


# --- robustness -------------------------------------------------------------------------------


def test_a_rule_without_a_template_for_the_channel_records_why():
    rule = only("生日祝福")
    rule.templates.filter(channel="sms").delete()
    patient = PatientFactory(birth_date=dt.date(1970, 11, 24))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(taipei(2026, 11, 24, 8, 0))

    assert skip_reason(patient, rule) == "no_template"


def test_one_broken_rule_does_not_stop_the_others():
    broken = only("生日祝福")
    Rule.objects.filter(pk=broken.pk).update(offsets="not a list")
    Rule.objects.filter(name__startswith="回診通知").update(enabled=True)
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 10))

    results = plan(taipei(2026, 11, 24, 8, 0))

    assert OutboxMessage.objects.count() == 1
    assert [rule.name for rule in results] == ["回診通知"]


def test_default_profile_is_created_when_missing():
    ClinicProfile.objects.all().delete()
    only("生日祝福")

    plan(taipei(2026, 11, 24, 8, 0))

    assert ClinicProfile.objects.count() == 1
