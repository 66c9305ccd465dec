"""End to end: a clerk imports the HIS's patient list in Chromium (upload, map, preview, check,
import), the worker's task run in-process by django-q2's sync mode."""

import pytest

from patients.models import AuditEntry, ImportRun, Patient
from tests.patients.imports.files import PATIENT_HEADERS, patient_row, write_csv

from .conftest import E2E, log_in, screenshot, staff, wait_until

pytestmark = E2E


@pytest.fixture
def worker_in_process(monkeypatch, settings, tmp_path):
    # django-q2 reads Conf.SYNC when a task is queued: the task then runs in this process.
    monkeypatch.setattr("django_q.conf.Conf.SYNC", True)
    settings.IMPORT_DIR = tmp_path / "imports"


def _no_sideways_scroll(browser):
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{overflow} px of sideways scrolling"


def test_clerk_uploads_maps_previews_checks_and_imports(
    browser, live_server, tmp_path, worker_in_process
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    staff("desk", "Front desk")
    bad = patient_row(3)
    bad[3] = "13/13/13"  # no such date
    headers = [*PATIENT_HEADERS[:5], "備用欄"]  # a column the clinic doesn't import
    rows = [[*patient_row(n)[:5], "x"] for n in (1, 2)] + [[*bad[:5], "x"]]
    path = write_csv(tmp_path / "his-export.csv", headers, rows, encoding="cp950")

    log_in(browser, live_server, "desk")
    browser.get(f"{live_server.url}/admin/patients/importrun/")
    browser.find_element(By.ID, "import-file-link").click()

    # 1. upload
    Select(browser.find_element(By.NAME, "kind")).select_by_value("patients")
    browser.find_element(By.NAME, "file").send_keys(str(path))
    screenshot(browser, "import_1_upload")
    browser.find_element(By.CSS_SELECTOR, "#upload-form [type=submit]").click()

    # 2. map: suggested from the Chinese headers, the Big5 file detected
    wait_until(lambda: "/map/" in browser.current_url, seconds=20)
    assert "讀取編碼：Big5" in browser.page_source
    first = Select(browser.find_element(By.NAME, "column_0"))
    assert first.first_selected_option.text == "病歷號（必填）"
    spare = Select(browser.find_element(By.NAME, "column_5"))
    assert spare.first_selected_option.text == "（不匯入）"
    browser.find_element(By.NAME, "save_as").send_keys("診所 HIS 病人")
    _no_sideways_scroll(browser)
    screenshot(browser, "import_2_map")
    browser.find_element(By.NAME, "next").click()

    # 3. preview: parsed values (ROC date → Gregorian), masked names, the bad row's reason
    wait_until(lambda: "/preview/" in browser.current_url, seconds=20)
    table = browser.find_element(By.ID, "preview-table")
    assert "1962-02-11" in table.text and "測**號" in table.text and "測試1號" not in table.text
    assert "錯誤" in table.text and "新增" in table.text
    _no_sideways_scroll(browser)
    screenshot(browser, "import_3_preview")

    # 4. check: every row read, nothing written
    browser.find_element(By.NAME, "check").click()
    wait_until(lambda: "/change/" in browser.current_url, seconds=30)
    wait_until(lambda: 'id="run-counts"' in browser.page_source, seconds=30)
    assert "試算" in browser.find_element(By.ID, "run-summary").text
    assert browser.find_element(By.ID, "run-errors").text.count("\n") >= 1
    assert not Patient.objects.exists()
    screenshot(browser, "import_4_check")

    # 5. import the good rows, the bad one set aside
    form = browser.find_element(By.ID, "import-after-check")
    form.find_element(By.NAME, "keep_good").click()
    form.find_element(By.NAME, "import").click()
    wait_until(lambda: "upload=" not in browser.current_url, seconds=30)
    wait_until(lambda: 'id="run-counts"' in browser.page_source, seconds=30)
    counts = browser.find_element(By.ID, "run-counts").text
    assert counts.splitlines()[-1].split() == ["3", "2", "0", "0", "1"]
    assert browser.find_element(By.ID, "rejects-link").is_displayed()
    _no_sideways_scroll(browser)
    screenshot(browser, "import_5_done")

    run = ImportRun.objects.get(dry_run=False)
    assert run.status == ImportRun.Status.DONE and run.mapping.name == "診所 HIS 病人"
    assert set(Patient.objects.values_list("chart_no", flat=True)) == {"C000001", "C000002"}
    assert AuditEntry.objects.filter(action=AuditEntry.Action.IMPORT).exists()
    assert AuditEntry.objects.filter(
        action=AuditEntry.Action.VIEW, path__endswith="/preview/"
    ).exists()
