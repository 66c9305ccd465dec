"""Whatever the file holds, an import ends with a report or a reason, and an all-or-nothing
import writes every row or none."""

import csv
import tempfile
from pathlib import Path

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consent.models import ConsentEntry
from patients.imports import MappingError, TableError, run_import
from patients.models import AuditEntry, Patient
from tests.patients.imports.files import NOW, PATIENT_HEADERS, national_id, patient_row

HEADERS = [*PATIENT_HEADERS, "同意目的", "同意管道", "同意日期"]
MAPPING = {
    "病歷號": "chart_no",
    "姓名": "name",
    "性別": "sex",
    "出生日期": "birth_date",
    "手機": "phone",
    "身分證字號": "national_id",
    "同意目的": "consent_purpose",
    "同意管道": "consent_channel",
    "同意日期": "consent_date",
}
TRICKY = [
    "",
    "=cmd|' /C calc'!A0",
    "\x00",
    "王\x00明",
    "a\nb",
    "113/02/30",
    "民國113年5月1日",
    "0912-345-678",
    "09123456789999",
    "#123",
    national_id(7),
    "A123456788",
    "照護",
    "簡訊、LINE",
    "男",
    "x" * 300,
    "'=1+1",
]
cell = st.one_of(st.sampled_from(TRICKY), st.text(max_size=12))
good_row = st.integers(1, 40).map(lambda n: [*patient_row(n), "", "", ""])
any_row = st.one_of(good_row, st.lists(cell, min_size=0, max_size=11))


class _Undo(Exception):
    pass


def _write(rows) -> Path:
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, removed by the caller
        "w", suffix=".csv", encoding="utf-8", newline="", delete=False
    )
    with handle:
        writer = csv.writer(handle)
        writer.writerow(HEADERS)
        writer.writerows(rows)
    return Path(handle.name)


@pytest.mark.django_db
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(any_row, max_size=12))
def test_all_or_nothing_never_half_imports(rows):
    path = _write(rows)
    try:
        with transaction.atomic():
            report = run_import(kind="patients", path=path, mapping=MAPPING, dry_run=False, now=NOW)
            stored = Patient.objects.count()
            if report.rejected:
                assert not report.written
                assert stored == 0 and not ConsentEntry.objects.exists()
                assert not AuditEntry.objects.exists()
            else:
                assert report.written and stored == report.added
                assert report.rows_total == report.added + report.unchanged
            raise _Undo
    except _Undo:
        pass
    finally:
        path.unlink()


@pytest.mark.django_db
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=400))
def test_any_bytes_give_a_report_or_a_reason(data):
    handle = tempfile.NamedTemporaryFile(suffix=".csv", delete=False)  # noqa: SIM115
    with handle:
        handle.write(b"\xe7\x97\x85\xe6\xad\xb7\xe8\x99\x9f,\xe5\xa7\x93\xe5\x90\x8d\n" + data)
    path = Path(handle.name)
    try:
        with transaction.atomic():
            try:
                report = run_import(
                    kind="patients",
                    path=path,
                    mapping={"病歷號": "chart_no", "姓名": "name"},
                    dry_run=True,
                    now=NOW,
                )
            except (TableError, MappingError) as exc:
                assert exc.reason
            else:
                assert not report.written and Patient.objects.count() == 0
            raise _Undo
    except _Undo:
        pass
    finally:
        path.unlink()
