"""A group message in a real browser: the front desk picks tomorrow's patients of a doctor,
sees how many get it on which channel and who is left out, confirms with a second click and
sees the result; the worker's dispatch (run in-test, inside tomorrow's send window) sends it."""

import datetime as dt

from django.utils import timezone
from selenium.webdriver.common.by import By

from consent.models import Channel
from patients.models import ClinicProfile
from reminders.models import GroupSend, OutboxMessage
from tests.factories import AppointmentFactory, PatientFactory, grant, withdraw
from tests.helpers import TPE, dispatch

from .conftest import E2E, log_in, screenshot, staff

pytestmark = E2E
TEXT = "王醫師明天門診延後 30 分鐘開始，請晚 30 分鐘到診，謝謝。"


def fits_the_width(browser) -> bool:
    width, right = browser.execute_script(
        "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]"
    )
    return right <= width


def test_the_desk_tells_tomorrows_patients_the_doctor_is_late(
    browser, live_server, memory_channels
):
    # given: tomorrow 王醫師 sees three patients (two agreed to SMS, one withdrew), 李醫師 one
    ClinicProfile.load()
    tomorrow = timezone.localdate() + dt.timedelta(days=1)
    at_ten = dt.datetime.combine(tomorrow, dt.time(10, 0), tzinfo=TPE)
    patients = [PatientFactory() for _ in range(3)]
    grant(patients[0], channel=Channel.SMS)
    grant(patients[1], channel=Channel.SMS)
    withdraw(patients[2], channel=Channel.SMS)
    for patient in patients:
        AppointmentFactory(patient=patient, starts_at=at_ten, doctor="王醫師")
    other = PatientFactory()
    grant(other)
    AppointmentFactory(patient=other, starts_at=at_ten, doctor="李醫師")
    staff("desk", "Front desk")
    log_in(browser, live_server, "desk")
    browser.set_window_size(1366, 900)

    # when: they open the group message page from the menu, pick the doctor and write
    browser.get(f"{live_server.url}/desk/")
    browser.find_element(By.ID, "nav-groups").click()
    assert browser.find_element(By.ID, "id_day").get_attribute("value") == tomorrow.isoformat()
    browser.find_element(By.ID, "id_doctor").send_keys("王醫師")
    browser.find_element(By.ID, "id_body").send_keys(TEXT)
    assert fits_the_width(browser), "the page scrolls sideways"
    screenshot(browser, "group_message_form_1366")
    browser.find_element(By.ID, "day-preview").click()

    # then: the confirm step shows the counts and the exact text, and nothing is queued yet
    counts = browser.find_element(By.ID, "group-counts").text
    assert "以簡訊收到 2" in counts and "排除：已撤回同意 1" in counts
    assert "3 位病人中，2 位會收到" in browser.find_element(By.ID, "group-total").text
    assert browser.find_element(By.ID, "group-text").text == TEXT
    assert not OutboxMessage.objects.exists()
    assert fits_the_width(browser), "the page scrolls sideways"
    screenshot(browser, "group_message_confirm_1366")

    # when: they confirm
    browser.find_element(By.ID, "group-confirm").click()

    # then: the result says two were queued; the worker sends them in tomorrow's window
    result = browser.find_element(By.ID, "group-result").text
    assert "排入 2 則訊息" in result
    assert fits_the_width(browser)
    screenshot(browser, "group_message_sent_1366")
    sent = GroupSend.objects.get()
    assert sent.queued == 2 and sent.created_by.username == "desk"
    dispatch(dt.datetime.combine(tomorrow, dt.time(9, 5), tzinfo=TPE))
    assert sorted(m.to for m in memory_channels) == sorted(p.phone for p in patients[:2])
    assert {m.body for m in memory_channels} == {TEXT}
