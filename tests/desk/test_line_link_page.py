"""The LINE link page (/desk/patients/<id>/line/): a one-time code with its QR code and oaMessage
link, printed on a slip or sent by SMS through the outbox and its consent gate; the patient's
LINE status on that page, on the patient page and on the day view. Every showing is audited."""

import datetime as dt
import re
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from campaigns.models import RuleKind
from consent.models import Channel, Purpose
from patients.models import AuditEntry, ClinicProfile
from reminders.linking import code_hash, line_link_code_create, oa_message_url
from reminders.models import LineAccountState, LineLinkCode, OutboxMessage, Status
from reminders.services import messages_dispatch
from tests.factories import AppointmentFactory, PatientFactory, grant, withdraw

pytestmark = pytest.mark.django_db
# A Tuesday morning in the clinic's zone: inside the send window, on an open day.
NOW = dt.datetime(2026, 3, 10, 10, 0, tzinfo=ZoneInfo("Asia/Taipei"))


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def profile(clinic):
    clinic.line_basic_id = "@123abcde"
    clinic.save()
    return clinic


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


@pytest.fixture
def patient(profile):
    return PatientFactory(phone="0912-345-678")


def page(patient):
    return reverse("desk:line_link", args=[patient.pk])


def make(desk, patient, purposes=(Purpose.CARE,)):
    return desk.post(page(patient), {"action": "make", "purposes": list(purposes)})


def shown_code(response) -> str:
    found = re.search(r'id="line-link-code">([A-Z0-9]{6})<', response.content.decode())
    assert found, "no code on the page"
    return found.group(1)


def test_making_a_code_shows_the_qr_the_code_and_the_oamessage_link(desk, patient):
    response = make(desk, patient, [Purpose.CARE, Purpose.RELATIONSHIP])

    assert response.status_code == 200
    html = response.content.decode()
    code = shown_code(response)
    # the QR code is drawn here, as inline SVG (no image from elsewhere, no script library)
    assert re.search(r"<svg[^>]*class=\"segno\"", html)
    assert "<script" not in html
    # the link opens LINE with the code ready to send, every part percent-encoded
    url = f"https://line.me/R/oaMessage/%40123abcde/?{quote('綁定代碼 ' + code, safe='')}"
    assert url == oa_message_url("@123abcde", f"綁定代碼 {code}")
    assert f'href="{url}"' in html
    assert "%E7%B6%81%E5%AE%9A%E4%BB%A3%E7%A2%BC%20" in url  # 綁定代碼 and a space
    # words for people, in zh-Hant, and a slip to print
    for words in ("綁定代碼", "安心診所", "用手機相機或 LINE 掃描 QR code", "列印綁定單"):
        assert words in html
    assert "@media print" in open("desk/static/desk/line_link.css", encoding="utf-8").read()
    # the code row: bound to the patient, the purposes, only a hash of the code
    row = LineLinkCode.objects.get(patient=patient)
    assert row.purposes == [Purpose.CARE, Purpose.RELATIONSHIP]
    assert row.code_hash == code_hash(code) != code


def test_the_page_is_audited_as_a_view_of_the_patient_and_the_code_is_not_logged(desk, patient):
    desk.get(page(patient))
    code = shown_code(make(desk, patient))

    entries = AuditEntry.objects.filter(action=AuditEntry.Action.VIEW, patients=patient)
    assert entries.count() == 2
    assert {e.path for e in entries} == {page(patient)}
    assert all(code not in e.detail and code not in e.path for e in entries)


def test_without_a_basic_id_the_page_says_so_and_makes_no_qr(desk, clinic):
    patient = PatientFactory()
    assert not ClinicProfile.load().line_basic_id

    get = desk.get(page(patient))
    post = make(desk, patient)

    for response in (get, post):
        html = response.content.decode()
        assert "診所資料尚未設定 LINE 官方帳號 ID" in html
        assert "<svg" not in html and "line.me" not in html
        assert "產生綁定代碼" not in html
    assert not LineLinkCode.objects.exists()


def test_a_new_code_replaces_the_earlier_one(desk, patient):
    first = shown_code(make(desk, patient))
    second = shown_code(make(desk, patient))

    assert first != second
    assert LineLinkCode.objects.filter(patient=patient, revoked_at__isnull=True).count() == 1


def test_staff_who_may_only_look_cannot_make_codes(client, patient):
    viewer = User.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename="view_patient"))
    client.force_login(viewer)

    assert client.get(page(patient)).status_code == 200
    assert make(client, patient).status_code == 403
    assert not LineLinkCode.objects.exists()


# --- the link by SMS, through the outbox and the consent gate --------------------------------


def test_the_link_goes_by_sms_through_the_outbox_when_the_patient_agreed_to_care_texts(
    desk, patient, memory_channels
):
    grant(patient, Purpose.CARE, Channel.SMS)
    code = shown_code(make(desk, patient))

    response = desk.post(page(patient), {"action": "sms", "code": code})

    assert "連結已排入簡訊" in response.content.decode()
    assert shown_code(response) == code  # the slip stays on the page to print
    message = OutboxMessage.objects.get(patient=patient)
    assert (message.channel, message.purpose, message.status) == ("sms", "care", Status.QUEUED)
    assert message.rule.kind == RuleKind.LINE_LINK
    assert oa_message_url("@123abcde", f"綁定代碼 {code}") in message.body
    assert message.expires_at == LineLinkCode.objects.get(patient=patient).expires_at

    # the worker sends it like any message, through the gate
    messages_dispatch(time_budget=5)
    message.refresh_from_db()
    assert message.status == Status.SENT
    assert [m.to for m in memory_channels] == [patient.phone]


@pytest.mark.parametrize("consent", ["none", "withdrawn", "relationship only"])
def test_without_sms_consent_for_care_the_page_says_so_and_sends_nothing(
    desk, patient, memory_channels, consent
):
    if consent == "withdrawn":
        grant(patient, Purpose.CARE, Channel.SMS)
        withdraw(patient, Purpose.CARE, Channel.SMS)
    elif consent == "relationship only":
        grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    code = shown_code(make(desk, patient))

    response = desk.post(page(patient), {"action": "sms", "code": code})

    assert "未以簡訊傳送" in response.content.decode()
    assert not OutboxMessage.objects.exists()


def test_the_same_code_is_sent_once_and_a_stale_code_not_at_all(desk, patient, memory_channels):
    grant(patient, Purpose.CARE, Channel.SMS)
    old = shown_code(make(desk, patient))
    new = shown_code(make(desk, patient))
    desk.post(page(patient), {"action": "sms", "code": new})

    again = desk.post(page(patient), {"action": "sms", "code": new})
    stale = desk.post(page(patient), {"action": "sms", "code": old})
    forged = desk.post(page(patient), {"action": "sms", "code": "<script>"})

    assert "已經用簡訊傳送過了" in again.content.decode()
    assert "已無法使用" in stale.content.decode()
    assert forged.status_code == 200 and "已無法使用" in forged.content.decode()
    assert OutboxMessage.objects.count() == 1


def test_the_gate_drops_the_link_sms_once_the_code_is_used(desk, patient, memory_channels):
    grant(patient, Purpose.CARE, Channel.SMS)
    code = shown_code(make(desk, patient))
    desk.post(page(patient), {"action": "sms", "code": code})
    LineLinkCode.objects.update(used_at=timezone.now())

    messages_dispatch(time_budget=5)

    assert OutboxMessage.objects.get().status == Status.DROPPED
    assert not memory_channels


# --- LINE status on the pages staff work on ---------------------------------------------------


def test_line_consent_without_an_account_shows_not_linked_yet_everywhere(desk, patient):
    grant(patient, Purpose.CARE, Channel.LINE)
    AppointmentFactory(patient=patient, starts_at=NOW + dt.timedelta(hours=2))

    admin_page = desk.get(reverse("admin:patients_patient_change", args=[patient.pk]))
    link_page = desk.get(page(patient))
    day = desk.get(reverse("desk:day"))

    for response in (admin_page, link_page, day):
        assert "尚未綁定 LINE" in response.content.decode()
    assert page(patient) in admin_page.content.decode()


def test_a_blocked_account_shows_blocked(desk, patient):
    patient.line_user_id = "U" + "8" * 32
    patient.save()
    LineAccountState.objects.create(patient=patient, blocked_at=timezone.now())

    admin_page = desk.get(reverse("admin:patients_patient_change", args=[patient.pk]))

    assert "已封鎖" in admin_page.content.decode()
    assert "已封鎖" in desk.get(page(patient)).content.decode()


def test_staff_never_type_a_line_id_on_the_patient_form(desk, patient):
    patient.line_user_id = "U" + "9" * 32
    patient.save()

    html = desk.get(reverse("admin:patients_patient_change", args=[patient.pk])).content.decode()

    assert 'name="line_user_id"' not in html
    assert "U" + "9" * 32 not in html
    assert "已綁定" in html


def test_codes_can_be_made_by_the_service_for_a_patient_without_a_slip(patient):
    row, code = line_link_code_create(
        patient=patient, purposes=[Purpose.CARE], created_by=None, now=timezone.now()
    )
    assert len(code) == 6 and row.code_hash != code
    with pytest.raises(ValueError):
        line_link_code_create(patient=patient, purposes=[], created_by=None, now=timezone.now())
    with pytest.raises(ValueError):
        line_link_code_create(
            patient=patient, purposes=["everything"], created_by=None, now=timezone.now()
        )
