"""The inbox in a real browser: a patient writes on LINE (the signed webhook), the front desk
sees it in the inbox, opens the conversation, inserts a saved answer, adds a line and sends it;
the worker's dispatch (run in-test) hands it to the fake LINE through the real SDK."""

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from patients.models import ClinicProfile
from reminders.channels.base import _load
from reminders.inbox import next_send_at
from reminders.models import InboundMessage, OutboxMessage, Snippet, Status
from tests.factories import PatientFactory
from tests.helpers import dispatch
from tests.reminders.contract import require_specs
from tests.reminders.fake_providers import FakeLine
from tests.reminders.inbound import line_post, line_text, provider_settings, sms_from

from .conftest import E2E, log_in, screenshot, staff, wait_until

pytestmark = E2E
LINE_ID = "U" + "4" * 32


@pytest.fixture
def fake_line(settings):
    require_specs()
    fake = FakeLine().start()
    provider_settings(settings)
    settings.LINE_CHANNEL_ACCESS_TOKEN = fake.access_token
    settings.LINE_API_BASE_URL = fake.url
    settings.REMINDER_CHANNELS = {
        **settings.REMINDER_CHANNELS,
        "line": "reminders.channels.line.LineChannel",
    }
    _load.cache_clear()
    yield fake
    fake.stop()
    _load.cache_clear()
    assert fake.violations == [], "a request the real LINE would refuse"


def test_staff_answers_a_patient_from_the_inbox(browser, live_server, fake_line):
    # given: a patient with a linked LINE (no consent for messages) writes to the clinic
    profile = ClinicProfile.load()
    profile.name = "安心診所"
    profile.save()
    patient = PatientFactory(name="林美玲", line_user_id=LINE_ID)
    Snippet.objects.create(title="請拍照", text="請拍一張傷口的照片傳給我們。")
    assert line_post(Client(), line_text(LINE_ID, "傷口有點紅，要回診嗎？")).status_code == 200
    assert InboundMessage.objects.get().patient == patient
    staff("desk", "Front desk")
    log_in(browser, live_server, "desk")
    browser.set_window_size(1366, 900)

    # when: they open the inbox from the menu and the patient's conversation
    browser.get(f"{live_server.url}/desk/")
    nav = browser.find_element(By.ID, "nav-inbox")
    assert nav.find_element(By.CSS_SELECTOR, ".nav-count").text == "1"
    nav.click()
    browser.find_element(By.LINK_TEXT, f"{patient.chart_no} 林美玲").click()
    assert "傷口有點紅" in browser.find_element(By.ID, "conversation").text
    # a saved answer goes into the box, then a line of their own
    Select(browser.find_element(By.ID, "snippet")).select_by_visible_text("請拍照")
    browser.find_element(By.ID, "snippet-insert").click()
    box = browser.find_element(By.ID, "reply-body")
    wait_until(lambda: "請拍一張傷口的照片" in box.get_attribute("value"))
    assert browser.current_url.endswith(f"/desk/inbox/patients/{patient.pk}/")  # no reload
    box.send_keys("\n安心診所 護理師")
    assert Select(browser.find_element(By.ID, "id_channel")).first_selected_option.text == "LINE"
    width, right = browser.execute_script(
        "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]"
    )
    assert right <= width, "the page scrolls sideways"
    screenshot(browser, "inbox_conversation_1366")
    browser.find_element(By.ID, "reply-send").click()

    # then: the page says it is queued, and the conversation shows it
    notice = browser.find_element(By.CSS_SELECTOR, ".desk-messages").text
    assert "已排入" in notice
    message = OutboxMessage.objects.get(patient=patient)
    assert message.status == Status.QUEUED
    screenshot(browser, "inbox_answer_queued")

    # and the worker hands it to LINE (at once, or when the send window opens)
    opens = next_send_at(now=timezone.now(), profile=profile)
    dispatch(max(opens, timezone.now()) + dt.timedelta(seconds=1))
    message.refresh_from_db()
    assert message.status == Status.SENT
    (pushed,) = fake_line.delivered
    assert pushed["to"] == LINE_ID
    assert pushed["messages"][0]["text"] == "請拍一張傷口的照片傳給我們。\n安心診所 護理師"


def test_staff_link_an_unknown_sender_to_a_patient(browser, live_server, settings):
    # given: someone whose number no patient has writes by SMS
    provider_settings(settings)
    patient = PatientFactory(chart_no="A000777", name="王小明", phone="+886912000111")
    assert (
        sms_from(Client(), "+886987654321", "我是王小明的女兒，想問爸爸的報告").status_code == 200
    )
    staff("desk", "Front desk")
    log_in(browser, live_server, "desk")

    # when: the desk finds it under unknown senders, searches the patient and links it
    browser.get(f"{live_server.url}/desk/inbox/")
    unknown = browser.find_element(By.ID, "inbox-unknown-senders")
    assert "+886987654321" in unknown.text
    unknown.find_element(By.LINK_TEXT, "連結到病人").click()
    browser.find_element(By.ID, "q").send_keys("A000777")
    browser.find_element(By.CSS_SELECTOR, "form.inline-form button[type=submit]").click()
    row = browser.find_element(By.ID, "link-candidates")
    assert "王小明" in row.text
    for width in (1366, 1024):
        browser.set_window_size(width, 800)
        wait_until(lambda w=width: browser.execute_script("return window.innerWidth") <= w)
        width_now, right = browser.execute_script(
            "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]"
        )
        assert right <= width_now, f"sideways scrolling at {width} px"
    screenshot(browser, "inbox_link_sender")
    row.find_element(By.NAME, "confirmed").click()
    row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    # then: the message is in the patient's conversation
    wait_until(lambda: browser.current_url.endswith(f"/desk/inbox/patients/{patient.pk}/"))
    assert "想問爸爸的報告" in browser.find_element(By.ID, "conversation").text
    assert InboundMessage.objects.get().patient == patient
