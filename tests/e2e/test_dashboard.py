"""End to end: the clinic manager opens the campaign dashboard in Chromium, changes the date
range, sees the charts drawn with figures, loads the week ahead, downloads a table as CSV, and
the page fits 1,366 and 1,024 px without sideways scrolling."""

import datetime as dt
import uuid

from django.utils import timezone

from campaigns.models import Rule, RuleKind, Skip, SkipReason
from consent.models import Purpose
from patients.models import Appointment
from reminders.models import OutboxMessage, Status
from tests.factories import AppointmentFactory, PatientFactory

from .conftest import E2E, log_in, screenshot, staff, wait_until

pytestmark = E2E


def _clinic_with_a_past():
    """A return-visit rule that reminded 12 appointments over the last three weeks (8 came),
    skipped 3, and messages in each status."""
    rule = Rule.objects.create(
        name="E2E 回診提醒",
        kind=RuleKind.APPOINTMENT,
        purpose=Purpose.CARE,
        offsets=[-1],
        channel_order=["sms", "line"],
    )
    now = timezone.now()
    statuses = [Status.DELIVERED, Status.DELIVERED, Status.SENT, Status.FAILED]
    for n in range(12):
        due = now - dt.timedelta(days=2 + n)
        appointment = AppointmentFactory(
            patient=PatientFactory(),
            starts_at=due + dt.timedelta(days=1),
            status=Appointment.Status.ATTENDED if n % 3 else Appointment.Status.NO_SHOW,
        )
        status = statuses[n % 4]
        OutboxMessage.objects.create(
            uuid=uuid.uuid4(),
            rule=rule,
            patient=appointment.patient,
            appointment=appointment,
            occurrence_key=f"appointment:{appointment.pk}:e2e",
            purpose=Purpose.CARE,
            channel="sms" if n % 2 else "line",
            status=status,
            due_at=due,
            next_attempt_at=due,
            expires_at=due + dt.timedelta(days=1),
            sent_at=due if status != Status.FAILED else None,
            body="測試",
        )
    for n in range(3):
        Skip.objects.create(
            rule=rule,
            patient=PatientFactory(),
            occurrence_key=f"skip:{n}",
            reason=SkipReason.NO_CONSENT,
            at=now - dt.timedelta(days=3 + n),
        )
    return rule


def _drawn_values(browser) -> list[float]:
    """data-value of every bar and point whose box on the screen is not empty."""
    return browser.execute_script(
        """
        return Array.from(document.querySelectorAll('svg.chart [data-value]'))
          .filter((el) => {
            const box = el.getBoundingClientRect();
            return box.width > 0 && box.height > 0;
          })
          .map((el) => parseFloat(el.dataset.value));
        """
    )


def _week_ahead_loaded(browser):
    """Wait for the week-ahead panel (the planner's dry run, fetched after the page): leaving
    the page earlier would leave its request reading while the next page's starts."""
    from selenium.webdriver.common.by import By

    def loaded():
        return browser.find_element(By.ID, "week-ahead-panel").get_attribute("data-loaded")

    wait_until(loaded, seconds=60)
    assert loaded() == "1"


def _no_sideways_scroll(browser, width):
    browser.set_window_size(width, 900)
    wait_until(lambda: browser.execute_script("return window.innerWidth") <= width)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{overflow} px of sideways scrolling at {width} px"


def test_manager_reads_the_dashboard_changes_the_range_and_downloads_a_csv(browser, live_server):
    from selenium.webdriver.common.by import By

    rule = _clinic_with_a_past()
    staff("manager", "Clinic manager")
    log_in(browser, live_server, "manager")

    # The admin links to the dashboard for the manager.
    browser.get(f"{live_server.url}/admin/")
    browser.find_element(By.ID, "dashboard-link").click()
    wait_until(lambda: "/dashboard/" in browser.current_url, seconds=20)
    assert "關懷成效儀表板" in browser.find_element(By.TAG_NAME, "h1").text
    values = _drawn_values(browser)
    assert any(v > 0 for v in values), values
    assert rule.name in browser.find_element(By.ID, "table-funnel").text
    _week_ahead_loaded(browser)

    # A custom range: the last 7 days only (the rule's older messages drop out).
    today = timezone.localdate()
    start = today - dt.timedelta(days=6)
    browser.find_element(By.CSS_SELECTOR, "input[name=range][value=custom]").click()
    browser.execute_script(
        "document.querySelector('input[name=start]').value = arguments[0];"
        "document.querySelector('input[name=end]').value = arguments[1];",
        start.isoformat(),
        today.isoformat(),
    )
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait_until(lambda: "range=custom" in browser.current_url, seconds=20)
    period = browser.find_element(By.CSS_SELECTOR, "h1 .period").text
    assert start.isoformat() in period and today.isoformat() in period
    funnel_row = next(
        row
        for row in browser.find_elements(By.CSS_SELECTOR, "#table-funnel tbody tr")
        if row.text.startswith(rule.name)
    )
    cells = [cell.text for cell in funnel_row.find_elements(By.TAG_NAME, "td")]
    assert cells[2] == "5"  # queued: the messages due 2–6 days ago
    assert any(v > 0 for v in _drawn_values(browser))

    # The week ahead arrives after the page, with the rule's row.
    _week_ahead_loaded(browser)
    assert browser.find_element(By.ID, "table-week-ahead")

    # The funnel as CSV, fetched by its link with the manager's session.
    href = browser.find_element(By.CSS_SELECTOR, "a.export-csv[data-table=funnel]").get_attribute(
        "href"
    )
    assert "range=custom" in href
    csv_text = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {credentials: 'same-origin'})
          .then((r) => r.arrayBuffer())
          .then((buf) => done(Array.from(new Uint8Array(buf)).slice(0, 3).join(',') + '|'
                              + new TextDecoder().decode(buf)));
        """,
        href,
    )
    bom, text = csv_text.split("|", 1)
    assert bom == "239,187,191"  # UTF-8 byte-order mark
    assert text.lstrip("\ufeff").startswith("規則,應發")
    assert rule.name in text

    _no_sideways_scroll(browser, 1366)
    screenshot(browser, "dashboard-1366")
    _no_sideways_scroll(browser, 1024)
    assert any(v > 0 for v in _drawn_values(browser))
    screenshot(browser, "dashboard-1024")
