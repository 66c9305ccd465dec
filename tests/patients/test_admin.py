import json

import pytest
from django.urls import reverse

from consent.models import Channel, ConsentEntry, ConsentState, Purpose
from patients.models import AuditEntry, Patient, Prescription
from tests.factories import PatientFactory, grant

pytestmark = pytest.mark.django_db

PATIENT_FORM = {
    "chart_no": "A000123",
    "name": "林美玲",
    "sex": "F",
    "birth_date": "1958-02-28",
    "national_id": "",
    "phone": "0912-345-678",
    "email": "lin@example.test",
    "line_user_id": "",
    "preferred_channel": "sms",
    "preferred_language": "zh-hant",
    "caregiver_contact": "",
    "notes": "",
}
INLINES = [
    "consent_states",
    "consent_entries",
    "appointments",
    "visits",
    "prescriptions",
    "procedures",
    # Read-only, added by reminders/admin.py; the admin still expects their management forms.
    "messages",
    "rule_skips",
]


def _management(prefix, total=0):
    return {
        f"{prefix}-TOTAL_FORMS": str(total),
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }


def patient_post(**overrides):
    data = {**PATIENT_FORM, **overrides}
    for prefix in INLINES:
        data.update(_management(prefix))
    return data


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


@pytest.fixture
def manager(client, manager_user):
    client.force_login(manager_user)
    return client


def test_front_desk_registers_a_patient_with_phone_stored_as_e164(desk):
    response = desk.post(reverse("admin:patients_patient_add"), patient_post())

    assert response.status_code == 302
    patient = Patient.objects.get(chart_no="A000123")
    assert patient.phone == "+886912345678"
    assert patient.name == "林美玲"


def test_bad_phone_gets_a_clear_message_and_nothing_is_saved(desk):
    response = desk.post(reverse("admin:patients_patient_add"), patient_post(phone="12345"))

    assert response.status_code == 200
    assert "0912 345 678" in response.context["adminform"].form.errors["phone"][0]
    assert not Patient.objects.exists()


def test_bad_email_and_date_get_clear_messages(desk):
    response = desk.post(
        reverse("admin:patients_patient_add"),
        patient_post(email="not-an-email", birth_date="1958-02-30"),
    )

    errors = response.context["adminform"].form.errors
    assert "email" in errors and "birth_date" in errors
    assert not Patient.objects.exists()


def test_duplicate_chart_number_is_refused_with_a_message(desk):
    PatientFactory(chart_no="A000123")

    response = desk.post(reverse("admin:patients_patient_add"), patient_post(chart_no="a000123"))

    assert "chart_no" in response.context["adminform"].form.errors
    assert Patient.objects.count() == 1


def test_duplicate_national_id_is_refused_with_a_message(desk):
    PatientFactory(national_id="A123456789")

    response = desk.post(
        reverse("admin:patients_patient_add"), patient_post(national_id="a123456789")
    )

    assert response.status_code == 200
    assert "national_id" in response.context["adminform"].form.errors
    assert Patient.objects.count() == 1


def test_viewing_a_patient_writes_an_audit_entry(desk, front_desk_user):
    patient = PatientFactory()

    response = desk.get(reverse("admin:patients_patient_change", args=[patient.pk]))

    assert response.status_code == 200
    entry = AuditEntry.objects.get(action="view")
    assert entry.actor == front_desk_user
    assert list(entry.patients.all()) == [patient]


def test_listing_patients_audits_exactly_the_patients_shown(desk):
    shown = PatientFactory.create_batch(3)

    desk.get(reverse("admin:patients_patient_changelist"))

    entry = AuditEntry.objects.get(action="list")
    assert set(entry.patients.all()) == set(shown)


def test_listing_visits_audits_whose_visits_were_shown(desk):
    from tests.factories import VisitFactory

    visit = VisitFactory()

    desk.get(reverse("admin:patients_visit_changelist"))

    assert list(AuditEntry.objects.get(action="list").patients.all()) == [visit.patient]


@pytest.mark.parametrize("spelling", ["0912-345-678", "+886912345678", "0912345678"])
def test_admin_search_finds_a_patient_by_any_phone_spelling(desk, spelling):
    wanted = PatientFactory(phone="+886912345678")
    PatientFactory(phone="+886987654321")

    response = desk.get(reverse("admin:patients_patient_changelist"), {"q": spelling})

    assert list(response.context["cl"].result_list) == [wanted]
    assert AuditEntry.objects.get(action="search").patients.get() == wanted


def test_admin_search_finds_a_patient_by_full_name(desk):
    wanted = PatientFactory(name="陳 志明")
    PatientFactory(name="陳志強")

    response = desk.get(reverse("admin:patients_patient_changelist"), {"q": "陳志明"})

    assert list(response.context["cl"].result_list) == [wanted]


def test_consent_added_on_the_patient_page_updates_current_consent(desk, front_desk_user):
    patient = PatientFactory()
    data = patient_post(chart_no=patient.chart_no, phone=patient.phone, email=patient.email)
    data.update(_management("consent_entries", total=1))
    data.update(
        {
            "consent_entries-0-purpose": "care",
            "consent_entries-0-channel": "sms",
            "consent_entries-0-action": "grant",
            "consent_entries-0-source": "paper_form",
            "consent_entries-0-evidence": "form v3",
        }
    )

    response = desk.post(reverse("admin:patients_patient_change", args=[patient.pk]), data)

    assert response.status_code == 302
    entry = ConsentEntry.objects.get(patient=patient)
    assert entry.recorded_by == front_desk_user
    state = ConsentState.objects.get(patient=patient, purpose="care", channel="sms")
    assert state.granted and state.entry == entry


def test_consent_entries_cannot_be_changed_or_deleted_in_the_admin(manager):
    entry = grant(PatientFactory())
    change_url = reverse("admin:consent_consententry_change", args=[entry.pk])

    manager.post(change_url, {"purpose": "care", "channel": "sms", "action": "withdraw"})
    delete = manager.post(
        reverse("admin:consent_consententry_delete", args=[entry.pk]), {"post": "yes"}
    )

    assert delete.status_code == 403
    assert ConsentEntry.objects.get(pk=entry.pk).action == "grant"


def test_consent_added_from_the_ledger_page_goes_through_the_service(desk):
    patient = PatientFactory()

    desk.post(
        reverse("admin:consent_consententry_add"),
        {
            "patient": patient.pk,
            "purpose": "relationship",
            "channel": "sms",
            "action": "grant",
            "source": "front_desk",
        },
    )

    assert ConsentState.objects.get(
        patient=patient, purpose=Purpose.RELATIONSHIP, channel=Channel.SMS
    ).granted


def test_front_desk_cannot_read_the_audit_log_but_the_manager_can(client, desk, manager_user):
    url = reverse("admin:patients_auditentry_changelist")
    assert desk.get(url).status_code == 403

    client.force_login(manager_user)
    assert client.get(url).status_code == 200


def test_audit_entries_cannot_be_deleted_even_by_the_manager(manager):
    patient = PatientFactory()
    manager.get(reverse("admin:patients_patient_change", args=[patient.pk]))
    entry = AuditEntry.objects.get()

    response = manager.post(
        reverse("admin:patients_auditentry_delete", args=[entry.pk]), {"post": "yes"}
    )

    assert response.status_code == 403
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


def test_export_action_downloads_the_patients_record_and_audits_it(desk):
    patient = PatientFactory(name="黃淑芬")
    grant(patient)

    response = desk.post(
        reverse("admin:patients_patient_changelist"),
        {"action": "export_json", "_selected_action": [patient.pk]},
    )

    document = json.loads(response.content)
    assert document["patient"]["name"] == "黃淑芬"
    assert document["consent_entries"][0]["action"] == "grant"
    assert AuditEntry.objects.filter(action="export", patients=patient).exists()


def test_only_the_manager_may_erase(desk, client, manager_user):
    patient = PatientFactory()
    changelist = reverse("admin:patients_patient_changelist")
    post = {"action": "erase", "_selected_action": [patient.pk]}

    desk.post(changelist, post)
    assert not Patient.objects.get(pk=patient.pk).is_erased

    client.force_login(manager_user)
    client.post(changelist, post)
    assert Patient.objects.get(pk=patient.pk).is_erased


def test_prescription_added_in_admin_gets_its_refill_windows(desk):
    patient = PatientFactory()

    response = desk.post(
        reverse("admin:patients_prescription_add"),
        {
            "patient": patient.pk,
            "drug": "Metformin 500mg",
            "dose": "1 tab",
            "frequency": "BID",
            "dose_times": "",
            "start_date": "2026-11-01",
            "days_supplied": "28",
            "refills": "2",
            "refill_reminders": "on",
            "refill_windows-TOTAL_FORMS": "0",
            "refill_windows-INITIAL_FORMS": "0",
        },
    )

    assert response.status_code == 302
    prescription = Prescription.objects.get()
    assert prescription.dose_times == ["09:00", "18:00"]
    windows = [
        (w.number, str(w.opens_on), str(w.closes_on)) for w in prescription.refill_windows.all()
    ]
    assert windows == [(1, "2026-11-19", "2026-11-28"), (2, "2026-12-17", "2026-12-26")]


def test_bad_dose_time_is_refused_with_a_message(desk):
    patient = PatientFactory()

    response = desk.post(
        reverse("admin:patients_prescription_add"),
        {
            "patient": patient.pk,
            "drug": "Metformin 500mg",
            "dose": "1 tab",
            "frequency": "BID",
            "dose_times": "8am, 20:00",
            "start_date": "2026-11-01",
            "days_supplied": "28",
            "refills": "0",
            "refill_windows-TOTAL_FORMS": "0",
            "refill_windows-INITIAL_FORMS": "0",
        },
    )

    assert "8am" in response.context["adminform"].form.errors["dose_times"][0]
    assert not Prescription.objects.exists()


def test_login_locks_after_five_wrong_passwords(client, front_desk_user):
    url = reverse("admin:login")
    for _ in range(5):
        client.post(url, {"username": "desk", "password": "wrong"})

    response = client.post(url, {"username": "desk", "password": "correct horse 42"})

    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


def test_admin_speaks_traditional_chinese_by_default(client):
    response = client.get(reverse("admin:login"))

    assert "登入" in response.content.decode()


def test_admin_switches_to_english_on_request(client):
    response = client.get(reverse("admin:login"), HTTP_ACCEPT_LANGUAGE="en")

    assert "Log in" in response.content.decode()


def test_clinic_profile_cannot_close_every_day(manager, clinic):
    data = {
        "name": "安心診所",
        "phone": "02-2345-6789",
        "address": "",
        "line_account_name": "",
        "send_window_start": "09:00",
        "send_window_end": "21:00",
        "closed_weekdays": [str(day) for day in range(7)],
    }

    response = manager.post(reverse("admin:patients_clinicprofile_change", args=[clinic.pk]), data)

    assert "closed_weekdays" in response.context["adminform"].form.errors


def test_send_window_must_start_before_it_ends(manager, clinic):
    data = {
        "name": "安心診所",
        "send_window_start": "21:00",
        "send_window_end": "09:00",
    }

    response = manager.post(reverse("admin:patients_clinicprofile_change", args=[clinic.pk]), data)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors
