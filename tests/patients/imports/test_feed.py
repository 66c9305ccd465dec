"""The daily feed: a folder per saved mapping, each file imported once, too many rejects → none."""

import datetime as dt
import logging
import os
import time

import pytest
from django.utils import timezone

from patients.imports import feed, suggest_mapping
from patients.models import ImportMapping, ImportRun, Patient
from tests.patients.imports.files import PATIENT_HEADERS, patient_row, write_csv

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 12, 3, 1, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _dirs(settings, tmp_path):
    settings.IMPORT_DIR = tmp_path / "imports"
    settings.IMPORT_FEED_DIR = str(tmp_path / "feed")
    settings.IMPORT_FEED_SETTLE_SECONDS = 0
    settings.IMPORT_FEED_MAX_REJECT_SHARE = 0.05


@pytest.fixture
def mapping(settings):
    saved = ImportMapping.objects.create(
        name="每日病人",
        kind="patients",
        columns=suggest_mapping("patients", PATIENT_HEADERS).columns,
    )
    (feed.feed_folder(saved)).mkdir(parents=True)
    return saved


def _drop(mapping, name, rows):
    return write_csv(feed.feed_folder(mapping) / name, PATIENT_HEADERS, rows)


def _bad(n):
    row = patient_row(n)
    row[3] = "13/13/13"  # no such date
    return row


def test_a_new_file_is_imported_once_and_moved_to_done(mapping):
    rows = [patient_row(n) for n in range(1, 11)]
    _drop(mapping, "patients.csv", rows)

    (run,) = feed.feed_scan(now=NOW)

    assert (run.status, run.origin, run.added, run.rejected) == ("done", "feed", 10, 0)
    assert run.mapping == mapping and run.checksum and Patient.objects.count() == 10
    folder = feed.feed_folder(mapping)
    assert not (folder / "patients.csv").exists()
    assert [p.name for p in (folder / "done").iterdir()] == ["20261203-090000-patients.csv"]

    # the HIS sends the same file again (another name): ignored, no run, nothing changed
    _drop(mapping, "patients-again.csv", rows)
    assert feed.feed_scan(now=NOW + dt.timedelta(minutes=10)) == []
    assert ImportRun.objects.count() == 1
    assert not (folder / "patients-again.csv").exists()
    assert len(list((folder / "done").iterdir())) == 2


def test_too_many_rejects_apply_nothing_and_need_attention(mapping, caplog):
    rows = [patient_row(n) for n in range(1, 19)] + [_bad(19), _bad(20)]  # 10 % bad
    _drop(mapping, "patients.csv", rows)

    with caplog.at_level(logging.WARNING, logger="patients.imports.feed"):
        (run,) = feed.feed_scan(now=NOW)

    run.refresh_from_db()
    assert run.status == ImportRun.Status.REJECTED and run.rejected == 2
    assert "整批未匯入" in run.summary and run.errors
    assert not Patient.objects.exists()  # the 18 good rows were not applied either
    rejected = feed.feed_folder(mapping) / "rejected"
    names = sorted(p.name for p in rejected.iterdir())
    assert names == ["20261203-090000-patients.csv", "20261203-090000-patients.csv.errors.csv"]
    assert run.rejects_file.endswith(".errors.csv")
    assert list(feed.failed_import_runs(NOW - dt.timedelta(days=1))) == [run]
    assert f"run {run.pk} rejected" in caplog.text

    # the same refused file again: no second run, and it is not filed as done
    _drop(mapping, "patients-again.csv", rows)
    assert feed.feed_scan(now=NOW) == []
    assert ImportRun.objects.count() == 1
    assert (rejected / "20261203-090000-duplicate-patients-again.csv").exists()
    assert "測試" not in caplog.text and "C000019" not in caplog.text  # no patient data in logs


def test_a_few_rejects_keep_the_good_rows_and_set_the_bad_aside(mapping):
    rows = [patient_row(n) for n in range(1, 40)] + [_bad(40)]  # 2.5 % bad
    _drop(mapping, "patients.csv", rows)

    (run,) = feed.feed_scan(now=NOW)

    assert run.status == ImportRun.Status.DONE and (run.added, run.rejected) == (39, 1)
    assert Patient.objects.count() == 39
    errors = feed.feed_folder(mapping) / "done" / "20261203-090000-patients.csv.errors.csv"
    assert errors.is_file() and "C000040" in errors.read_text(encoding="utf-8-sig")
    assert run.rejects_file == str(errors)
    assert list(feed.failed_import_runs(NOW - dt.timedelta(days=1))) == []


def test_an_unreadable_file_fails_and_is_moved_aside(mapping):
    (feed.feed_folder(mapping) / "broken.csv").write_bytes(b"")

    (run,) = feed.feed_scan(now=NOW)

    run.refresh_from_db()
    assert run.status == ImportRun.Status.FAILED and run.summary
    assert (feed.feed_folder(mapping) / "rejected" / "20261203-090000-broken.csv").exists()
    assert list(feed.failed_import_runs(NOW - dt.timedelta(days=1))) == [run]


def test_files_still_being_written_wait(mapping, settings):
    _drop(mapping, "patients.csv.part", [patient_row(1)])
    _drop(mapping, "notes.txt", [patient_row(2)])
    settings.IMPORT_FEED_SETTLE_SECONDS = 60
    fresh = _drop(mapping, "patients.csv", [patient_row(3)])

    assert feed.feed_scan(now=NOW) == []

    old = time.time() - 120
    os.utime(fresh, (old, old))
    assert len(feed.feed_scan(now=NOW)) == 1
    assert (feed.feed_folder(mapping) / "patients.csv.part").exists()


def test_a_folder_without_a_mapping_is_left_alone(mapping, settings):
    stray = feed.feed_folder(mapping).parent / "沒有這個對應"
    stray.mkdir()
    write_csv(stray / "p.csv", PATIENT_HEADERS, [patient_row(1)])

    assert feed.feed_scan(now=NOW) == []
    assert (stray / "p.csv").exists()


def test_the_feed_is_off_without_a_folder(mapping, settings):
    _drop(mapping, "patients.csv", [patient_row(1)])
    settings.IMPORT_FEED_DIR = ""

    assert feed.feed_task() == {"runs": 0, "expired_removed": 0, "stale_failed": 0}
    assert not ImportRun.objects.exists()


def test_an_appointments_feed_is_a_full_day_list(settings):
    headers = ["病歷號", "預約編號", "預約時間", "科別", "醫師"]
    saved = ImportMapping.objects.create(
        name="每日預約",
        kind="appointments",
        columns=suggest_mapping("appointments", headers).columns,
    )
    feed.feed_folder(saved).mkdir(parents=True)
    write_csv(feed.feed_folder(saved) / "a.csv", headers, [])

    (run,) = feed.feed_scan(now=NOW)

    assert run.full_day and run.status == ImportRun.Status.DONE


def test_failed_runs_are_only_the_feeds_and_since(mapping):
    old = ImportRun.objects.create(
        kind="patients", file_name="a.csv", origin="feed", status="failed", queued_at=NOW
    )
    ImportRun.objects.create(kind="patients", file_name="b.csv", origin="admin", status="rejected")
    ImportRun.objects.create(kind="patients", file_name="c.csv", origin="feed", status="done")

    assert list(feed.failed_import_runs(NOW - dt.timedelta(hours=1))) == [old]
    assert list(feed.failed_import_runs(timezone.now() + dt.timedelta(hours=1))) == []


def test_setup_schedules_watches_the_feed_folder():
    from django.core.management import call_command
    from django_q.models import Schedule

    call_command("setup_schedules", stdout=open(os.devnull, "w"))  # noqa: SIM115

    schedule = Schedule.objects.get(func="patients.imports.feed.feed_task")
    assert schedule.schedule_type == Schedule.MINUTES and schedule.repeats == -1


def test_a_run_whose_worker_died_is_failed_by_the_next_scan():
    from patients.imports import admin_flow

    long_ago = timezone.now() - dt.timedelta(hours=3)
    dead = ImportRun.objects.create(
        kind="patients", file_name="a.csv", status="running", started_at=long_ago
    )
    alive = ImportRun.objects.create(
        kind="patients", file_name="b.csv", status="running", started_at=timezone.now()
    )

    assert feed.feed_task()["stale_failed"] == 1

    dead.refresh_from_db()
    alive.refresh_from_db()
    assert dead.status == "failed" and "未寫入" in dead.summary and alive.status == "running"
    assert admin_flow.TASK_TIMEOUT_SECONDS * 2 < 3 * 3600


def test_the_mapping_page_shows_its_feed_folder(client, front_desk_user, mapping):
    from django.urls import reverse

    client.force_login(front_desk_user)
    html = client.get(
        reverse("admin:patients_importmapping_change", args=[mapping.pk])
    ).content.decode()

    assert str(feed.feed_folder(mapping)) in html and "每日自動匯入資料夾" in html
