import datetime as dt

import pytest

from patients.imports import read_table, run_import, suggest_mapping
from patients.models import (
    Appointment,
    AuditEntry,
    Prescription,
    Procedure,
    RefillWindow,
    Visit,
)
from tests.factories import AppointmentFactory, PatientFactory
from tests.helpers import taipei
from tests.patients.imports.files import NOW, write_csv

pytestmark = pytest.mark.django_db

VISIT_HEADERS = ["就診編號", "病歷號", "就診日期", "科別", "醫師", "診斷碼", "備註"]
RX_HEADERS = ["病歷號", "藥品名稱", "劑量", "頻率", "開始日期", "給藥天數", "慢箋次數"]
PROCEDURE_HEADERS = ["病歷號", "手術名稱", "手術時間", "出院時間", "照護計畫"]
BOOKING_HEADERS = ["預約編號", "病歷號", "預約日期", "時段", "科別", "醫師", "診間"]


def _import(kind, path, **options):
    with read_table(path) as table:
        suggestion = suggest_mapping(kind, table.headers)
    assert suggestion.ok, suggestion
    options.setdefault("dry_run", False)
    return run_import(kind=kind, path=path, mapping=suggestion.columns, now=NOW, **options)


@pytest.fixture
def patient(db):
    return PatientFactory(chart_no="C1")


def test_visits_reference_the_patient_by_chart_number(tmp_path, patient):
    rows = [
        ["V1", "C1", "113/05/01", "家醫科", "王醫師", "I10，E11.9", "第一行\n第二行"],
        ["V2", "C404", "113/05/01", "家醫科", "王醫師", "", ""],
    ]

    report = _import("visits", write_csv(tmp_path / "v.csv", VISIT_HEADERS, rows), keep_good=True)

    visit = Visit.objects.get()
    assert (visit.patient, visit.visited_on, visit.external_id) == (
        patient,
        dt.date(2024, 5, 1),
        "V1",
    )
    assert visit.diagnosis_codes == "I10, E11.9" and visit.note == "第一行\n第二行"
    assert report.errors[0].row == 3 and "找不到此病歷號" in report.errors[0].reason


def test_visits_without_a_his_number_match_on_patient_day_department_and_doctor(tmp_path, patient):
    headers = VISIT_HEADERS[1:]
    rows = [["C1", "1130501", "家醫科", "王醫師", "I10", ""]]
    _import("visits", write_csv(tmp_path / "a.csv", headers, rows))
    rows[0][4] = "I10, J06.9"

    report = _import("visits", write_csv(tmp_path / "b.csv", headers, rows))

    assert (report.added, report.updated) == (0, 1) and report.changes[0].fields == ("診斷碼",)
    assert Visit.objects.get().diagnosis_codes == "I10, J06.9"


def test_prescriptions_with_his_frequency_codes_and_chronic_refills(tmp_path, patient):
    rows = [
        ["C1", "Amlodipine 5mg", "1 tab", "Q8H", "113/05/01", "28", "2"],
        ["C1", "Metformin", "1 tab", "bid", "113/05/01", "28", "0"],
        ["C1", "Aspirin", "1 tab", "Q5X", "113/05/01", "28", "0"],
    ]

    report = _import(
        "prescriptions", write_csv(tmp_path / "rx.csv", RX_HEADERS, rows), keep_good=True
    )

    amlodipine = Prescription.objects.get(drug="Amlodipine 5mg")
    assert amlodipine.frequency == "TID" and amlodipine.refills == 2
    assert Prescription.objects.get(drug="Metformin").frequency == "BID"
    windows = RefillWindow.objects.filter(prescription=amlodipine).order_by("number")
    assert [(w.number, w.opens_on, w.closes_on) for w in windows] == [
        (n, o, c) for n, o, c in amlodipine.refill_windows_due()
    ]
    assert len(windows) == 2
    assert report.errors[0].column == "頻率" and "Q8H" in report.errors[0].reason


def test_procedures_with_roc_datetimes(tmp_path, patient):
    rows = [
        ["C1", "白內障手術", "113/05/01 09:30", "113/05/01 15:00", "cataract"],
        ["C1", "大腸鏡", "113/05/02 09:30", "113/05/01 08:00", ""],
    ]

    report = _import(
        "procedures", write_csv(tmp_path / "p.csv", PROCEDURE_HEADERS, rows), keep_good=True
    )

    procedure = Procedure.objects.get()
    assert procedure.performed_at == taipei(2024, 5, 1, 9, 30)
    assert procedure.discharged_at == taipei(2024, 5, 1, 15, 0)
    assert "出院時間不能早於" in report.errors[0].reason


def test_appointments_are_matched_by_booking_number_and_moves_update(tmp_path, patient):
    rows = [["B1", "C1", "115/12/07", "14:30", "家醫科", "王醫師", "3 診"]]
    _import("appointments", write_csv(tmp_path / "a.csv", BOOKING_HEADERS, rows))
    appointment = Appointment.objects.get()
    appointment.status = Appointment.Status.CONFIRMED
    appointment.confirmed_via = Appointment.ConfirmedVia.PHONE
    appointment.save()
    rows[0][3] = "下午 3:00"

    report = _import("appointments", write_csv(tmp_path / "b.csv", BOOKING_HEADERS, rows))

    appointment.refresh_from_db()
    assert appointment.starts_at == taipei(2026, 12, 7, 15, 0)
    # A confirmation was for the old time.
    assert appointment.status == Appointment.Status.BOOKED and appointment.confirmed_via == ""
    assert report.updated == 1 and "預約時間" in report.changes[0].fields


def test_the_same_appointment_file_twice_keeps_a_confirmation(tmp_path, patient):
    path = write_csv(
        tmp_path / "a.csv",
        BOOKING_HEADERS,
        [["B1", "C1", "115/12/07", "14:30", "家醫科", "王醫師", ""]],
    )
    _import("appointments", path)
    Appointment.objects.update(status=Appointment.Status.CONFIRMED)

    report = _import("appointments", path)

    assert report.unchanged == 1
    assert Appointment.objects.get().status == Appointment.Status.CONFIRMED


def test_full_day_feed_cancels_vanished_bookings_of_its_days_only(tmp_path, patient):
    kept = AppointmentFactory(
        patient=patient, external_id="B1", starts_at=taipei(2026, 12, 7, 9, 0)
    )
    vanished = AppointmentFactory(
        patient=patient, external_id="B2", starts_at=taipei(2026, 12, 7, 10, 0)
    )
    other_day = AppointmentFactory(
        patient=patient, external_id="B3", starts_at=taipei(2026, 12, 8, 9, 0)
    )
    by_hand = AppointmentFactory(
        patient=patient, external_id=None, starts_at=taipei(2026, 12, 7, 11, 0)
    )
    rows = [["B1", "C1", "115/12/07", "09:00", "家醫科", "王醫師", "二樓 3 診"]]
    path = write_csv(tmp_path / "day.csv", BOOKING_HEADERS, rows)

    report = _import("appointments", path, full_day=True)

    statuses = {a.pk: a.status for a in Appointment.objects.all()}
    assert statuses[vanished.pk] == Appointment.Status.CANCELLED
    assert statuses[kept.pk] == statuses[other_day.pk] == statuses[by_hand.pk] == "booked"
    assert report.cancelled == 1 and "取消預約 1" in report.summary()


def test_vanished_bookings_stay_when_the_setting_is_off(tmp_path, patient, settings):
    settings.IMPORT_CANCEL_VANISHED_APPOINTMENTS = False
    AppointmentFactory(patient=patient, external_id="B2", starts_at=taipei(2026, 12, 7, 10, 0))
    rows = [["B1", "C1", "115/12/07", "09:00", "家醫科", "王醫師", ""]]

    _import("appointments", write_csv(tmp_path / "d.csv", BOOKING_HEADERS, rows), full_day=True)

    assert Appointment.objects.get(external_id="B2").status == Appointment.Status.BOOKED


def test_a_rejected_row_is_never_cancelled_as_vanished(tmp_path, patient):
    AppointmentFactory(patient=patient, external_id="B2", starts_at=taipei(2026, 12, 7, 10, 0))
    rows = [
        ["B1", "C1", "115/12/07", "09:00", "家醫科", "王醫師", ""],
        ["B2", "C1", "115/12/07", "25:00", "家醫科", "王醫師", ""],
    ]

    report = _import(
        "appointments",
        write_csv(tmp_path / "d.csv", BOOKING_HEADERS, rows),
        full_day=True,
        keep_good=True,
    )

    assert report.rejected == 1 and report.cancelled == 0
    assert Appointment.objects.get(external_id="B2").status == Appointment.Status.BOOKED


def test_a_50000_row_file(tmp_path):
    for n in range(50):
        PatientFactory(chart_no=f"C{n}")
    rows = [
        [
            f"V{n}",
            f"C{n % 50}",
            f"{113 - n % 10}/0{1 + n % 9}/1{n % 9}",
            "家醫科",
            "王醫師",
            "I10",
            "",
        ]
        for n in range(50_000)
    ]
    path = write_csv(tmp_path / "v.csv", VISIT_HEADERS, rows)
    seen = []

    report = _import("visits", path, progress=seen.append)

    assert report.added == 50_000 and not report.errors and Visit.objects.count() == 50_000
    assert seen[-1] == 50_000 and len(seen) > 10  # progress once per batch
    # Every batch names the same 50 patients: the run's audit entry links each of them once.
    entry = AuditEntry.objects.get(action=AuditEntry.Action.IMPORT)
    assert entry.patients.count() == 50 and entry.links.count() == 50


def test_batch_lookups_may_use_the_indexes_on_postgresql(tmp_path, patient, monkeypatch):
    # Thousands of keys a batch: at PostgreSQL's default cost of a random read the planner
    # reads the whole patient table for each batch instead (95 ms a batch at 100,000 patients,
    # and growing with them). The import lowers that cost for its own transaction.
    from django.db import connection

    from patients.imports import importer

    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL planner setting")
    seen = []
    apply = importer._apply

    def watched(*args, **kwargs):
        with connection.cursor() as cursor:
            cursor.execute("SHOW random_page_cost")
            seen.append(cursor.fetchone()[0])
        return apply(*args, **kwargs)

    monkeypatch.setattr(importer, "_apply", watched)
    rows = [["V1", "C1", "113/05/01", "家醫科", "王醫師", "", ""]]

    _import("visits", write_csv(tmp_path / "v.csv", VISIT_HEADERS, rows))

    assert seen == ["1.1"]


@pytest.mark.usefixtures("memory_channels", "english")
def test_a_booking_gone_from_the_feed_gets_no_reminder(tmp_path, clinic, memory_channels):
    from consent.models import Channel, Purpose
    from reminders.models import OutboxMessage, Status
    from tests.factories import grant
    from tests.helpers import dispatch, only, plan

    only("回診通知")
    patient = PatientFactory(chart_no="C1")
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, external_id="B1", starts_at=taipei(2026, 12, 1, 9, 0))
    gone = AppointmentFactory(
        patient=patient, external_id="B2", starts_at=taipei(2026, 12, 1, 14, 30)
    )
    plan(taipei(2026, 11, 24, 8, 0))
    queued = OutboxMessage.objects.get(appointment=gone)
    rows = [["B1", "C1", "115/12/01", "09:00", "家醫科", "王醫師", ""]]

    _import("appointments", write_csv(tmp_path / "day.csv", BOOKING_HEADERS, rows), full_day=True)
    dispatch(taipei(2026, 11, 24, 10, 1))

    queued.refresh_from_db()
    assert queued.status == Status.DROPPED and queued.error == "appointment cancelled"
    assert all(m.id != queued.uuid for m in memory_channels)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_progress_shows_to_other_connections_while_the_import_runs(tmp_path):
    import threading

    from django.db import connection, connections

    from patients.models import ImportRun

    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer: the counter is written at the end")
    PatientFactory(chart_no="C1")
    rows = [[f"V{n}", "C1", "113/05/01", "家醫科", f"醫師{n}", "", ""] for n in range(5000)]
    path = write_csv(tmp_path / "v.csv", VISIT_HEADERS, rows)
    run = ImportRun.objects.create(kind="visits", file_name="v.csv")
    seen_elsewhere = []

    def look(rows_read):
        def read():
            seen_elsewhere.append(ImportRun.objects.get(pk=run.pk).progress)
            connections.close_all()

        reader = threading.Thread(target=read)
        reader.start()
        reader.join()

    _import("visits", path, run=run, progress=look)

    assert 0 < max(seen_elsewhere) < 5000  # an earlier batch's count, before the commit
    run.refresh_from_db()
    assert (run.status, run.progress, run.added) == ("done", 5000, 5000)
