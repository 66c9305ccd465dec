import csv
import datetime as dt

import pytest

from consent.models import ConsentEntry, ConsentState, Source
from patients.imports import read_table, run_import, suggest_mapping
from patients.models import AuditEntry, Patient
from tests.factories import PatientFactory
from tests.patients.imports.files import (
    NOW,
    PATIENT_HEADERS,
    national_id,
    patient_row,
    write_csv,
    write_xlsx,
)

pytestmark = pytest.mark.django_db


def _mapping(path):
    with read_table(path) as table:
        suggestion = suggest_mapping("patients", table.headers)
    assert suggestion.ok, suggestion
    return suggestion.columns


def _import(path, **options):
    options.setdefault("dry_run", False)
    return run_import(kind="patients", path=path, mapping=_mapping(path), now=NOW, **options)


def test_patients_are_stored_encrypted_with_every_accepted_spelling(tmp_path):
    rows = [
        ["C1", "王小明", "男", "49/03/15", "0912-345-678", "a123456789"],
        ["C2", "李小華", "F", "1130501", "+886 912 000 111", ""],
        ["C3", "張大同", "M", "民國53年7月1日", "(02)2345-6789", ""],
        ["C4", "陳美玲", "女", "1970-01-31", "0912000222", ""],
    ]
    path = write_csv(tmp_path / "p.csv", PATIENT_HEADERS, rows)

    report = _import(path)

    assert report.written and report.added == 4 and not report.errors
    first = Patient.objects.get(chart_no="C1")
    assert (first.name, first.sex, first.birth_date) == ("王小明", "M", dt.date(1960, 3, 15))
    assert first.phone == "+886912345678" and first.phone_is_mobile
    assert first.national_id == "A123456789"
    assert Patient.objects.get(chart_no="C2").birth_date == dt.date(2024, 5, 1)
    assert Patient.objects.get(chart_no="C3").birth_date == dt.date(1964, 7, 1)
    assert not Patient.objects.get(chart_no="C3").phone_is_mobile  # a landline: called, not texted
    # Searchable by the blind indexes, as the front desk searches.
    assert Patient.objects.get(phone_bidx=Patient.index_of("phone", "0912 345 678")) == first
    assert Patient.objects.get(national_id_bidx=Patient.index_of("national_id", "A123456789"))


def test_the_same_file_twice_changes_nothing(tmp_path):
    path = write_csv(tmp_path / "p.csv", PATIENT_HEADERS, [patient_row(n) for n in range(1, 40)])
    _import(path)
    before = _stored()

    report = _import(path)

    assert (report.added, report.updated, report.unchanged) == (0, 0, 39)
    assert _stored() == before  # not even re-encrypted


def _stored():
    from clinic_crm.fields import Sealed

    return [
        {k: v.token if isinstance(v, Sealed) else v for k, v in row.items()}
        for row in Patient.objects.order_by("pk").values()
    ]


def test_a_changed_row_updates_the_patient_and_says_what_changed(tmp_path):
    rows = [patient_row(n) for n in range(1, 5)]
    _import(write_csv(tmp_path / "a.csv", PATIENT_HEADERS, rows))
    rows[2] = patient_row(3, name="改名字", phone="0987-654-321")

    report = _import(write_csv(tmp_path / "b.csv", PATIENT_HEADERS, rows))

    assert (report.added, report.updated, report.unchanged) == (0, 1, 3)
    (change,) = report.changes
    assert (change.row, change.key, change.action) == (4, "C000003", "updated")
    assert set(change.fields) == {"姓名", "電話"}
    patient = Patient.objects.get(chart_no="C000003")
    assert patient.name == "改名字" and patient.phone == "+886987654321"
    # The indexes follow the new values.
    assert Patient.objects.get(name_bidx=Patient.index_of("name", "改名字")) == patient
    assert Patient.objects.get(phone_bidx=Patient.index_of("phone", "0987654321")) == patient
    assert not Patient.objects.filter(name_bidx=Patient.index_of("name", "測試3號")).exists()


def test_existing_patients_match_by_national_id_then_phone_and_birth_date(tmp_path):
    by_id = PatientFactory(chart_no="OLD1", national_id=national_id(1), name="測試1號")
    by_phone = PatientFactory(
        chart_no="OLD2", phone="+886912002002", birth_date=dt.date(1952, 3, 12), name="測試2號"
    )
    twin = PatientFactory(
        chart_no="OLD3", phone="+886912003003", birth_date=dt.date(1953, 4, 13), name="雙胞胎甲"
    )
    rows = [
        patient_row(1),
        ["C000002", "測試2號", "女", "41/03/12", "0912-002-002", ""],
        # Same phone and birth date as OLD3, another name: a twin, not the same person.
        ["C000003", "雙胞胎乙", "女", "42/04/13", "0912-003-003", ""],
    ]

    report = _import(write_csv(tmp_path / "p.csv", PATIENT_HEADERS, rows))

    assert (report.added, report.updated) == (1, 2)
    by_id.refresh_from_db()
    by_phone.refresh_from_db()
    assert by_id.chart_no == "C000001" and by_phone.chart_no == "C000002"
    assert Patient.objects.get(chart_no="OLD3") == twin
    assert Patient.objects.get(chart_no="C000003").name == "雙胞胎乙"


def test_dry_run_lists_every_bad_row_masked_and_imports_nothing(tmp_path):
    rows = [
        patient_row(1),
        ["C2", "李小華", "X", "", "", ""],
        ["C3", "張大同", "男", "1999-02-30", "", "A123456788"],
        ["C4", "陳\x00美玲", "女", "", "", ""],
    ]
    path = write_csv(tmp_path / "p.csv", PATIENT_HEADERS, rows)

    report = _import(path, dry_run=True)

    assert not report.written and Patient.objects.count() == 0
    assert (report.added, report.rejected) == (1, 3)
    assert [(e.row, e.column) for e in report.errors] == [
        (3, "性別"),
        (4, "出生日期"),
        (4, "身分證字號"),
        (5, "姓名"),
    ]
    id_error = report.errors[2]
    assert "A123456788" not in id_error.value and id_error.value.startswith("A1")
    assert "檢查碼" in id_error.reason
    assert "控制字元" in report.errors[3].reason
    assert "試算" in report.summary()


def test_all_or_nothing_writes_nothing_when_one_row_is_bad(tmp_path):
    rows = [patient_row(n) for n in range(1, 2500)] + [["C9", "", "", "", "", ""]]
    path = write_csv(tmp_path / "p.csv", PATIENT_HEADERS, rows)

    report = _import(path)

    assert not report.written and report.rejected == 1 and report.added == 2499
    assert Patient.objects.count() == 0
    assert report.errors[0].reason == "「姓名」不可空白。"
    assert not AuditEntry.objects.exists()


def test_keep_good_imports_good_rows_and_writes_rejects_to_fix_and_reimport(tmp_path):
    rows = [patient_row(1), ["C2", "李小華", "男", "113/13/01", "", ""], patient_row(3)]
    rejects = tmp_path / "rejects.csv"

    report = _import(
        write_csv(tmp_path / "p.csv", PATIENT_HEADERS, rows), keep_good=True, rejects_path=rejects
    )

    assert report.written and report.added == 2 and report.rejected == 1
    with rejects.open(encoding="utf-8-sig", newline="") as handle:
        header, bad = list(csv.reader(handle))
    assert header == [*PATIENT_HEADERS, "錯誤原因"]
    assert bad[:4] == ["C2", "李小華", "男", "113/13/01"] and "出生日期" in bad[-1]

    # The clerk fixes the date and imports the rejects file as it is.
    bad[3] = "113/12/01"
    write_csv(rejects, header, [bad], encoding="utf-8-sig")
    again = _import(rejects)
    assert again.added == 1 and not again.errors
    assert Patient.objects.get(chart_no="C2").birth_date == dt.date(2024, 12, 1)


def test_formula_is_stored_as_text_and_neutralised_in_rejects(tmp_path):
    formula = "=cmd|' /C calc'!A0"
    rows = [["C1", formula, "", "", "", ""], ["C2", formula, "?", "", "", ""]]
    rejects = tmp_path / "rejects.csv"

    _import(
        write_csv(tmp_path / "p.csv", PATIENT_HEADERS, rows), keep_good=True, rejects_path=rejects
    )

    assert Patient.objects.get(chart_no="C1").name == formula
    assert f"'{formula}" in rejects.read_text(encoding="utf-8-sig")


def test_a_10_mb_cell_is_a_row_error_not_a_crash(tmp_path):
    path = tmp_path / "p.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write(",".join(PATIENT_HEADERS) + "\n")
        handle.write("C1," + "王" * 10_000_000 + ",,,,\n")
        handle.write(",".join(patient_row(2)) + "\n")

    report = _import(path, dry_run=True)

    assert report.rejected == 1 and report.added == 1
    assert report.errors[0].row == 2 and "超過" in report.errors[0].reason


def test_duplicate_rows_count_once_and_conflicting_duplicates_are_errors(tmp_path):
    rows = [patient_row(1), patient_row(1), patient_row(2), patient_row(2, name="不同的人")]

    report = _import(write_csv(tmp_path / "p.csv", PATIENT_HEADERS, rows), dry_run=True)

    assert (report.added, report.unchanged, report.rejected) == (2, 1, 1)
    assert report.errors[0].row == 5 and "兩次" in report.errors[0].reason


def test_ragged_rows_and_empty_cells(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        ",".join(PATIENT_HEADERS) + "\nC1,王小明\nC2,李小華,女,,,,extra\n", encoding="utf-8"
    )

    report = _import(path, dry_run=True)

    assert report.added == 1 and report.rejected == 1
    assert report.errors[0].row == 3 and "比標題列多" in report.errors[0].reason


def test_an_empty_cell_keeps_what_is_stored(tmp_path):
    PatientFactory(chart_no="C1", name="王小明", phone="+886912345678")
    path = write_csv(tmp_path / "p.csv", PATIENT_HEADERS, [["C1", "王小明", "", "", "", ""]])

    report = _import(path)

    assert report.unchanged == 1
    assert Patient.objects.get(chart_no="C1").phone == "+886912345678"


def test_xlsx_import(tmp_path):
    path = write_xlsx(
        tmp_path / "p.xlsx",
        PATIENT_HEADERS,
        [["C1", "王小明", "男", dt.datetime(1960, 3, 15), "0912345678", None]],  # noqa: DTZ001 - Excel dates are naive
    )

    report = _import(path)

    assert report.added == 1 and Patient.objects.get(chart_no="C1").birth_date == dt.date(
        1960, 3, 15
    )


def test_no_consent_is_invented(tmp_path):
    _import(write_csv(tmp_path / "p.csv", PATIENT_HEADERS, [patient_row(1)]))

    assert not ConsentEntry.objects.exists() and not ConsentState.objects.exists()


def test_explicit_consent_columns_become_ledger_entries_with_the_file_checksum(tmp_path):
    headers = [*PATIENT_HEADERS, "同意目的", "同意管道", "同意日期", "同意書編號"]
    rows = [
        [*patient_row(1), "照護", "簡訊、LINE", "113/01/02", "F-001"],
        [*patient_row(2), "", "", "", ""],
    ]
    existing = PatientFactory(chart_no="C000003", national_id=national_id(3), name="測試3號")
    from tests.factories import grant

    grant(existing)  # already has SMS care consent: the import merges into the current state
    rows.append([*patient_row(3), "照護", "簡訊", "113/01/02", ""])
    path = write_csv(tmp_path / "p.csv", headers, rows)

    report = _import(path)
    again = _import(path)

    assert report.consent_entries == 3 and again.consent_entries == 0  # not recorded twice
    entries = ConsentEntry.objects.filter(source=Source.IMPORT)
    assert entries.count() == 3
    first = Patient.objects.get(chart_no="C000001")
    assert sorted(entries.filter(patient=first).values_list("channel", flat=True)) == [
        "line",
        "sms",
    ]
    assert all(e.evidence.startswith(f"sha256:{report.checksum}") for e in entries)
    assert entries.filter(patient=first).first().evidence.endswith("F-001")
    assert ConsentState.objects.filter(patient=first, granted=True).count() == 2
    assert not ConsentEntry.objects.filter(patient__chart_no="C000002").exists()


def test_incomplete_consent_columns_are_a_row_error(tmp_path):
    headers = [*PATIENT_HEADERS, "同意目的", "同意管道", "同意日期"]
    rows = [[*patient_row(1), "照護", "", "113/01/02"]]

    report = _import(write_csv(tmp_path / "p.csv", headers, rows), dry_run=True)

    assert report.rejected == 1 and "同意管道" in report.errors[0].reason


def test_the_import_is_audited_against_every_patient(tmp_path):
    report = _import(
        write_csv(tmp_path / "p.csv", PATIENT_HEADERS, [patient_row(1), patient_row(2)])
    )

    entry = AuditEntry.objects.get(action=AuditEntry.Action.IMPORT)
    assert entry.patients.count() == 2 and report.written
