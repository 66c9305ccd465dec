"""The desk's group message pages: the preview shows the counts and the exact text and queues
nothing, the second click sends, a changed group is shown again, a resubmit adds nothing, and
who may send what (the front desk a doctor's patients of a day, the manager any group)."""

import datetime as dt
import re

import pytest
import time_machine
from django.urls import reverse

from consent.models import Channel, Purpose
from patients.models import AuditEntry, Patient
from reminders.models import GroupSend, OutboxMessage
from tests.factories import AppointmentFactory, PatientFactory, grant, withdraw
from tests.helpers import taipei

pytestmark = pytest.mark.django_db
NOW = taipei(2026, 3, 10, 10, 0)
TOMORROW = dt.date(2026, 3, 11)
TEXT = "王醫師明天門診延後 30 分鐘，請晚 30 分鐘到診。"


@pytest.fixture(autouse=True)
def frozen(clinic):
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def group():
    """Tomorrow's patients of 王醫師: two by SMS, one without consent, one withdrawn."""
    patients = [PatientFactory() for _ in range(4)]
    grant(patients[0])
    grant(patients[1])
    withdraw(patients[3])
    for patient in patients:
        AppointmentFactory(patient=patient, starts_at=taipei(2026, 3, 11, 9, 0), doctor="王醫師")
    return patients


def day_form(**extra):
    return {
        "kind": "day",
        "day": TOMORROW.isoformat(),
        "doctor": "王醫師",
        "department": "",
        "body": TEXT,
        **extra,
    }


def token_of(page: str) -> str:
    return re.search(r'name="token" value="([^"]+)"', page).group(1)


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


@pytest.fixture
def manager(client, manager_user):
    client.force_login(manager_user)
    return client


def test_the_page_offers_the_front_desk_the_day_group_only(desk, group):
    page = desk.get(reverse("desk:groups")).content.decode()

    assert 'id="day-form"' in page and 'id="segment-form"' not in page
    assert "王醫師" in page  # tomorrow's doctors to pick from
    assert 'id="nav-groups"' in page


def test_the_manager_sees_both_kinds(manager, group):
    page = manager.get(reverse("desk:groups")).content.decode()

    assert 'id="day-form"' in page and 'id="segment-form"' in page


def test_the_preview_shows_counts_and_text_and_queues_nothing(desk, group):
    response = desk.post(reverse("desk:group_preview"), day_form())

    page = response.content.decode()
    assert response.status_code == 200
    assert re.search(r"簡訊.*?<td>2</td>", page, re.S)
    assert re.search(r"未在任何管道同意此用途.*?<td>1</td>", page, re.S)
    assert re.search(r"已撤回同意.*?<td>1</td>", page, re.S)
    assert TEXT in page and 'name="token"' in page
    assert not OutboxMessage.objects.exists() and not GroupSend.objects.exists()


def test_the_second_click_sends_and_shows_the_result(desk, group, front_desk_user):
    page = desk.post(reverse("desk:group_preview"), day_form()).content.decode()

    response = desk.post(reverse("desk:group_send"), {"token": token_of(page)})

    sent = GroupSend.objects.get()
    assert response.status_code == 302
    assert response.url == reverse("desk:group_sent", args=[sent.pk])
    assert OutboxMessage.objects.count() == 2
    result = desk.get(response.url).content.decode()
    assert "2 則訊息" in result and TEXT in result
    assert AuditEntry.objects.filter(action=AuditEntry.Action.SEND, actor=front_desk_user).exists()


def test_a_resubmitted_confirmation_adds_nothing(desk, group):
    token = token_of(desk.post(reverse("desk:group_preview"), day_form()).content.decode())

    first = desk.post(reverse("desk:group_send"), {"token": token})
    second = desk.post(reverse("desk:group_send"), {"token": token})

    assert first.url == second.url
    assert OutboxMessage.objects.count() == 2 and GroupSend.objects.count() == 1


def test_a_group_changed_since_the_preview_is_shown_again(desk, group):
    token = token_of(desk.post(reverse("desk:group_preview"), day_form()).content.decode())
    withdraw(group[0])  # the patient sent STOP meanwhile

    response = desk.post(reverse("desk:group_send"), {"token": token})

    page = response.content.decode()
    assert response.status_code == 409 and 'id="group-changed"' in page
    assert re.search(r"已撤回同意.*?<td>2</td>", page, re.S)
    assert not OutboxMessage.objects.exists()
    desk.post(reverse("desk:group_send"), {"token": token_of(page)})
    assert OutboxMessage.objects.count() == 1


def test_urgent_for_another_day_is_refused_in_words(desk, group):
    response = desk.post(reverse("desk:group_preview"), day_form(urgent="on"))

    assert response.status_code == 400
    assert "緊急" in response.content.decode()


def test_a_group_over_the_cap_is_refused_in_words(desk, group, settings):
    settings.GROUP_MESSAGE_MAX = 3

    response = desk.post(reverse("desk:group_preview"), day_form())

    page = response.content.decode()
    assert response.status_code == 400 and "上限" in page and "4" in page


def test_the_front_desk_may_not_send_to_a_segment(desk, group):
    response = desk.post(
        reverse("desk:group_preview"),
        {"kind": "segment", "purpose": Purpose.CARE, "body": TEXT, "sex": Patient.Sex.FEMALE},
    )

    assert response.status_code == 403


def test_the_manager_sends_to_a_segment(manager, group):
    p = PatientFactory(sex=Patient.Sex.MALE, birth_date=dt.date(1950, 1, 1))
    grant(p, purpose=Purpose.RELATIONSHIP, channel=Channel.SMS)
    form = {
        "kind": "segment",
        "purpose": Purpose.RELATIONSHIP,
        "body": "流感疫苗已到，歡迎預約。",
        "sex": Patient.Sex.MALE,
        "min_age": "70",
    }

    page = manager.post(reverse("desk:group_preview"), form).content.decode()
    manager.post(reverse("desk:group_send"), {"token": token_of(page)})

    (message,) = OutboxMessage.objects.all()
    assert message.patient == p and message.purpose == Purpose.RELATIONSHIP


def test_staff_without_the_permission_are_refused(client, group):
    from django.contrib.auth.models import User

    client.force_login(User.objects.create_user("nurse", password="x", is_staff=True))

    assert client.get(reverse("desk:groups")).status_code == 403
    assert client.post(reverse("desk:group_preview"), day_form()).status_code == 403


def test_a_tampered_token_is_refused(desk, group):
    token = token_of(desk.post(reverse("desk:group_preview"), day_form()).content.decode())

    response = desk.post(reverse("desk:group_send"), {"token": token[:-3] + "abc"})

    assert response.status_code == 400 and not OutboxMessage.objects.exists()
