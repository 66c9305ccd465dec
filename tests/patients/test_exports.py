"""The patient, appointment, task and message lists exported as CSV and XLSX."""

import csv
import datetime as dt
import io
import itertools

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone
from openpyxl import load_workbook

from campaigns.models import Rule
from clinic_crm.exports import cell_neutralise
from clinic_crm.fields import EncryptedTextField
from patients.models import Appointment, AuditEntry, Patient
from reminders.models import OutboxMessage, StaffTask, Status
from tests.factories import AppointmentFactory, PatientFactory

pytestmark = pytest.mark.django_db

PATIENTS = "admin:patients_patient_changelist"
APPOINTMENTS = "admin:patients_appointment_changelist"
TASKS = "admin:reminders_stafftask_changelist"
MESSAGES = "admin:reminders_outboxmessage_changelist"
_occurrence = itertools.count()


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


def export(client, listname, fmt, query="", objects=()):
    """Run the export action; with no objects, on the whole (filtered) list ("select all")."""
    data = {"action": f"export_{fmt}", "index": "0"}
    if objects:
        data["_selected_action"] = [o.pk for o in objects]
    else:
        data |= {"select_across": "1", "_selected_action": ["0"]}
    return client.post(reverse(listname) + query, data)


def csv_rows(response) -> list[list[str]]:
    body = b"".join(response.streaming_content)
    assert body.startswith("\ufeff".encode())  # the BOM: Excel then reads UTF-8, not cp950
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))


def as_dicts(rows: list[list[str]]) -> list[dict[str, str]]:
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def test_cells_that_a_spreadsheet_would_run_start_with_an_apostrophe():
    for dangerous in ["=1+1", "+886912345678", "-2", "@SUM(A1)", "\tx", "\rx"]:
        assert cell_neutralise(dangerous) == "'" + dangerous
    assert cell_neutralise("林美玲") == "林美玲"
    assert cell_neutralise("a=b") == "a=b"


def test_front_desk_exports_the_filtered_patient_list_as_csv_in_chinese(desk):
    # given two women and a man
    woman = PatientFactory(chart_no="A000001", name="林美玲", sex=Patient.Sex.FEMALE)
    PatientFactory(chart_no="A000002", name="陳雅惠", sex=Patient.Sex.FEMALE)
    PatientFactory(chart_no="A000003", name="王大明", sex=Patient.Sex.MALE)

    # when the front desk exports the list filtered to women, "select all"
    response = export(desk, PATIENTS, "csv", query="?sex=F")

    # then the file streams the two women, labelled and valued in Chinese words
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = as_dicts(csv_rows(response))
    assert [row["病歷號"] for row in rows] == ["A000001", "A000002"]
    first = rows[0]
    assert first["姓名"] == "林美玲"
    assert first["性別"] == "女"  # the choice's label, not the code F
    assert first["出生日期"] == "1960-03-15"
    assert first["電話"] == cell_neutralise(woman.phone)  # +886… would be a formula
    assert first["電話"].startswith("'+886")


def test_an_export_is_audited_with_every_patient_in_it(desk, front_desk_user):
    exported = [PatientFactory(sex=Patient.Sex.FEMALE) for _ in range(3)]
    left_out = PatientFactory(sex=Patient.Sex.MALE)

    export(desk, PATIENTS, "xlsx", query="?sex=F")

    entry = AuditEntry.objects.get(action=AuditEntry.Action.EXPORT)
    assert entry.actor == front_desk_user
    assert set(entry.patients.all()) == set(exported)
    assert left_out not in entry.patients.all()
    assert entry.path == reverse(PATIENTS)
    assert "XLSX" in entry.detail


def test_only_the_shown_encrypted_fields_are_decrypted_and_no_index_or_ciphertext_goes_out(
    desk, monkeypatch
):
    # given a patient with notes, a national ID and an e-mail the list does not show
    patient = PatientFactory(
        name="林美玲", national_id="A123456789", notes="對盤尼西林過敏", caregiver_contact="女兒"
    )
    stored = Patient.objects.values("name", "phone_bidx", "national_id_bidx", "notes").get()
    # The encrypted columns as stored: the tokens, not yet opened.
    stored = {key: getattr(value, "token", value) for key, value in stored.items()}
    assert stored["name"] != "林美玲"
    decrypted = []
    unseal = EncryptedTextField.unseal

    def spy(self, instance, sealed):
        decrypted.append(self.name)
        return unseal(self, instance, sealed)

    monkeypatch.setattr(EncryptedTextField, "unseal", spy)

    # when the patient list is exported
    body = b"".join(export(desk, PATIENTS, "csv", objects=[patient]).streaming_content).decode()

    # then only the list's own fields were read, and neither digest nor token is in the file
    assert "name" in decrypted
    assert set(decrypted) <= {"name", "phone"}
    assert "對盤尼西林過敏" not in body
    assert "A123456789" not in body
    for value in stored.values():
        assert str(value) not in body


def test_appointments_export_with_times_in_the_clinics_zone_and_formulas_defused(desk):
    # given an appointment at 09:30 in Taipei (01:30 UTC) in a department typed as a formula
    patient = PatientFactory(chart_no="B000001", name="陳雅惠")
    AppointmentFactory(
        patient=patient,
        starts_at=dt.datetime(2026, 12, 3, 1, 30, tzinfo=dt.UTC),
        department='=HYPERLINK("http://evil.example","x")',
        status=Appointment.Status.CONFIRMED,
    )

    # when the front desk exports the appointments as XLSX
    response = export(desk, APPOINTMENTS, "xlsx")

    # then the workbook has the Chinese labels, the local time, and the formula as plain text
    assert response.status_code == 200
    book = load_workbook(io.BytesIO(b"".join(response.streaming_content)))
    sheet = book.worksheets[0]
    header = [cell.value for cell in sheet[1]]
    values = dict(zip(header, [cell for cell in sheet[2]], strict=True))
    assert values["預約時間"].value == "2026-12-03 09:30"
    assert values["狀態"].value == "已確認"
    assert values["病患"].value == "B000001 陳雅惠"
    department = [cell for cell in sheet[2] if "HYPERLINK" in str(cell.value)][0]
    assert department.value == '\'=HYPERLINK("http://evil.example","x")'
    assert department.data_type == "s"


def test_the_task_list_exports_its_kinds_in_words(desk):
    patient = PatientFactory(chart_no="C000001", name="王大明")
    today = timezone.localdate()
    StaffTask.objects.create(
        kind=StaffTask.Kind.POSTOP_CALL, patient=patient, due_on=today, until=today
    )

    rows = as_dicts(csv_rows(export(desk, TASKS, "csv")))

    assert len(rows) == 1
    assert rows[0]["任務"] == "術後電話關懷"
    assert "C000001 王大明" in rows[0].values()


def test_the_message_list_exports_without_the_message_text(desk):
    patient = PatientFactory(chart_no="D000001")
    rule = Rule.objects.get(name__startswith="回診通知")
    due = timezone.now()
    OutboxMessage.objects.create(
        rule=rule,
        patient=patient,
        occurrence_key=f"test:{next(_occurrence)}",
        purpose=rule.purpose,
        channel="sms",
        status=Status.FAILED,
        due_at=due,
        next_attempt_at=due,
        expires_at=due + dt.timedelta(days=1),
        body="林小姐您好，請回診。",
    )

    response = export(desk, MESSAGES, "csv")
    rows = as_dicts(csv_rows(response))

    assert len(rows) == 1
    assert rows[0]["管道"] == "簡訊"
    assert "林小姐您好" not in b"".join(export(desk, MESSAGES, "csv").streaming_content).decode()
    assert AuditEntry.objects.filter(action=AuditEntry.Action.EXPORT, patients=patient).count() == 2


def test_exporting_needs_the_view_permission_of_that_list(client):
    # given a staff member who may change tasks but not view them as a list of their own
    clerk = User.objects.create_user("clerk", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="change_stafftask"))
    client.force_login(clerk)
    patient = PatientFactory()
    today = timezone.localdate()
    task = StaffTask.objects.create(
        kind=StaffTask.Kind.POSTOP_CALL, patient=patient, due_on=today, until=today
    )

    # when they try to export the task list
    response = export(client, TASKS, "csv", objects=[task])

    # then no file, and nothing exported
    assert not response.get("Content-Disposition")
    assert not AuditEntry.objects.filter(action=AuditEntry.Action.EXPORT).exists()
    listing = client.get(reverse(TASKS))
    assert b"export_csv" not in listing.content

    # and once they may view the list, they may export it
    clerk.user_permissions.add(Permission.objects.get(codename="view_stafftask"))
    client.force_login(User.objects.get(pk=clerk.pk))  # permissions are cached on the user
    response = export(client, TASKS, "csv", objects=[task])
    assert "attachment" in response["Content-Disposition"]


def test_the_manager_exports_too(client, manager_user):
    client.force_login(manager_user)
    PatientFactory(chart_no="E000001")

    rows = csv_rows(export(client, PATIENTS, "csv"))

    assert rows[1][0] == "E000001"
