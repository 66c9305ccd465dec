"""The patient's own settings page in a real browser, on a phone-sized window: open the link
from a message, switch off one kind of message, save, and see the confirmation."""

from django.utils import timezone
from selenium.webdriver.common.by import By

from consent.models import Channel, ConsentEntry, Purpose, Source
from consent.patient_link import patient_link_token
from consent.selectors import may_contact
from tests.factories import PatientFactory, grant

from .conftest import E2E, screenshot

pytestmark = E2E


def test_a_patient_switches_off_greetings_from_the_link(browser, live_server):
    # given: a patient who gets care and greeting messages by SMS, and their link
    patient = PatientFactory(name="王小明")
    grant(patient, Purpose.CARE, Channel.SMS)
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    token = patient_link_token(patient_id=patient.pk, issued_on=timezone.localdate())
    browser.set_window_size(390, 844)

    # when: they open it, switch off greetings by SMS and save
    browser.get(f"{live_server.url}/p/{token}/")
    assert "王○明" in browser.find_element(By.TAG_NAME, "h1").text
    switch = browser.find_element(By.CSS_SELECTOR, "input[name='relationship:sms']")
    assert switch.is_selected()
    switch.click()
    browser.find_element(By.ID, "save").click()

    # then: the page confirms it, the ledger has it, and greetings by SMS stop
    saved = browser.find_element(By.ID, "saved")
    assert "已儲存您的設定" in saved.text
    assert not browser.find_element(By.CSS_SELECTOR, "input[name='relationship:sms']").is_selected()
    width, right = browser.execute_script(
        "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]"
    )
    assert right <= width, "the page scrolls sideways"
    screenshot(browser, "patient_settings_390")
    entry = ConsentEntry.objects.get(source=Source.PATIENT_LINK)
    assert (entry.purpose, entry.channel, entry.action) == ("relationship", "sms", "withdraw")
    assert not may_contact(patient=patient, purpose=Purpose.RELATIONSHIP, channel=Channel.SMS)
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)
