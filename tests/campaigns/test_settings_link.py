"""`{% settings_link %}` in a message template: allowed and checked at save time, rendered as
<PUBLIC_BASE_URL>/p/<token>/ in a planned message, a stand-in of the same length in dry runs
and previews, and an opt-out made on the page stops the queued message at the gate."""

import datetime as dt
import re

import pytest
import time_machine
from django.core.cache import cache
from django.utils import translation

from campaigns.context import message_context
from campaigns.kinds import Due
from campaigns.links import LINKS_KEY, LinkTokens
from campaigns.models import MessageTemplate
from campaigns.policy import Action, send_decision
from campaigns.templating import TemplateProblem, check_template, render_message
from consent.models import Channel, ConsentEntry, Purpose, Source
from consent.patient_link import LinkState, patient_link_read
from patients.models import ClinicProfile
from reminders.models import OutboxMessage, TrackedLink
from tests.factories import PatientFactory, grant
from tests.helpers import only, plan, taipei, text_of

pytestmark = pytest.mark.django_db
SITE = "https://crm.clinic.example"
BIRTHDAY = taipei(2026, 11, 24, 8, 0)
SETTINGS_RE = re.compile(r"https://crm\.clinic\.example/p/([A-Za-z0-9_-]+)/")
BODY = "生日快樂！不想再收到？{% settings_link %}"


@pytest.fixture(autouse=True)
def site(settings):
    settings.PUBLIC_BASE_URL = SITE
    cache.clear()


def _birthday_with_settings_link(body=BODY):
    rule = only("生日祝福")
    MessageTemplate.objects.filter(rule=rule).update(body=body)
    return rule


# --- the checker --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["birthday", "appointment", "postop", None])
def test_the_checker_accepts_the_settings_link(kind):
    check_template("{{ patient.display_name }}您好，設定：{% settings_link %}", kind=kind)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('{% settings_link "https://a.example" %}', "nothing inside"),
        ("{% settings_link patient.name %}", "nothing inside"),
        ("{% settings_links %}", "not allowed"),
        ('{% now "Y" %}{% settings_link %}', "not allowed"),
        ("{% load static %}{% settings_link %}", "not allowed"),
    ],
)
def test_the_checker_refuses_anything_else(body, words):
    with translation.override("en"), pytest.raises(TemplateProblem, match=words):
        check_template(body, kind="birthday")


def test_the_checker_refuses_the_settings_link_until_site_url_is_set(settings):
    settings.PUBLIC_BASE_URL = ""

    with translation.override("en"), pytest.raises(TemplateProblem, match="PUBLIC_BASE_URL"):
        check_template(BODY, kind="birthday")


# --- rendering -----------------------------------------------------------------------------------


def _context(patient, rule):
    return message_context(
        rule=rule,
        patient=patient,
        profile=ClinicProfile.load(),
        refs={},
        due=Due({}, "x", BIRTHDAY, BIRTHDAY, anchor_at=BIRTHDAY),
        today=BIRTHDAY.date(),
    )


def test_a_dry_run_shows_a_stand_in_as_long_as_the_real_link(clinic):
    rule = _birthday_with_settings_link()
    patient = PatientFactory()
    context = _context(patient, rule)

    dry = render_message(subject="", body=BODY, context=context, channel="sms").body
    context[LINKS_KEY] = LinkTokens(SITE)
    real = render_message(subject="", body=BODY, context=context, channel="sms").body

    assert len(dry) == len(real)
    assert dry != real and "/p/xxxx" in dry
    token = SETTINGS_RE.search(real)[1]
    assert patient_link_read(token, today=BIRTHDAY.date()).patient == patient


def test_the_admin_preview_shows_a_stand_in_without_a_patient():
    text = render_message(subject="", body=BODY, context={}, channel="sms").body

    assert re.search(r"https://crm\.clinic\.example/p/x{15}/$", text)


# --- the planner ---------------------------------------------------------------------------------


def test_a_planned_message_carries_the_patients_own_settings_link(clinic):
    rule = _birthday_with_settings_link()
    patients = [PatientFactory(birth_date=dt.date(1960, 11, 24)) for _ in range(2)]
    for patient in patients:
        grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(BIRTHDAY)

    messages = OutboxMessage.objects.filter(rule=rule).order_by("patient_id")
    assert len(messages) == 2
    for message, patient in zip(messages, patients, strict=True):
        text = text_of(message).body
        assert f"{SITE}/p/" in text
        read = patient_link_read(SETTINGS_RE.search(text)[1], today=BIRTHDAY.date())
        assert (read.state, read.patient) == (LinkState.VALID, patient)
    assert not TrackedLink.objects.exists()  # the settings link needs no row


def test_the_text_made_twice_for_one_message_is_the_same(clinic):
    rule = _birthday_with_settings_link()
    grant(PatientFactory(birth_date=dt.date(1960, 11, 24)), Purpose.RELATIONSHIP, Channel.SMS)
    plan(BIRTHDAY)
    message = OutboxMessage.objects.get(rule=rule)

    assert text_of(message).body == text_of(message).body


def test_an_opt_out_on_the_page_stops_the_queued_message_at_the_gate(client, clinic):
    rule = _birthday_with_settings_link()
    patient = PatientFactory(birth_date=dt.date(1960, 11, 24))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS, at=BIRTHDAY - dt.timedelta(days=1))
    plan(BIRTHDAY)
    message = OutboxMessage.objects.get(rule=rule)
    url = SETTINGS_RE.search(text_of(message).body)[0].removeprefix(SITE)
    later = BIRTHDAY + dt.timedelta(hours=2)

    with time_machine.travel(later, tick=False):
        before = send_decision(message=message, now=later, profile=ClinicProfile.load())
        client.post(url, {"preferred_language": "zh-hant", "preferred_channel": ""})
        message.refresh_from_db()
        after = send_decision(message=message, now=later, profile=ClinicProfile.load())

    assert before.action == Action.SEND
    assert after.action != Action.SEND
    assert ConsentEntry.objects.filter(source=Source.PATIENT_LINK, action="withdraw").count() == 1


def test_a_text_without_the_tag_plans_without_a_site_url(clinic, settings):
    settings.PUBLIC_BASE_URL = ""
    rule = _birthday_with_settings_link(body="生日快樂！{{ patient.display_name }}")
    grant(PatientFactory(birth_date=dt.date(1960, 11, 24)), Purpose.RELATIONSHIP, Channel.SMS)

    plan(BIRTHDAY)

    assert "/p/" not in text_of(OutboxMessage.objects.get(rule=rule)).body


# --- the admin -----------------------------------------------------------------------------------


def test_the_admin_saves_a_template_with_the_settings_link_and_previews_a_stand_in(
    client, manager_user
):
    from django.urls import reverse

    from campaigns.models import Rule
    from tests.campaigns.test_admin import new_rule_post, preview

    client.force_login(manager_user)
    body = (
        "{{ patient.display_name }}您好，{{ appointment.date }} 請回診。設定：{% settings_link %}"
    )

    saved = client.post(
        reverse("admin:campaigns_rule_add"), new_rule_post([("sms", "zh-hant", body)])
    )
    answer = preview(client, body)

    assert saved.status_code == 302
    assert Rule.objects.get(name="Test reminder").templates.get().body == body
    assert answer["ok"] is True
    assert re.search(r"https://crm\.clinic\.example/p/x{15}/$", answer["text"])
