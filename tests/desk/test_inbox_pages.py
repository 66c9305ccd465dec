"""The inbox pages (/desk/inbox/): conversations one per patient across SMS and LINE with our
messages interleaved, unread counts in the list and the menu, assign, mark handled, unknown
senders linked to a patient through an audited search; front desk only, every showing audited."""

import datetime as dt
import itertools

import pytest
import time_machine
from django.contrib.auth.models import User
from django.urls import reverse

from campaigns.models import Rule
from patients.models import AuditEntry
from reminders.inbox import sender_index
from reminders.models import InboundMessage, OutboxMessage, Status
from tests.factories import PatientFactory
from tests.helpers import taipei

pytestmark = pytest.mark.django_db
NOW = taipei(2026, 3, 10, 10, 0)
PHONE = "+886912345678"
_ids = itertools.count()


@pytest.fixture(autouse=True)
def frozen(clinic):
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


@pytest.fixture
def patient():
    return PatientFactory(name="林美玲", phone=PHONE, line_user_id="U" + "5" * 32)


def inbound(patient, minutes_ago, text, channel="sms", **fields):
    sender = PHONE if channel == "sms" else "U" + "5" * 32
    return InboundMessage.objects.create(
        channel=channel,
        event_id=f"ev{next(_ids)}",
        received_at=NOW - dt.timedelta(minutes=minutes_ago),
        patient=patient,
        sender=fields.pop("sender", sender),
        sender_bidx=fields.pop("sender_bidx", sender_index(channel, sender)),
        text=text,
        **fields,
    )


def sent(patient, minutes_ago, text, channel="sms"):
    at = NOW - dt.timedelta(minutes=minutes_ago)
    return OutboxMessage.objects.create(
        rule=Rule.objects.order_by("pk").first(),
        patient=patient,
        occurrence_key=f"o{next(_ids)}",
        purpose="care",
        channel=channel,
        due_at=at,
        next_attempt_at=at,
        expires_at=at + dt.timedelta(days=1),
        body=text,
        status=Status.SENT,
        sent_at=at,
    )


def page(patient):
    return reverse("desk:conversation", args=[patient.pk])


def test_a_conversation_interleaves_both_ways_across_sms_and_line_by_time(desk, patient):
    sent(patient, 300, "術後第1天，恢復還好嗎？")
    inbound(patient, 200, "有點痛", channel="line")
    sent(patient, 100, "請依衛教單服藥", channel="line")
    inbound(patient, 50, "好的謝謝")
    other = PatientFactory()
    inbound(other, 10, "別人的訊息")

    html = desk.get(page(patient)).content.decode()

    order = [html.index(t) for t in ("術後第1天", "有點痛", "請依衛教單服藥", "好的謝謝")]
    assert order == sorted(order)
    assert "別人的訊息" not in html


def test_unread_counts_show_in_the_list_and_the_menu_until_opened(desk, patient):
    inbound(patient, 30, "第一則")
    inbound(patient, 20, "第二則", channel="line")
    other = PatientFactory(name="陳大文")
    inbound(other, 10, "已讀的", read_at=NOW)

    listing = desk.get(reverse("desk:inbox")).content.decode()

    assert listing.index("陳大文") < listing.index("林美玲")  # newest first
    assert 'id="nav-inbox"' in listing and '<span class="nav-count">2</span>' in listing
    desk.get(page(patient))
    assert not InboundMessage.objects.filter(read_at__isnull=True).exists()
    again = desk.get(reverse("desk:day")).content.decode()
    assert 'id="nav-inbox">收件匣</a>' in again


def test_assign_and_mark_handled(desk, patient, front_desk_user):
    inbound(patient, 30, "問題")
    colleague = User.objects.create_user("colleague", is_staff=True)
    colleague.groups.set(front_desk_user.groups.all())

    desk.post(reverse("desk:conversation_assign", args=[patient.pk]), {"assignee": colleague.pk})

    assert InboundMessage.objects.get().assignee == colleague
    assert "colleague" in desk.get(reverse("desk:inbox")).content.decode()
    response = desk.post(reverse("desk:conversation_handled", args=[patient.pk]))
    assert response.status_code == 302
    row = InboundMessage.objects.get()
    assert row.handled_at == NOW and row.handled_by == front_desk_user
    assert "林美玲" not in desk.get(reverse("desk:inbox")).content.decode()
    assert "林美玲" in desk.get(reverse("desk:inbox"), {"all": "1"}).content.decode()
    # a stranger can't be given the conversation
    outsider = User.objects.create_user("outsider")
    refused = desk.post(
        reverse("desk:conversation_assign", args=[patient.pk]), {"assignee": outsider.pk}
    )
    assert refused.status_code == 404


def test_a_new_message_joins_its_conversations_holder(desk, patient, front_desk_user):
    from reminders.channels.base import Inbound
    from reminders.inbox import inbound_keep

    inbound(patient, 30, "問題", assignee=front_desk_user)

    row = inbound_keep(
        inbound=Inbound(channel="sms", kind="text", sender=PHONE, text="還有一件事"),
        patients=[patient],
        event_id="SMnew",
        now=NOW,
    )

    assert row is not None and row.assignee == front_desk_user


def test_anonymous_staff_is_sent_to_log_in_and_others_refused(client, patient):
    inbound(patient, 30, "問題")
    urls = [reverse("desk:inbox"), page(patient)]

    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]
    client.force_login(User.objects.create_user("nobody", is_staff=True))
    for url in urls:
        assert client.get(url).status_code == 403
    reply = client.post(
        reverse("desk:conversation_reply", args=[patient.pk]), {"channel": "sms", "body": "x"}
    )
    assert reply.status_code == 403
    assert not InboundMessage.objects.filter(read_at__isnull=False).exists()


def test_the_inbox_and_each_conversation_are_audited(desk, patient, front_desk_user):
    inbound(patient, 30, "問題")

    desk.get(reverse("desk:inbox"))
    desk.get(page(patient))

    listed = AuditEntry.objects.get(action=AuditEntry.Action.LIST, path=reverse("desk:inbox"))
    viewed = AuditEntry.objects.get(action=AuditEntry.Action.VIEW, path=page(patient))
    assert listed.actor == viewed.actor == front_desk_user
    assert [link.patient_id for link in viewed.links.all()] == [patient.pk]


def test_an_unknown_sender_is_linked_after_an_audited_search(desk, patient):
    stranger = "+886987654321"
    inbound(None, 30, "我是家屬", sender=stranger, sender_bidx=sender_index("sms", stranger))
    listing = desk.get(reverse("desk:inbox")).content.decode()
    assert stranger in listing and "連結到病人" in listing
    url = reverse("desk:inbox_unknown", args=["sms", sender_index("sms", stranger)])

    found = desk.get(url, {"q": patient.chart_no}).content.decode()
    refused = desk.post(url, {"patient": patient.pk})
    linked = desk.post(url, {"patient": patient.pk, "confirmed": "1"})

    assert "林美玲" in found
    assert AuditEntry.objects.filter(action=AuditEntry.Action.SEARCH, path=url).exists()
    assert "請先確認" in refused.content.decode()
    assert linked.status_code == 302 and linked["Location"] == page(patient)
    assert InboundMessage.objects.get().patient == patient
    assert desk.get(url).status_code == 404  # nothing left to link


def test_a_sender_with_the_patients_own_phone_links_without_confirming(desk, patient):
    row = inbound(None, 30, "我換了新手機嗎？")
    url = reverse("desk:inbox_unknown", args=["sms", row.sender_bidx])

    found = desk.get(url, {"q": patient.chart_no}).content.decode()
    desk.post(url, {"patient": patient.pk})

    assert "電話相同" in found
    assert InboundMessage.objects.get().patient == patient


def test_the_patient_page_leads_to_the_conversation(desk, patient):
    inbound(patient, 30, "問題")

    html = desk.get(reverse("admin:patients_patient_change", args=[patient.pk])).content.decode()

    assert 'id="write-to-patient"' in html and page(patient) in html
    assert "1 則未讀訊息" in html
