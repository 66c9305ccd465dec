"""The LINE link page in a real browser: from the patient page the front desk makes a link code,
sees the QR code and the link, and prints a slip with nothing else on it."""

import re

from selenium.webdriver.common.by import By

from patients.models import ClinicProfile
from reminders.models import LineLinkCode
from tests.factories import PatientFactory

from .conftest import E2E, log_in, screenshot, staff, wait_until

pytestmark = E2E


def test_the_desk_makes_a_link_code_and_prints_the_slip(browser, live_server):
    # given: the clinic's LINE official account, a patient, a front-desk login
    profile = ClinicProfile.load()
    profile.name, profile.line_basic_id = "安心診所", "@123abcde"
    profile.save()
    patient = PatientFactory(name="林美玲")
    staff("desk", "Front desk")
    log_in(browser, live_server, "desk")
    browser.set_window_size(1366, 900)

    # when: from the patient page, they open the LINE box and make a code for care messages
    browser.get(f"{live_server.url}/admin/patients/patient/{patient.pk}/change/")
    panel = browser.find_element(By.ID, "line-link-panel")
    assert "未綁定 LINE 帳號" in panel.text
    panel.find_element(By.CSS_SELECTOR, "a.button").click()
    browser.find_element(By.CSS_SELECTOR, "form.line-make button[type=submit]").click()

    # then: the code, its QR code (drawn, not fetched) and the link are on the page
    code = browser.find_element(By.ID, "line-link-code").text
    assert re.fullmatch(r"[A-Z0-9]{6}", code)
    qr = browser.find_element(By.CSS_SELECTOR, ".slip-qr svg")
    assert qr.size["width"] >= 150 and qr.size["height"] >= 150
    link = browser.find_element(By.ID, "line-link-url")
    assert link.get_attribute("href").startswith("https://line.me/R/oaMessage/%40123abcde/?")
    assert code in link.get_attribute("href")
    assert LineLinkCode.objects.filter(patient=patient, used_at__isnull=True).count() == 1
    width, right = browser.execute_script(
        "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]"
    )
    assert right <= width, "the page scrolls sideways"
    screenshot(browser, "line_link_1366")

    # and printed, the slip is all there is: no menu, no buttons, no form
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    wait_until(
        lambda: not browser.find_element(By.CSS_SELECTOR, "header.desk-header").is_displayed()
    )
    assert browser.find_element(By.CSS_SELECTOR, ".line-slip").is_displayed()
    assert browser.find_element(By.ID, "line-link-code").is_displayed()
    assert not browser.find_element(By.CSS_SELECTOR, ".slip-actions").is_displayed()
    assert not browser.find_element(By.CSS_SELECTOR, "form.line-make").is_displayed()
    screenshot(browser, "line_link_print")
