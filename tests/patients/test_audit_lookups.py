"""Every lookup of patients by staff is audited: the admin's autocomplete, the search box of
every list that shows patient data, and the single-record pages; and what was typed into a
search, being patient data itself, never reaches the audit log."""

import datetime as dt

import pytest
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Rule, Skip, SkipReason
from patients.models import AuditEntry, Patient
from patients.services import audit_record
from reminders.models import OutboxMessage, StaffTask
from tests.factories import (
    AppointmentFactory,
    PatientFactory,
    PrescriptionFactory,
    ProcedureFactory,
    VisitFactory,
    grant,
)

pytestmark = pytest.mark.django_db

NATIONAL_ID = "A123456789"
PHONE = "0912-345-678"


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


@pytest.fixture
def manager(client, manager_user):
    client.force_login(manager_user)
    return client


def patient_boxes() -> list[tuple[str, str, str]]:
    """(app, model, field) of every admin form whose patient box is an autocomplete."""
    return sorted(
        (model._meta.app_label, model._meta.model_name, name)
        for model, model_admin in admin.site._registry.items()
        for name in model_admin.autocomplete_fields
        if model._meta.get_field(name).related_model is Patient
    )


def test_the_patient_boxes_are_the_ones_expected():
    # The parametrised test below walks the registry; make sure the walk finds them all.
    assert {
        ("consent", "consententry", "patient"),
        ("patients", "appointment", "patient"),
        ("patients", "prescription", "patient"),
        ("patients", "procedure", "patient"),
        ("patients", "visit", "patient"),
    } <= set(patient_boxes())


def autocomplete(client, box, term):
    app_label, model_name, field_name = box
    return client.get(
        reverse("admin:autocomplete"),
        {"app_label": app_label, "model_name": model_name, "field_name": field_name, "term": term},
    )


def assert_term_not_logged(term: str) -> None:
    for path, detail in AuditEntry.objects.values_list("path", "detail"):
        assert term not in path
        assert term not in detail


@pytest.mark.parametrize("box", patient_boxes(), ids="-".join)
def test_looking_a_patient_up_by_national_id_in_a_patient_box_is_audited(
    desk, front_desk_user, box
):
    # given
    wanted = PatientFactory(national_id=NATIONAL_ID)
    PatientFactory(national_id="B223456780")

    # when
    response = autocomplete(desk, box, NATIONAL_ID)

    # then the answer names the patient, and the log says who looked up whom, but not how
    assert response.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [str(wanted.pk)]
    entry = AuditEntry.objects.get(action=AuditEntry.Action.SEARCH)
    assert entry.actor == front_desk_user
    assert list(entry.patients.all()) == [wanted]
    assert entry.path == reverse("admin:autocomplete")
    assert_term_not_logged(NATIONAL_ID)


def test_a_patient_box_search_by_phone_is_audited_without_the_number(desk):
    wanted = PatientFactory(phone=PHONE)

    autocomplete(desk, ("patients", "visit", "patient"), PHONE)

    assert list(AuditEntry.objects.get(action="search").patients.all()) == [wanted]
    assert_term_not_logged(PHONE)
    assert_term_not_logged("912345678")


def test_a_patient_box_search_that_finds_nobody_is_still_audited(desk, front_desk_user):
    # given nobody with this national ID: trying IDs one after another must leave a trace
    PatientFactory()

    response = autocomplete(desk, ("patients", "appointment", "patient"), NATIONAL_ID)

    assert response.json()["results"] == []
    entry = AuditEntry.objects.get(action=AuditEntry.Action.SEARCH)
    assert entry.actor == front_desk_user
    assert not entry.patients.exists()
    assert_term_not_logged(NATIONAL_ID)


def test_opening_a_patient_box_audits_the_patients_it_offers(desk):
    # given more patients than one page of the box holds
    PatientFactory.create_batch(25)

    response = autocomplete(desk, ("patients", "visit", "patient"), "")

    offered = {int(row["id"]) for row in response.json()["results"]}
    assert len(offered) == 20
    entry = AuditEntry.objects.get(action=AuditEntry.Action.LIST)
    assert set(entry.patients.values_list("pk", flat=True)) == offered


def test_a_patient_box_refused_for_want_of_permission_shows_and_audits_nothing(
    client, django_user_model
):
    # given a staff member without the right to see patients
    client.force_login(django_user_model.objects.create_user("clerk", is_staff=True))
    PatientFactory(national_id=NATIONAL_ID)

    response = autocomplete(client, ("patients", "visit", "patient"), NATIONAL_ID)

    assert response.status_code == 403
    assert not AuditEntry.objects.exists()


# --- the search box of every list that shows patient data ---------------------------------------


def _outbox(patient) -> OutboxMessage:
    rule = Rule.objects.get(name__startswith="回診通知")
    now = timezone.now()
    return OutboxMessage.objects.create(
        rule=rule,
        patient=patient,
        occurrence_key="lookup-test",
        purpose=rule.purpose,
        channel="sms",
        due_at=now,
        next_attempt_at=now,
        expires_at=now + dt.timedelta(days=1),
        body="林小姐您好，請回診。",
    )


def _skip(patient) -> Skip:
    return Skip.objects.create(
        rule=Rule.objects.first(),
        patient=patient,
        occurrence_key="lookup-test",
        reason=SkipReason.values[0],
        at=timezone.now(),
    )


def _task(patient) -> StaffTask:
    today = timezone.localdate()
    return StaffTask.objects.create(
        kind=StaffTask.Kind.values[0],
        patient=patient,
        procedure=ProcedureFactory(patient=patient),
        due_on=today,
        until=today,
    )


def _audited(patient) -> AuditEntry:
    return audit_record(actor="system", action=AuditEntry.Action.VIEW, patients=[patient])


LISTS = {
    "patients_patient": lambda patient: patient,
    "patients_visit": lambda patient: VisitFactory(patient=patient),
    "patients_prescription": lambda patient: PrescriptionFactory(patient=patient),
    "patients_procedure": lambda patient: ProcedureFactory(patient=patient),
    "patients_appointment": lambda patient: AppointmentFactory(patient=patient),
    "consent_consententry": grant,
    "campaigns_skip": _skip,
    "reminders_outboxmessage": _outbox,
    "reminders_stafftask": _task,
    "patients_auditentry": _audited,
}


def test_every_admin_list_of_patient_data_is_covered_here():
    # A list added later (or an admin made audited) must be added to LISTS too.
    from patients.admin_audit import AuditedAdminMixin

    audited = {
        f"{model._meta.app_label}_{model._meta.model_name}"
        for model, model_admin in admin.site._registry.items()
        if isinstance(model_admin, AuditedAdminMixin)
    }
    assert audited == set(LISTS)


@pytest.mark.parametrize("changelist", LISTS)
def test_searching_any_list_of_patient_data_is_audited_without_the_term(
    manager, manager_user, changelist
):
    # given a row about the patient searched for, and one about somebody else
    wanted = PatientFactory(chart_no="Q-7001", national_id=NATIONAL_ID)
    LISTS[changelist](wanted)
    LISTS[changelist](PatientFactory(chart_no="Q-8002"))

    # when the manager searches for the chart number
    response = manager.get(reverse(f"admin:{changelist}_changelist"), {"q": "Q-7001"})

    # then the search is in the log, with the patient found, and the term is not
    assert response.status_code == 200
    entry = AuditEntry.objects.filter(action=AuditEntry.Action.SEARCH).get()
    assert entry.actor == manager_user
    assert wanted in entry.patients.all()
    assert entry.path == reverse(f"admin:{changelist}_changelist")
    assert_term_not_logged("Q-7001")


def test_searching_patients_by_national_id_is_audited_without_it(desk):
    wanted = PatientFactory(national_id=NATIONAL_ID)

    response = desk.get(reverse("admin:patients_patient_changelist"), {"q": NATIONAL_ID})

    assert list(response.context["cl"].result_list) == [wanted]
    assert list(AuditEntry.objects.get(action="search").patients.all()) == [wanted]
    assert_term_not_logged(NATIONAL_ID)


def test_a_list_search_that_finds_nobody_is_still_audited(desk, front_desk_user):
    PatientFactory()

    response = desk.get(reverse("admin:patients_patient_changelist"), {"q": NATIONAL_ID})

    assert list(response.context["cl"].result_list) == []
    entry = AuditEntry.objects.get(action=AuditEntry.Action.SEARCH)
    assert entry.actor == front_desk_user
    assert not entry.patients.exists()
    assert_term_not_logged(NATIONAL_ID)


# --- single-record pages ----------------------------------------------------------------------


def test_a_patients_change_history_page_is_audited(desk, front_desk_user):
    patient = PatientFactory()

    response = desk.get(reverse("admin:patients_patient_history", args=[patient.pk]))

    assert response.status_code == 200
    entry = AuditEntry.objects.get(action=AuditEntry.Action.VIEW)
    assert entry.actor == front_desk_user
    assert list(entry.patients.all()) == [patient]


def test_a_visits_change_history_page_is_audited_as_its_patients(desk):
    visit = VisitFactory()

    desk.get(reverse("admin:patients_visit_history", args=[visit.pk]))

    assert list(AuditEntry.objects.get(action="view").patients.all()) == [visit.patient]


def test_a_delete_confirmation_page_is_audited(admin_client):
    visit = VisitFactory()

    response = admin_client.get(reverse("admin:patients_visit_delete", args=[visit.pk]))

    assert response.status_code == 200
    assert list(AuditEntry.objects.get(action="view").patients.all()) == [visit.patient]


# --- the audit log itself ---------------------------------------------------------------------


def test_looking_up_a_patients_trail_in_the_audit_log_is_audited(manager, manager_user):
    # given two patients seen together, and one seen alone
    wanted, other = PatientFactory(chart_no="Q-7001"), PatientFactory(chart_no="Q-8002")
    audit_record(actor="system", action=AuditEntry.Action.LIST, patients=[wanted, other])
    audit_record(actor="system", action=AuditEntry.Action.VIEW, patients=[other])

    # when the manager searches the log by chart number
    response = manager.get(reverse("admin:patients_auditentry_changelist"), {"q": "q-7001"})

    # then only the entries about that patient come up, and the lookup is audited as of them
    assert len(response.context["cl"].result_list) == 1
    lookup = AuditEntry.objects.get(actor=manager_user)
    assert lookup.action == AuditEntry.Action.SEARCH
    assert list(lookup.patients.all()) == [wanted]
    assert_term_not_logged("7001")


def test_an_audit_entrys_page_names_its_patients_and_is_audited(manager, manager_user):
    seen = [PatientFactory(chart_no="Q-7001"), PatientFactory(chart_no="Q-8002")]
    entry = audit_record(actor="system", action=AuditEntry.Action.LIST, patients=seen)

    response = manager.get(reverse("admin:patients_auditentry_change", args=[entry.pk]))

    assert "Q-7001, Q-8002" in response.content.decode()
    lookup = AuditEntry.objects.get(actor=manager_user)
    assert lookup.action == AuditEntry.Action.VIEW
    assert set(lookup.patients.all()) == set(seen)


def test_the_audit_log_list_names_no_patient_and_is_not_itself_audited(manager, manager_user):
    audit_record(actor="system", action=AuditEntry.Action.VIEW, patients=[PatientFactory()])

    response = manager.get(reverse("admin:patients_auditentry_changelist"))

    assert response.status_code == 200
    assert not AuditEntry.objects.filter(actor=manager_user).exists()
