"""End to end: the front desk's day in Chromium. Logs in, lands on the day view, confirms one
patient by phone, marks another no-show, reveals a number in the call list, and the page fits
1,366 and 1,024 px and prints without its navigation."""

import datetime as dt

from django.utils import timezone

from campaigns.models import Rule, Skip, SkipReason
from consent.models import Channel, Purpose
from patients.models import Appointment, AuditEntry
from reminders.models import OutboxMessage
from tests.factories import AppointmentFactory, PatientFactory, grant

from .conftest import E2E, log_in, screenshot, staff, wait_until

pytestmark = E2E


def at(hour: int, minute: int = 0) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(timezone.localdate(), dt.time(hour, minute)))


def reachable(**kwargs):
    patient = PatientFactory(**kwargs)
    grant(patient, Purpose.CARE, Channel.SMS)
    return patient


def status_of(browser, appointment) -> str:
    """The status the row shows, or "" while the page is being replaced (after a post).

    Read in one script inside the page: finding the row and then its cell in two WebDriver calls
    races the page swapping the row in between (a stale or "node does not belong" error).
    """
    return browser.execute_script(
        "const cell = document.querySelector(arguments[0]);return cell ? cell.innerText : '';",
        f"#appointment-{appointment.pk} .day-status",
    )


def no_horizontal_scrollbar(browser) -> bool:
    return browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )


def test_front_desk_works_through_the_day_from_the_day_view(browser, live_server):
    from selenium.webdriver.common.by import By

    desk = staff("desk", "Front desk")
    to_confirm = AppointmentFactory(
        patient=reachable(name="林美玲", chart_no="A000001"),
        starts_at=at(9),
        doctor="王醫師",
        department="家醫科",
    )
    to_miss = AppointmentFactory(
        patient=reachable(name="陳志明", chart_no="A000002"),
        starts_at=at(9, 30),
        doctor="陳醫師",
        department="內科",
    )
    unreachable = AppointmentFactory(
        patient=PatientFactory(name="黃秀英", chart_no="A000003", phone="+886912345678"),
        starts_at=at(10),
        doctor="王醫師",
        department="家醫科",
        location="一樓 1 診，靠近電梯的候診區，請於報到櫃台取號",
    )
    rule = Rule.objects.get(name__startswith="回診確認")
    outcomes = ["delivered", "sent", "failed", "unknown", "queued", "skip"]
    for n in range(12):
        filler = AppointmentFactory(patient=reachable(), starts_at=at(14, n * 5), doctor="李醫師")
        key = f"appointment:{filler.pk}:x"
        outcome = outcomes[n % len(outcomes)]
        if outcome == "skip":
            Skip.objects.create(
                rule=rule,
                patient=filler.patient,
                occurrence_key=key,
                reason=SkipReason.WITHDRAWN,
                at=timezone.now(),
            )
            continue
        OutboxMessage.objects.create(
            rule=rule,
            patient=filler.patient,
            appointment=filler,
            anchor_at=filler.starts_at,
            occurrence_key=key,
            purpose="care",
            channel="sms",
            status=outcome,
            error="空號或號碼錯誤（Twilio 21211）" if outcome == "failed" else "",
            sent_at=timezone.now() if outcome != "queued" else None,
            due_at=timezone.now(),
            next_attempt_at=timezone.now(),
            expires_at=filler.starts_at,
            body="明天回診",
        )

    log_in(browser, live_server, "desk")

    # Lands on the day view, the unreachable patient first.
    wait_until(lambda: browser.current_url.rstrip("/").endswith("/desk"))
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.day-row")
    assert rows[0].get_attribute("id") == f"appointment-{unreachable.pk}"
    assert "無法聯絡" in rows[0].text
    screenshot(browser, "desk_day_landing")

    # Confirms one patient by phone.
    row = browser.find_element(By.ID, f"appointment-{to_confirm.pk}")
    row.find_element(By.CSS_SELECTOR, "button.action-confirm_phone").click()
    wait_until(lambda: status_of(browser, to_confirm).startswith("已確認"))
    to_confirm.refresh_from_db()
    assert to_confirm.status == Appointment.Status.CONFIRMED
    assert to_confirm.confirmed_via == Appointment.ConfirmedVia.PHONE
    assert "電話" in status_of(browser, to_confirm)  # how it was confirmed

    # Marks another no-show.
    row = browser.find_element(By.ID, f"appointment-{to_miss.pk}")
    row.find_element(By.CSS_SELECTOR, "button.action-no_show").click()
    wait_until(lambda: status_of(browser, to_miss).startswith("未到診"))
    to_miss.refresh_from_db()
    assert to_miss.status == Appointment.Status.NO_SHOW
    assert "復原" in browser.find_element(By.CSS_SELECTOR, ".day-undo").text
    assert AuditEntry.objects.filter(actor=desk, action="view", patients=to_miss.patient).exists()
    screenshot(browser, "desk_day_after_actions")

    # Fits the screen at 1,366 and 1,024 px, and prints without the navigation.
    for width in (1366, 1024):
        browser.set_window_size(width, 768)
        browser.refresh()
        browser.find_element(By.CSS_SELECTOR, "table.day-table")
        assert no_horizontal_scrollbar(browser), width
        screenshot(browser, f"desk_day_{width}")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    header = browser.find_element(By.CSS_SELECTOR, ".desk-header")
    assert not header.is_displayed()
    assert not browser.find_element(By.CSS_SELECTOR, ".day-filters").is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, "table.day-table").is_displayed()
    screenshot(browser, "desk_day_print")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})

    # The call list: the number only after a click, and that click is audited.
    browser.find_element(By.PARTIAL_LINK_TEXT, "電話聯絡名單").click()
    row = browser.find_element(By.ID, f"call-{unreachable.pk}")
    assert "0912" not in browser.page_source
    assert not AuditEntry.objects.filter(
        actor=desk, action="view", patients=unreachable.patient
    ).exists()
    row.find_element(By.CSS_SELECTOR, "button.button-reveal").click()
    wait_until(lambda: "0912 345 678" in row.find_element(By.CSS_SELECTOR, ".phone-number").text)
    assert AuditEntry.objects.filter(
        actor=desk, action="view", patients=unreachable.patient, detail__contains="phone"
    ).exists()
    assert no_horizontal_scrollbar(browser)
    screenshot(browser, "desk_day_call_list")
