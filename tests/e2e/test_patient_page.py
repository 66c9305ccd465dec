"""The patient page in a real browser: a patient of many years fits a 1,366 px screen and a
1,024 px tablet without sideways scrolling, and shows the messages planned for the coming days."""

import datetime as dt

from django.utils import timezone

from campaigns.models import Rule
from consent.models import Channel, Purpose
from reminders.models import OutboxMessage, Status
from tests.factories import (
    AppointmentFactory,
    PatientFactory,
    PrescriptionFactory,
    ProcedureFactory,
    VisitFactory,
    grant,
)

from .conftest import E2E, log_in, screenshot, staff, wait_until

pytestmark = E2E

# The widest thing on the page, wherever it is: the page itself or any element in it.
WIDEST = """
const width = document.documentElement.clientWidth;
let right = document.documentElement.scrollWidth;
for (const element of document.querySelectorAll('#content-main *')) {
  const box = element.getBoundingClientRect();
  if (box.width > 0 && box.height > 0) right = Math.max(right, Math.ceil(box.right));
}
return [width, right];
"""


def a_patient_of_many_years():
    today = timezone.localdate()
    birthday = today + dt.timedelta(days=7)
    if (birthday.month, birthday.day) == (2, 29):
        birthday += dt.timedelta(days=1)
    patient = PatientFactory(name="林美玲", birth_date=dt.date(1958, birthday.month, birthday.day))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    grant(patient, Purpose.CARE, Channel.SMS)
    long_note = "病患主訴頭暈、血壓控制不穩定，建議調整劑量並於兩週後回診追蹤，" * 4
    for weeks in range(12):
        visit = VisitFactory(
            patient=patient,
            visited_on=today - dt.timedelta(weeks=4 * weeks + 1),
            diagnosis_codes="I10, E11.9, E78.5, I25.10",
            note=long_note,
        )
        PrescriptionFactory(
            patient=patient,
            visit=visit,
            drug="Amlodipine besylate 5mg film-coated tablet",
            dose="1 tab after breakfast",
            frequency="BID",
            dose_times=["08:00", "20:00"],
            start_date=visit.visited_on,
            refills=2,
        )
    for days in (3, 17, 45):
        AppointmentFactory(
            patient=patient,
            starts_at=timezone.now() + dt.timedelta(days=days),
            location="二樓 3 診（心臟內科門診區，請先至櫃檯報到）",
            bring_notes="健保卡、慢性病連續處方箋、最近一次的檢驗報告與血壓紀錄表",
        )
    ProcedureFactory(patient=patient, procedure_type="白內障超音波乳化術合併人工水晶體植入")
    rule = Rule.objects.filter(name__startswith="回診通知").first()
    for index in range(25):
        due = timezone.now() - dt.timedelta(days=index + 1)
        OutboxMessage.objects.create(
            rule=rule,
            patient=patient,
            occurrence_key=f"appointment:{index}:2026-01-01T00:00:00+00:00",
            purpose=Purpose.CARE,
            channel=Channel.SMS,
            status=Status.FAILED,
            due_at=due,
            next_attempt_at=due,
            expires_at=due + dt.timedelta(days=1),
            body="回診通知",
            error="簡訊: gave up after 5 tries (HTTP 503 Service Unavailable from the provider); "
            "LINE: 病患未在任何管道同意此用途; 電子郵件: no contact point for the channel",
        )
    return patient


def test_front_desk_sees_a_long_patient_record_without_sideways_scrolling(browser, live_server):
    from selenium.webdriver.common.by import By

    staff("desk", "Front desk")
    patient = a_patient_of_many_years()
    log_in(browser, live_server, "desk")

    for width in (1366, 1024):
        browser.set_window_size(width, 768)
        browser.get(f"{live_server.url}/admin/patients/patient/{patient.pk}/change/")
        # The plan is worked out after the page is shown, and put in its place.
        wait_until(
            lambda: "生日祝福" in browser.find_element(By.ID, "planned-messages").text,
            seconds=15,
        )
        panel = browser.find_element(By.ID, "planned-messages")
        assert "預定的訊息" in panel.text and "簡訊" in panel.text

        viewport, widest = browser.execute_script(WIDEST)
        assert viewport >= width - 20  # the window is as wide as asked (less a scrollbar)
        assert widest <= viewport, f"{widest} px wide at a {viewport} px viewport"
        browser.execute_script("arguments[0].scrollIntoView()", panel)
        screenshot(browser, f"patient-page-{width}")
