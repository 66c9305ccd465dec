"""End to end: the front desk works through its task list in Chromium."""

import datetime as dt

from django.utils import timezone

from patients.models import AuditEntry
from reminders.models import StaffTask
from tests.factories import AppointmentFactory, PatientFactory, ProcedureFactory

from .conftest import E2E, PASSWORD, screenshot, staff, wait_until

pytestmark = E2E


def _log_in_to_tasks(browser, live_server, username):
    # Straight to the tasks: where the login lands by default is the day view's business.
    from selenium.webdriver.common.by import By

    browser.get(f"{live_server.url}/admin/login/?next=/desk/tasks/")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait_until(lambda: browser.current_url.split("?")[0].endswith("/desk/tasks/"), seconds=20)


def _no_sideways_scroll(browser, width):
    browser.set_window_size(width, 768)
    wait_until(lambda: browser.execute_script("return window.innerWidth") <= width)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{overflow} px of sideways scrolling at {width} px"


def test_front_desk_closes_one_task_and_sends_another_to_tomorrow(browser, live_server):
    from selenium.webdriver.common.by import By

    desk = staff("desk", "Front desk")
    staff("manager", "Clinic manager")
    today = timezone.localdate()
    postop = StaffTask.objects.create(
        kind=StaffTask.Kind.POSTOP_CALL,
        patient=PatientFactory(chart_no="A000101", name="林美玲"),
        procedure=ProcedureFactory(procedure_type="白內障超音波乳化術合併人工水晶體植入"),
        due_on=today - dt.timedelta(days=2),
        until=today - dt.timedelta(days=1),
        note="家屬表示傍晚比較方便接電話，請於下午四點後聯絡",
    )
    appointment = AppointmentFactory(
        patient=PatientFactory(chart_no="A000102", name="陳志明", phone="+886223456789"),
        starts_at=timezone.now() + dt.timedelta(days=1),
        department="心臟血管內科",
        doctor="歐陽醫師",
    )
    no_channel = StaffTask.objects.create(
        kind=StaffTask.Kind.CALL_NO_CHANNEL,
        patient=appointment.patient,
        appointment=appointment,
        due_on=today,
        until=today + dt.timedelta(days=1),
    )

    # the front desk logs in and opens the tasks
    _log_in_to_tasks(browser, live_server, "desk")
    assert "請致電：即將看診，但沒有可用的提醒管道" in browser.page_source
    overdue = browser.find_element(By.ID, f"task-{postop.pk}")
    assert "overdue" in overdue.get_attribute("class") and "逾期" in overdue.text
    for width in (1366, 1024):
        _no_sideways_scroll(browser, width)
    screenshot(browser, "desk_tasks_1024")
    browser.set_window_size(1366, 768)
    screenshot(browser, "desk_tasks_1366")

    # closes the post-op call as done, with a note
    row = browser.find_element(By.ID, f"task-{postop.pk}")
    row.find_element(By.NAME, "note").send_keys("術後恢復良好，無不適")
    row.find_element(By.CSS_SELECTOR, "button.act-done").click()
    wait_until(lambda: "任務已完成" in browser.page_source, seconds=20)
    postop.refresh_from_db()
    assert postop.done_at is not None and postop.note == "術後恢復良好，無不適"
    assert not browser.find_elements(By.ID, f"task-{postop.pk}")  # gone from the open list

    # marks the other "no answer, try again tomorrow"
    row = browser.find_element(By.ID, f"task-{no_channel.pk}")
    row.find_element(By.CSS_SELECTOR, "button.act-no-answer").click()
    # The button itself says 無人接聽: wait for the task, not for the words.
    wait_until(lambda: StaffTask.objects.get(pk=no_channel.pk).tries == 1, seconds=20)
    no_channel.refresh_from_db()
    assert no_channel.tries == 1 and no_channel.due_on > today and no_channel.done_at is None
    row = browser.find_element(By.ID, f"task-{no_channel.pk}")
    assert "已試 1 次未聯絡上" in row.text
    _no_sideways_scroll(browser, 1024)
    screenshot(browser, "desk_tasks_after")

    # each click was audited, naming the patient
    assert AuditEntry.objects.filter(
        actor=desk, patients=postop.patient_id, detail__endswith="done"
    )
    assert AuditEntry.objects.filter(
        actor=desk, patients=no_channel.patient_id, detail__endswith="no-answer"
    )
