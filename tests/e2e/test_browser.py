"""End to end in a real browser: Debian's Chromium, driven by Selenium, against the live app."""

from patients.models import AuditEntry
from tests.factories import PatientFactory

from .conftest import E2E, log_in, staff, wait_until

pytestmark = E2E


def test_front_desk_finds_a_patient_by_phone_and_the_view_is_audited(browser, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    desk = staff("desk", "Front desk")
    patient = PatientFactory(name="林美玲", phone="+886912345678")
    PatientFactory(name="陳志明", phone="+886987654321")

    log_in(browser, live_server, "desk")
    browser.get(f"{live_server.url}/admin/patients/patient/")
    search = browser.find_element(By.ID, "searchbar")
    search.send_keys("0912-345-678", Keys.ENTER)
    wait_until(lambda: "q=" in browser.current_url)  # the old, unfiltered list is gone
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 1 and "林美玲" in rows[0].text
    rows[0].find_element(By.CSS_SELECTOR, "th a").click()

    assert browser.find_element(By.NAME, "name").get_attribute("value") == "林美玲"
    # The planned-messages panel loads after the page: let it finish before the test ends, or
    # the live server is still reading when the database is emptied.
    wait_until(
        lambda: browser.find_element(By.ID, "planned-messages").get_attribute("data-url") is None,
        seconds=30,
    )
    assert "儲存" in browser.page_source  # the admin speaks Traditional Chinese
    page = f"/admin/patients/patient/{patient.pk}/change/"
    views = AuditEntry.objects.filter(actor=desk, action="view", patients=patient)
    assert views.filter(path=page).count() == 1  # the page, once
    assert views.exclude(path=page).count() == 1  # and its planned-messages panel, once
    assert AuditEntry.objects.filter(actor=desk, action="search", patients=patient).exists()


def test_manager_sees_a_live_preview_and_an_unknown_field_error_while_typing(browser, live_server):
    from selenium.webdriver.common.by import By

    from campaigns.models import Rule

    staff("manager", "Clinic manager")
    rule = Rule.objects.get(name__startswith="生日祝福")

    log_in(browser, live_server, "manager")
    browser.get(f"{live_server.url}/admin/campaigns/rule/{rule.pk}/change/")
    body = browser.find_element(By.CSS_SELECTOR, "textarea[name$='-body']")
    body.clear()
    body.send_keys("{{ patient.display_name }}生日快樂")
    preview = browser.find_element(By.CSS_SELECTOR, ".template-preview")
    wait_until(lambda: "林小姐生日快樂" in preview.text or "Lin Mei-ling生日快樂" in preview.text)

    body.send_keys("{{ patient.favourite_colour }}")
    wait_until(lambda: "patient.favourite_colour" in preview.text)
