import datetime as dt
import re
from io import StringIO
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
import time_machine
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from consent.models import Action, Channel, ConsentEntry, ConsentState, Purpose, Source
from consent.services import consent_bulk_record
from patients.management.commands.seed_demo import DemoPatient, demo_patients
from patients.models import Appointment, Patient, Procedure, RefillWindow
from tests.factories import PatientFactory, grant

TAIPEI = ZoneInfo("Asia/Taipei")
TODAY = dt.date(2026, 3, 10)


@pytest.fixture(autouse=True)
def _development(settings):
    """Demo data is for development machines (pytest-django runs with DEBUG off)."""
    settings.DEBUG = True


@pytest.fixture
def frozen_today():
    with time_machine.travel(dt.datetime(2026, 3, 10, 15, 0, tzinfo=TAIPEI), tick=False):
        yield TODAY


def seed(**options) -> str:
    out = StringIO()
    call_command("seed_demo", stdout=out, **options)
    return out.getvalue()


def fingerprint(demo: DemoPatient) -> tuple:
    p = demo.patient
    return (
        (p.chart_no, p.name, p.sex, p.birth_date, p.phone, p.email, p.line_user_id),
        (p.national_id, p.preferred_language, p.preferred_channel, p.caregiver_contact, p.notes),
        tuple(demo.condition_codes),
        tuple(
            (v.visited_on, v.department, v.doctor, v.diagnosis_codes, v.note) for v in demo.visits
        ),
        tuple(
            (r.drug, r.frequency, r.start_date, r.days_supplied, r.refills, r.dose_reminders)
            for r in demo.prescriptions
        ),
        tuple((w.number, w.opens_on, w.closes_on, w.picked_up_on) for w in demo.refill_windows),
        tuple((x.procedure_type, x.performed_at, x.discharged_at) for x in demo.procedures),
        tuple((a.starts_at, a.department, a.doctor, a.status) for a in demo.appointments),
        tuple((c.purpose, c.channel, c.action, c.recorded_at) for c in demo.consent_entries),
    )


def test_same_seed_and_day_generate_the_same_patients():
    def run(seed):
        return [fingerprint(d) for d in demo_patients(seed=seed, count=80, today=TODAY)]

    first = run(7)

    assert run(7) == first
    assert run(8) != first


def test_generated_records_pass_the_checks_a_hand_entered_record_would():
    # bulk_create skips validation, so the generator itself must produce valid values.
    demos = list(demo_patients(seed=3, count=300, today=TODAY))

    for demo in demos:
        demo.patient.clean_fields()
        for row in [*demo.visits, *demo.prescriptions, *demo.procedures, *demo.appointments]:
            row.clean_fields(exclude=["patient", "visit"])
            row.clean()
        for entry in demo.consent_entries:
            entry.clean_fields(exclude=["patient"])
            assert entry.recorded_at.date() < TODAY
    phones = [d.patient.phone for d in demos if d.patient.phone]
    assert all(phonenumbers.is_valid_number(phonenumbers.parse(p)) for p in phones)
    assert all(re.fullmatch(r"\+8869\d{8}", p) for p in phones)
    national_ids = [d.patient.national_id for d in demos if d.patient.national_id]
    assert national_ids
    assert len(set(national_ids)) == len(national_ids)


@pytest.mark.django_db
def test_seeded_database_has_every_case_a_demo_needs(frozen_today):
    output = seed(patients=150, seed=3)

    assert "Seeded 150 patients (D000001–D000150)" in output
    patients = Patient.objects.all()
    assert patients.count() == 150
    line_linked = patients.filter(line_user_id_bidx__isnull=False)
    email_only = patients.filter(
        email_bidx__isnull=False, phone_bidx__isnull=True, line_user_id_bidx__isnull=True
    )
    unreachable = patients.filter(
        email_bidx__isnull=True, phone_bidx__isnull=True, line_user_id_bidx__isnull=True
    )
    assert line_linked.exists() and email_only.exists() and unreachable.exists()
    assert patients.filter(national_id_bidx__isnull=False).exists()
    assert 0.15 < patients.filter(conditions__isnull=False).distinct().count() / 150 < 0.5
    assert patients.filter(birth_mmdd=310).exists()
    assert patients.filter(birth_date__month=2, birth_date__day=29).exists()
    booked = Appointment.objects.filter(status=Appointment.Status.BOOKED)
    assert booked.filter(starts_at__date=TODAY + dt.timedelta(days=1)).exists()
    assert booked.filter(starts_at__date=TODAY + dt.timedelta(days=7)).exists()
    for days_ago in (0, 1, 3, 7):
        day = TODAY - dt.timedelta(days=days_ago)
        assert Procedure.objects.filter(discharged_at__date=day).exists()
    assert RefillWindow.objects.filter(opens_on=TODAY).exists()


@pytest.mark.django_db
def test_seeded_consent_is_mixed_and_each_state_follows_the_newest_entry(frozen_today):
    seed(patients=150, seed=3)

    states = ConsentState.objects.select_related("entry")
    assert states.filter(granted=True).exists()
    assert states.filter(granted=False, entry__source=Source.SMS_KEYWORD).exists()
    assert Patient.objects.filter(consent_states__isnull=True).exists()
    for state in states:
        newest = ConsentEntry.objects.filter(
            patient_id=state.patient_id, purpose=state.purpose, channel=state.channel
        ).first()
        assert state.entry == newest
        assert state.granted == (newest.action == Action.GRANT)


@pytest.mark.django_db
def test_seeded_patients_read_back_decrypted(frozen_today):
    seed(patients=20, seed=3)

    patient = Patient.objects.get(chart_no="D000001")
    assert re.fullmatch(r"[\u4e00-\u9fff]{2,4}", patient.name)
    assert re.fullmatch(r"\+8869\d{8}", patient.phone)
    assert Patient.objects.filter(phone_bidx=Patient.index_of("phone", patient.phone)).exists()


@pytest.mark.django_db
def test_chart_numbers_continue_after_the_highest_demo_number(frozen_today):
    PatientFactory(chart_no="D000041")
    PatientFactory(chart_no="T999999")

    seed(patients=3, seed=3)

    seeded = Patient.objects.exclude(chart_no__in=["D000041", "T999999"])
    assert sorted(seeded.values_list("chart_no", flat=True)) == ["D000042", "D000043", "D000044"]


@pytest.mark.django_db
def test_chart_numbers_past_a_million_continue_by_number_not_by_text(frozen_today):
    PatientFactory(chart_no="D999999")
    PatientFactory(chart_no="D1000000")

    seed(patients=1, seed=3)

    assert Patient.objects.filter(chart_no="D1000001").exists()


@pytest.mark.django_db
def test_seeding_twice_with_the_same_seed_adds_patients_without_clashing(frozen_today):
    seed(patients=60, seed=3)

    seed(patients=60, seed=3)

    assert Patient.objects.count() == 120
    assert Patient.objects.filter(chart_no="D000120").exists()


@pytest.mark.django_db
def test_if_empty_seeds_an_empty_database(frozen_today):
    seed(patients=5, seed=1, if_empty=True)

    assert Patient.objects.count() == 5


@pytest.mark.django_db
def test_if_empty_does_nothing_when_patients_exist(frozen_today):
    PatientFactory()

    output = seed(patients=5, seed=1, if_empty=True)

    assert Patient.objects.count() == 1
    assert "added none" in output


@pytest.mark.django_db
def test_bulk_consent_state_follows_the_newest_entry_not_the_list_order():
    patient = PatientFactory()
    at = dt.datetime(2026, 1, 5, 10, 0, tzinfo=TAIPEI)

    def entry(action, day_offset):
        return ConsentEntry(
            patient=patient,
            purpose=Purpose.CARE,
            channel=Channel.SMS,
            action=action,
            source=Source.PAPER_FORM,
            recorded_at=at + dt.timedelta(days=day_offset),
        )

    written = consent_bulk_record(
        entries=[entry(Action.GRANT, 0), entry(Action.WITHDRAW, 2), entry(Action.GRANT, -30)]
    )

    assert written == 3
    state = ConsentState.objects.get(patient=patient)
    assert not state.granted
    assert state.entry.recorded_at == at + dt.timedelta(days=2)


@pytest.mark.django_db
def test_bulk_consent_refuses_a_patient_who_already_has_that_state():
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    entry = ConsentEntry(
        patient=patient,
        purpose=Purpose.CARE,
        channel=Channel.SMS,
        action=Action.WITHDRAW,
        source=Source.PAPER_FORM,
    )

    with pytest.raises(ValueError, match="already has"):
        consent_bulk_record(entries=[entry])

    assert ConsentEntry.objects.filter(patient=patient).count() == 1
    assert ConsentState.objects.get(patient=patient).granted


@pytest.mark.django_db
def test_bulk_consent_rejects_an_unknown_channel():
    entry = ConsentEntry(
        patient=PatientFactory(),
        purpose=Purpose.CARE,
        channel="fax",
        action=Action.GRANT,
        source=Source.PAPER_FORM,
    )

    with pytest.raises(ValueError, match="unknown channel"):
        consent_bulk_record(entries=[entry])

    assert not ConsentEntry.objects.exists()


@pytest.mark.django_db
def test_demo_admin_creates_the_demo_accounts_once(settings, monkeypatch):
    settings.DEBUG = True
    monkeypatch.delenv("DEMO_ADMIN_PASSWORD", raising=False)

    call_command("demo_admin", stdout=StringIO())
    out = StringIO()
    call_command("demo_admin", stdout=out)

    assert User.objects.count() == 3
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("clinic-demo-2026")
    desk = User.objects.get(username="desk")
    assert desk.is_staff and not desk.is_superuser
    assert list(desk.groups.values_list("name", flat=True)) == ["Front desk"]
    manager = User.objects.get(username="manager")
    assert list(manager.groups.values_list("name", flat=True)) == ["Clinic manager"]
    assert manager.check_password("clinic-demo-2026")
    printed = out.getvalue()
    assert "/desk/  user: desk  password: clinic-demo-2026" in printed
    assert "admin (all rights)" in printed


@pytest.mark.django_db
def test_demo_admin_takes_its_password_from_the_environment(settings, monkeypatch):
    settings.DEBUG = True
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "another-demo-pw")

    call_command("demo_admin", stdout=StringIO())

    assert User.objects.get(username="desk").check_password("another-demo-pw")


@pytest.mark.django_db
def test_demo_admin_refuses_when_debug_is_off(settings):
    settings.DEBUG = False

    with pytest.raises(CommandError, match="DEBUG"):
        call_command("demo_admin", stdout=StringIO())

    assert not User.objects.exists()


@pytest.mark.django_db
def test_seed_demo_refuses_where_messages_could_really_be_sent(settings):
    settings.TWILIO_ACCOUNT_SID = "AC" + "0" * 32

    with pytest.raises(CommandError, match="real people"):
        call_command("seed_demo", patients=5, seed=1)

    assert not Patient.objects.exists()
