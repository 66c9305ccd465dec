import json

import pytest
from django.core.management import CommandError, call_command

from patients.models import AuditEntry, ImportMapping, ImportRun, Patient
from tests.patients.imports.files import PATIENT_HEADERS, patient_row, write_csv

pytestmark = pytest.mark.django_db


def _call(*args):
    from io import StringIO

    out = StringIO()
    call_command("import_records", *map(str, args), stdout=out, stderr=StringIO())
    return out.getvalue()


def test_headers_that_match_import_at_once_and_record_a_run(tmp_path):
    path = write_csv(tmp_path / "p.csv", PATIENT_HEADERS, [patient_row(1), patient_row(2)])

    output = _call("patients", path)

    assert Patient.objects.count() == 2
    assert "已匯入：共 2 列，新增 2" in output
    run = ImportRun.objects.get()
    assert (run.status, run.added, run.progress, run.file_name) == ("done", 2, 2, "p.csv")
    assert len(run.checksum) == 64
    entry = AuditEntry.objects.get(action=AuditEntry.Action.IMPORT)
    assert entry.actor_name == "manage.py import_records" and entry.patients.count() == 2


def test_uncertain_headers_stop_and_write_the_suggestion_to_edit(tmp_path):
    headers = ["病歷號", "電話", "手機", "Name"]
    path = write_csv(tmp_path / "p.csv", headers, [["C1", "0912345678", "0912345678", "王"]])

    with pytest.raises(CommandError, match="電話、手機"):
        _call("patients", path)

    suggestion = tmp_path / "p.csv.mapping.json"
    document = json.loads(suggestion.read_text(encoding="utf-8"))
    assert document["ambiguous"] == {"phone": ["電話", "手機"]}
    assert not Patient.objects.exists() and not ImportRun.objects.exists()

    # The clerk picks the mobile column and passes the file back.
    document["columns"]["手機"] = "phone"
    suggestion.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    _call("patients", path, "--mapping", suggestion)
    assert Patient.objects.get(chart_no="C1").phone == "+886912345678"


def test_a_saved_mapping_by_name(tmp_path):
    ImportMapping.objects.create(
        name="HIS 病人", kind="patients", columns={"No": "chart_no", "Who": "name"}
    )
    path = write_csv(tmp_path / "p.csv", ["No", "Who"], [["C1", "王小明"]])

    _call("patients", path, "--mapping", "HIS 病人")

    run = ImportRun.objects.get()
    assert run.mapping.name == "HIS 病人" and Patient.objects.get().name == "王小明"


def test_dry_run_lists_bad_rows_and_exits_non_zero(tmp_path):
    path = write_csv(
        tmp_path / "p.csv", PATIENT_HEADERS, [patient_row(1), ["C2", "王小明", "?", "", "", ""]]
    )

    with pytest.raises(CommandError, match="1 列有錯誤"):
        _call("patients", path, "--dry-run")

    assert not Patient.objects.exists()
    run = ImportRun.objects.get()
    assert run.dry_run and run.errors[0]["row"] == 3 and run.errors[0]["column"] == "性別"


def test_keep_good_writes_rejects(tmp_path):
    path = write_csv(
        tmp_path / "p.csv", PATIENT_HEADERS, [patient_row(1), ["C2", "", "", "", "", ""]]
    )
    rejects = tmp_path / "bad.csv"

    output = _call("patients", path, "--keep-good", "--rejects", rejects)

    assert Patient.objects.count() == 1 and rejects.exists() and str(rejects) in output
    assert ImportRun.objects.get().rejects_file == str(rejects)


def test_an_unreadable_file_fails_the_run_with_a_reason(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"")

    with pytest.raises(CommandError, match="標題列"):
        _call("patients", path)
