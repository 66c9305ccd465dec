"""Input checks on the records staff type or import: clear zh-Hant messages, nothing dropped."""

import datetime as dt
import importlib
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import connection
from django.urls import reverse
from django.utils import translation

from consent.models import Channel, Purpose
from consent.selectors import choose_channel, consent_annotations, may_contact
from patients.models import ClinicProfile, Patient, Visit
from tests.factories import AppointmentFactory, PatientFactory, VisitFactory, grant
from tests.patients.test_admin import patient_post

pytestmark = pytest.mark.django_db
TPE = ZoneInfo("Asia/Taipei")


def errors_of(obj) -> dict[str, list[str]]:
    """Field errors full_clean reports, in the staff's language."""
    with translation.override("zh-hant"):
        try:
            obj.full_clean()
        except ValidationError as exc:
            return {
                field: [str(m) for m in messages] for field, messages in exc.message_dict.items()
            }
    return {}


def new_patient(**values) -> Patient:
    return Patient(chart_no="V000001", name="林美玲", **values)


# --- birth date ---


@time_machine.travel(dt.datetime(2026, 3, 10, 9, 0, tzinfo=TPE), tick=False)
@pytest.mark.parametrize(
    ("born", "ok"),
    [
        (dt.date(1899, 12, 31), False),
        (dt.date(1900, 1, 1), True),
        (dt.date(1958, 2, 28), True),
        (dt.date(2026, 3, 10), True),
        (dt.date(2026, 3, 11), False),
        (dt.date(2206, 1, 1), False),
    ],
)
def test_a_birth_date_is_between_1900_and_today(born, ok):
    errors = errors_of(new_patient(birth_date=born))

    if ok:
        assert "birth_date" not in errors
    else:
        assert errors["birth_date"] == ["出生日期須介於 1900-01-01 與今天之間。"]


# --- national ID and resident certificate numbers ---


@pytest.mark.parametrize(
    "number",
    [
        "A123456789",  # national ID
        "F131104093",
        "A800000014",  # resident certificate since 2021
        "AC01234567",  # resident certificate, old format
        "AA00000009",
    ],
)
def test_valid_id_and_resident_certificate_numbers_pass(number):
    assert "national_id" not in errors_of(new_patient(national_id=number))


@pytest.mark.parametrize("number", ["A123456788", "A800000015", "AC01234568", "B123456789"])
def test_a_wrong_check_digit_is_refused_with_a_message(number):
    errors = errors_of(new_patient(national_id=number))

    assert errors["national_id"] == ["證號的檢查碼不正確，請與證件核對。"]


def test_a_malformed_id_number_still_gets_the_format_message():
    errors = errors_of(new_patient(national_id="A12345"))

    assert errors["national_id"] == ["請輸入身分證字號或居留證號碼，例如 A123456789。"]


# --- phones: mobile for SMS, landline kept for calls, extensions never dropped ---


@pytest.mark.parametrize(
    ("typed", "stored", "mobile"),
    [
        ("0912-345-678", "+886912345678", True),
        ("+886 912 345 678", "+886912345678", True),
        ("02-2345-6789", "+886223456789", False),  # Taipei landline: a phone to call
        ("(04) 2345-6789", "+886423456789", False),
        ("0800-000-123", "+886800000123", False),  # toll-free
        ("+86 138 1234 5678", "+8613812345678", True),  # foreign mobile
        ("+1 202 555 0123", "+12025550123", True),  # US: mobile or fixed, can't be told apart
    ],
)
def test_a_phone_is_kept_as_e164_and_flagged_when_it_can_receive_sms(typed, stored, mobile):
    patient = new_patient(phone=typed)

    assert errors_of(patient) == {}
    patient.save()

    saved = Patient.objects.get(pk=patient.pk)
    assert saved.phone == stored
    assert saved.phone_is_mobile is mobile


@pytest.mark.parametrize(
    "typed",
    [
        "0912-345-678 #12",
        "0912-345-678 ext. 12",
        "02-2345-6789 ext 305",
        "02-2345-6789#305",
        "02-2345-6789 分機 305",
        "02-2345-6789 轉 305",
    ],
)
def test_a_phone_with_an_extension_is_refused_with_a_message_not_shortened(typed):
    errors = errors_of(new_patient(phone=typed))

    assert errors["phone"] == ["請輸入不含分機的號碼；分機請寫在備註。"]


def test_an_import_that_skips_validation_keeps_the_extension_and_never_texts_it():
    # given: a bulk import writes without full_clean
    patient = Patient.objects.create(chart_no="IMP-1", name="匯入", phone="0912-345-678 #12")

    # then: the number is kept as typed, not silently cut to +886912345678, and gets no SMS
    saved = Patient.objects.get(pk=patient.pk)
    assert saved.phone == "0912-345-678 #12"
    assert saved.phone_is_mobile is False


def test_changing_a_mobile_to_a_landline_clears_the_flag():
    patient = PatientFactory(phone="0912-345-678")
    assert Patient.objects.get(pk=patient.pk).phone_is_mobile

    patient.phone = "02-2345-6789"
    patient.save()

    assert not Patient.objects.get(pk=patient.pk).phone_is_mobile


def test_existing_patients_get_the_flag_from_the_migration():
    # given: rows as they were before the flag existed
    mobile = PatientFactory(phone="0912-345-678")
    landline = PatientFactory(phone="02-2345-6789")
    none = PatientFactory(phone="")
    Patient.objects.update(phone_is_mobile=False)
    migration = importlib.import_module("patients.migrations.0004_input_checks")

    # when
    migration.flag_mobile_phones(apps, connection.schema_editor())

    # then
    flags = dict(Patient.objects.values_list("pk", "phone_is_mobile"))
    assert flags == {mobile.pk: True, landline.pk: False, none.pk: False}


# --- SMS goes only to mobiles ---


def planned_channel(patient, purpose, channel):
    annotations = consent_annotations(purpose=purpose, channels=[channel], patient_ref="id")
    row = Patient.objects.filter(pk=patient.pk).annotate(**annotations).values(*annotations).get()
    return choose_channel(row, [channel])


def test_sms_consent_with_only_a_landline_has_no_sms_address():
    # given
    patient = PatientFactory(phone="02-2345-6789", line_user_id="U" + "a" * 32)
    grant(patient, Purpose.CARE, Channel.SMS)
    grant(patient, Purpose.CARE, Channel.LINE)

    # when
    decision = may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)
    planned = planned_channel(patient, Purpose.CARE, Channel.SMS)

    # then: the one answer, from both faces; LINE is unaffected
    assert (decision.allowed, decision.reason) == (False, "no_contact_point")
    assert (planned.allowed, planned.reason) == (False, "no_contact_point")
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)


def test_sms_consent_with_a_mobile_may_be_texted():
    patient = PatientFactory(phone="0912-345-678")
    grant(patient, Purpose.CARE, Channel.SMS)

    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)
    assert planned_channel(patient, Purpose.CARE, Channel.SMS)


# --- no control characters in single-line fields ---

SINGLE_LINE = [
    (lambda: new_patient(), "name"),
    (lambda: new_patient(), "email"),
    (lambda: new_patient(), "caregiver_contact"),
    (lambda: new_patient(), "line_user_id"),
    (lambda: new_patient(), "national_id"),
    (lambda: VisitFactory.build(patient=PatientFactory()), "department"),
    (lambda: VisitFactory.build(patient=PatientFactory()), "doctor"),
    (lambda: VisitFactory.build(patient=PatientFactory()), "diagnosis_codes"),
    (lambda: AppointmentFactory.build(patient=PatientFactory()), "department"),
    (lambda: AppointmentFactory.build(patient=PatientFactory()), "doctor"),
    (lambda: AppointmentFactory.build(patient=PatientFactory()), "location"),
    (lambda: AppointmentFactory.build(patient=PatientFactory()), "bring_notes"),
    (lambda: ClinicProfile(name="安心診所"), "name"),
    (lambda: ClinicProfile(name="安心診所"), "phone"),
    (lambda: ClinicProfile(name="安心診所"), "address"),
]
VALID = {
    "email": "lin@example.test",
    "line_user_id": "U" + "a" * 32,
    "national_id": "A123456789",
    "diagnosis_codes": "I10",
}


@pytest.mark.parametrize(
    ("make", "field"), SINGLE_LINE, ids=lambda v: v if isinstance(v, str) else ""
)
@pytest.mark.parametrize("control", ["\n", "\r", "\x00", "\t", "\x1b", "\x85"], ids=repr)
def test_a_single_line_field_refuses_control_characters(make, field, control):
    # given: a valid value with a control character at its end (a pasted line break)
    obj = make()
    good = VALID.get(field, "二樓 3 診")
    setattr(obj, field, good)
    assert field not in errors_of(obj)

    # when
    setattr(obj, field, good + control)

    # then
    assert "請刪除換行及其他控制字元：此欄位只能填一行。" in errors_of(obj)[field]


def test_a_phone_with_a_line_break_is_refused():
    assert "phone" in errors_of(new_patient(phone="0912-345-678\n"))


def test_a_chart_number_with_a_line_break_is_refused_not_quietly_joined():
    errors = errors_of(Patient(chart_no="A12\n34", name="林美玲"))

    assert errors["chart_no"] == ["請刪除換行及其他控制字元：此欄位只能填一行。"]


@pytest.mark.parametrize(("make", "field"), [(new_patient, "notes"), (Visit, "note")])
def test_multi_line_notes_keep_line_breaks_but_never_nul(make, field):
    obj = make()
    setattr(obj, field, "第一行\n第二行\r\n\t縮排")
    assert field not in errors_of(obj)

    setattr(obj, field, "第一行\x00")
    assert errors_of(obj)[field] == ["請刪除文字中的 NUL 等控制字元。"]


# --- what the front desk sees ---


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


def test_the_admin_shows_the_extension_message_and_saves_nothing(desk):
    with translation.override("zh-hant"):
        response = desk.post(
            reverse("admin:patients_patient_add"), patient_post(phone="0912-345-678 #12")
        )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["phone"] == [
        "請輸入不含分機的號碼；分機請寫在備註。"
    ]
    assert not Patient.objects.exists()


def test_the_admin_keeps_a_landline_as_a_phone_to_call(desk):
    response = desk.post(reverse("admin:patients_patient_add"), patient_post(phone="02-2345-6789"))

    assert response.status_code == 302
    patient = Patient.objects.get(chart_no="A000123")
    assert (patient.phone, patient.phone_is_mobile) == ("+886223456789", False)
