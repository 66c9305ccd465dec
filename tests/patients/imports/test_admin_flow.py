"""The admin import flow: upload → suggested mapping → preview → check / import in the worker."""

import csv
import io

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from patients.imports import admin_flow
from patients.models import AuditEntry, ImportMapping, ImportRun, Patient
from tests.factories import PatientFactory
from tests.patients.imports.files import PATIENT_HEADERS, national_id, patient_row, write_xlsx

pytestmark = pytest.mark.django_db

BAD_ID = "A123456788"  # wrong check digit


@pytest.fixture(autouse=True)
def _private_dir(settings, tmp_path):
    settings.IMPORT_DIR = tmp_path / "imports"
    settings.IMPORT_MAX_UPLOAD_MB = 5
    return settings.IMPORT_DIR


@pytest.fixture
def queued(monkeypatch):
    """The worker queue: what was handed to django-q2 (run synchronously by the test)."""
    calls = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda *a, **kw: calls.append((a, kw)))
    return calls


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


def _csv(rows, headers=PATIENT_HEADERS, encoding="utf-8"):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(headers)
    writer.writerows(rows)
    data = io.BytesIO(out.getvalue().encode(encoding))
    data.name = "his-export.csv"
    return data


def _upload(client, data, kind="patients"):
    response = client.post(reverse("admin:patients_importrun_upload"), {"kind": kind, "file": data})
    assert response.status_code == 302, response.content.decode()[:2000]
    return response["Location"].rstrip("/").split("/")[-2]


def _map(client, token, **extra):
    page = client.get(reverse("admin:patients_importrun_map", args=[token]))
    form = page.context["form"]
    data = {name: form.initial.get(name, "") for name in form.fields}
    data.update(extra)
    return client.post(reverse("admin:patients_importrun_map", args=[token]), data)


def _rows():
    bad = patient_row(3)
    bad[5] = BAD_ID
    return [patient_row(1), patient_row(2), bad]


def test_upload_suggests_the_mapping_from_chinese_headers(desk):
    token = _upload(desk, _csv(_rows()))

    page = desk.get(reverse("admin:patients_importrun_map", args=[token]))

    form = page.context["form"]
    suggested = [form.initial[f"column_{i}"] for i in range(len(PATIENT_HEADERS))]
    assert suggested == ["chart_no", "name", "sex", "birth_date", "phone", "national_id"]
    html = page.content.decode()
    assert "（不匯入）" in html and "病歷號（必填）" in html and "utf-8" in html


def test_english_headers_are_suggested_too(desk):
    headers = ["Chart No", "Name", "Gender", "DOB", "Mobile", "ID No"]
    token = _upload(desk, _csv([patient_row(1)], headers=headers))

    form = desk.get(reverse("admin:patients_importrun_map", args=[token])).context["form"]

    assert form.initial["column_0"] == "chart_no" and form.initial["column_5"] == "national_id"


def test_a_mapping_without_a_required_field_is_refused_in_zh_hant(desk):
    token = _upload(desk, _csv(_rows()))

    response = _map(desk, token, column_1="")

    assert response.status_code == 200
    assert "缺少必填欄位：姓名" in response.content.decode()


def test_preview_shows_parsed_masked_values_and_row_errors(desk, front_desk_user):
    existing = PatientFactory(chart_no="C000001")
    token = _upload(desk, _csv(_rows()))
    assert _map(desk, token).status_code == 302

    page = desk.get(reverse("admin:patients_importrun_preview", args=[token]))

    html = page.content.decode()
    preview = page.context["preview"]
    first, second, bad = preview.rows
    labels = preview.labels
    # ROC 51/02/11 is stored as 1962-02-11; the name and national ID are partly hidden.
    assert first.values[labels.index("出生日期")] == "1962-02-11"
    assert first.values[labels.index("姓名")] == "測**號"
    assert national_id(2) not in html and "測試2號" not in html
    assert first.outcome == "更新" or first.outcome == "未變更"
    assert second.outcome == "新增" and bad.outcome == "錯誤"
    assert bad.errors and "身分證" in bad.errors[0].reason + bad.errors[0].column
    assert bad.errors[0].reason in html
    assert not Patient.objects.filter(chart_no="C000002").exists()  # nothing written
    entry = AuditEntry.objects.get(action=AuditEntry.Action.VIEW, actor=front_desk_user)
    assert list(entry.patients.all()) == [existing]


def test_check_then_import_in_the_worker_counts_every_row(
    desk, queued, django_capture_on_commit_callbacks
):
    token = _upload(desk, _csv(_rows()))
    _map(desk, token)

    # check: a dry run, queued for the worker once the request commits
    with django_capture_on_commit_callbacks(execute=True):
        response = desk.post(
            reverse("admin:patients_importrun_preview", args=[token]), {"check": "1"}
        )
    check = ImportRun.objects.get()
    assert response["Location"].endswith(f"/{check.pk}/change/?upload={token}")
    assert check.dry_run and check.status == ImportRun.Status.QUEUED
    assert queued[0][0] == (admin_flow.TASK, check.pk)

    admin_flow.import_run_task(check.pk)

    check.refresh_from_db()
    assert (check.status, check.rows_total, check.added, check.rejected) == ("done", 3, 2, 1)
    assert not Patient.objects.exists()
    page = desk.get(response["Location"])
    html = page.content.decode()
    assert 'id="import-after-check"' in html and check.errors[0]["reason"] in html

    # import, keeping the good rows: written, the bad one set aside for download
    with django_capture_on_commit_callbacks(execute=True):
        response = desk.post(
            reverse("admin:patients_importrun_preview", args=[token]),
            {"import": "1", "keep_good": "on"},
        )
    run = ImportRun.objects.exclude(pk=check.pk).get()
    assert not run.dry_run and not run.all_or_nothing and run.origin == ImportRun.Origin.ADMIN
    admin_flow.import_run_task(run.pk)

    run.refresh_from_db()
    assert (run.status, run.added, run.updated, run.unchanged, run.rejected) == ("done", 2, 0, 0, 1)
    assert set(Patient.objects.values_list("chart_no", flat=True)) == {"C000001", "C000002"}
    page = desk.get(reverse("admin:patients_importrun_change", args=[run.pk])).content.decode()
    assert 'id="run-counts"' in page and 'id="rejects-link"' in page and "http-equiv" not in page
    download = desk.get(reverse("admin:patients_importrun_rejects", args=[run.pk]))
    body = b"".join(download.streaming_content).decode("utf-8-sig")
    assert "C000003" in body and "錯誤原因" in body and "C000001" not in body
    # the private copies are gone: the upload (a real import ends it) and the run's own copy
    assert not admin_flow.run_dir(run.pk).exists()
    assert not (admin_flow.import_dir() / "uploads" / token).exists()
    assert AuditEntry.objects.filter(
        action=AuditEntry.Action.EXPORT, path__contains="rejects"
    ).exists()
    assert AuditEntry.objects.filter(action=AuditEntry.Action.IMPORT).exists()


def test_all_or_nothing_import_with_a_bad_row_writes_nothing(
    desk, queued, django_capture_on_commit_callbacks
):
    token = _upload(desk, _csv(_rows()))
    _map(desk, token)
    with django_capture_on_commit_callbacks(execute=True):
        desk.post(reverse("admin:patients_importrun_preview", args=[token]), {"import": "1"})
    run = ImportRun.objects.get()

    admin_flow.import_run_task(run.pk)

    run.refresh_from_db()
    assert run.status == ImportRun.Status.REJECTED and run.rejected == 1
    assert not Patient.objects.exists()
    html = desk.get(reverse("admin:patients_importrun_change", args=[run.pk])).content.decode()
    assert "整批未匯入" in html and run.errors[0]["reason"] in html


def test_the_task_runs_a_run_once(desk, queued, django_capture_on_commit_callbacks):
    token = _upload(desk, _csv([patient_row(1)]))
    _map(desk, token)
    with django_capture_on_commit_callbacks(execute=True):
        desk.post(reverse("admin:patients_importrun_preview", args=[token]), {"import": "1"})
    run = ImportRun.objects.get()

    admin_flow.import_run_task(run.pk)
    second = admin_flow.import_run_task(run.pk)

    assert second == "already claimed"
    run.refresh_from_db()
    assert run.added == 1 and Patient.objects.count() == 1


def test_a_saved_mapping_is_offered_for_the_next_file_of_the_same_shape(desk):
    headers = ["病歷", "名字", "電話"]  # 名字 is not a known spelling: the clerk maps it
    token = _upload(desk, _csv([["C9", "王小明", "0912345678"]], headers=headers))
    response = _map(desk, token, column_1="name", save_as="診所 HIS 病人")
    assert response.status_code == 302
    saved = ImportMapping.objects.get(name="診所 HIS 病人")
    assert saved.columns == {"病歷": "chart_no", "名字": "name", "電話": "phone"}

    again = _upload(desk, _csv([["C10", "李小華", "0912000111"]], headers=headers))
    form = desk.get(reverse("admin:patients_importrun_map", args=[again])).context["form"]

    assert form.initial["column_1"] == "name" and form.initial["save_as"] == "診所 HIS 病人"


def test_big5_file_is_detected_and_the_encoding_can_be_chosen(desk):
    token = _upload(desk, _csv([patient_row(1)], encoding="cp950"))
    page = desk.get(reverse("admin:patients_importrun_map", args=[token]))
    assert page.context["used_encoding"] == "Big5"

    # choosing UTF-8 for a Big5 file: the page says it can't be read, nothing crashes
    response = desk.post(
        reverse("admin:patients_importrun_map", args=[token]), {"encoding": "utf-8", "reread": "1"}
    )
    page = desk.get(response["Location"])
    assert page.context["read_error"] and "編碼" in page.context["read_error"]

    # back to Big5: the columns are read, and suggested, again
    response = desk.post(
        reverse("admin:patients_importrun_map", args=[token]), {"encoding": "cp950", "reread": "1"}
    )
    form = desk.get(response["Location"]).context["form"]
    assert form.initial["column_0"] == "chart_no" and form.initial["encoding"] == "cp950"


def test_xlsx_upload_is_previewed(desk):
    path = write_xlsx(admin_flow.import_dir().parent / "p.xlsx", PATIENT_HEADERS, [patient_row(1)])
    with path.open("rb") as handle:
        data = io.BytesIO(handle.read())
    data.name = "his.xlsx"
    token = _upload(desk, data)
    _map(desk, token)

    preview = desk.get(reverse("admin:patients_importrun_preview", args=[token])).context["preview"]

    assert preview.encoding == "xlsx" and preview.rows[0].outcome == "新增"


def test_too_big_or_wrong_type_is_refused(desk, settings):
    settings.IMPORT_MAX_UPLOAD_MB = 0
    response = desk.post(
        reverse("admin:patients_importrun_upload"), {"kind": "patients", "file": _csv(_rows())}
    )
    assert "檔案超過 0 MB 的上限" in response.content.decode()

    settings.IMPORT_MAX_UPLOAD_MB = 5
    data = io.BytesIO(b"MZ\x90\x00")
    data.name = "setup.exe"
    response = desk.post(
        reverse("admin:patients_importrun_upload"), {"kind": "patients", "file": data}
    )
    assert "只能匯入 CSV 或 Excel" in response.content.decode()
    assert not list((admin_flow.import_dir() / "uploads").glob("*/source.*"))


def test_staff_without_add_patient_may_not_import(client, front_desk_user):
    other = User.objects.create_user("viewer", password="x", is_staff=True)
    client.force_login(other)
    assert client.get(reverse("admin:patients_importrun_upload")).status_code == 403

    # nor open another clerk's upload
    client.force_login(front_desk_user)
    token = _upload(client, _csv(_rows()))
    manager = User.objects.create_user("m2", password="x", is_staff=True)
    manager.groups.add(*front_desk_user.groups.all())
    client.force_login(manager)
    assert client.get(reverse("admin:patients_importrun_map", args=[token])).status_code == 404


def test_anonymous_is_sent_to_log_in(client):
    response = client.get(reverse("admin:patients_importrun_upload"))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_run_page_refreshes_while_the_worker_reads(desk, front_desk_user):
    run = ImportRun.objects.create(
        kind="patients",
        file_name="a.csv",
        origin=ImportRun.Origin.ADMIN,
        status=ImportRun.Status.RUNNING,
        progress=2000,
        rows_total=5000,
        started_by=front_desk_user,
    )

    html = desk.get(reverse("admin:patients_importrun_change", args=[run.pk])).content.decode()

    assert 'http-equiv="refresh"' in html
    assert 'value="2000"' in html and 'max="5000"' in html and "2000 / 5000" in html


def test_old_uploads_are_removed(desk, settings):
    import os
    import time

    from django.utils import timezone

    token = _upload(desk, _csv(_rows()))
    folder = admin_flow.import_dir() / "uploads" / token
    old = time.time() - (settings.IMPORT_KEEP_HOURS + 1) * 3600
    os.utime(folder, (old, old))

    assert admin_flow.expired_remove(now=timezone.now()) == 1
    assert not folder.exists()


def test_a_run_nobody_picks_up_says_the_worker_may_be_down(desk, front_desk_user):
    import datetime as dt

    from django.utils import timezone

    run = ImportRun.objects.create(
        kind="patients",
        file_name="a.csv",
        origin=ImportRun.Origin.ADMIN,
        started_by=front_desk_user,
        queued_at=timezone.now() - dt.timedelta(minutes=5),
    )

    html = desk.get(reverse("admin:patients_importrun_change", args=[run.pk])).content.decode()

    assert 'id="run-waiting"' in html and "qcluster" in html


def test_visits_preview_names_a_chart_number_with_no_patient(desk):
    PatientFactory(chart_no="A1")
    headers = ["病歷號", "就診日期", "科別", "醫師"]
    rows = [["A1", "113/05/01", "家醫科", "王醫師"], ["ZZ9", "113/05/02", "家醫科", "王醫師"]]
    token = _upload(desk, _csv(rows, headers=headers), kind="visits")
    _map(desk, token)

    preview = desk.get(reverse("admin:patients_importrun_preview", args=[token])).context["preview"]

    known, unknown = preview.rows
    assert known.outcome == "新增" and known.values[1] == "2024-05-01"
    assert unknown.outcome == "錯誤" and "請先匯入病人資料" in unknown.errors[0].reason
