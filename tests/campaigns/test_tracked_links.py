"""Tracked links: `{% link "https://…" %}` in a template becomes <PUBLIC_BASE_URL>/r/<token>/, one
token per message, counted when opened and sent on to the stored address only."""

import datetime as dt
import logging
import re

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse
from django.utils import timezone

from campaigns.links import TOKEN_CHARS
from campaigns.models import MessageTemplate
from campaigns.planner import message_text, plan_rule
from campaigns.templating import (
    LINK_MAX_CHARS,
    TemplateProblem,
    check_template,
    render_message,
    sms_size,
)
from consent.models import Channel, Purpose
from patients.models import ClinicProfile
from reminders.channels.base import ChannelError
from reminders.channels.memory import MemoryChannel, outbox
from reminders.models import OutboxMessage, Status, TrackedLink
from tests.factories import PatientFactory, grant
from tests.helpers import dispatch, only, plan, taipei

pytestmark = pytest.mark.django_db
SITE = "https://crm.clinic.example"
BIRTHDAY = taipei(2026, 11, 24, 8, 0)
SEND = taipei(2026, 11, 24, 10, 0)  # the birthday rule's send time
LINK_RE = re.compile(r"https://crm\.clinic\.example/r/([A-Za-z0-9_-]+)/")


@pytest.fixture(autouse=True)
def site(settings):
    settings.PUBLIC_BASE_URL = SITE


# --- the checker ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        '生日快樂！{% link "https://clinic.example/health" %}',
        "{% link 'http://clinic.example/a?b=1&c=2' %} 與 {% link \"https://clinic.example/b\" %}",
    ],
)
def test_the_checker_accepts_literal_web_addresses(body):
    check_template(body, kind="birthday")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("{% link %}", "one address in quotes"),
        ("{% link patient.name %}", "one address in quotes"),
        ('{% link "https://a.example" "https://b.example" %}', "one address in quotes"),
        ('{% link "javascript:alert(1)" %}', "full web address"),
        ('{% link "ftp://clinic.example/x" %}', "full web address"),
        ('{% link "/relative/path" %}', "full web address"),
        ('{% link "https://clinic.example/{{ patient.name }}" %}', "full web address"),
        ('{% link "https://clinic.example/' + "x" * LINK_MAX_CHARS + '" %}', "at most 300"),
        ('{% link "https://a.example/" %}' * 4, "at most 3"),
    ],
)
def test_the_checker_refuses_anything_but_a_few_literal_web_addresses(body, words, settings):
    settings.LANGUAGE_CODE = "en"
    from django.utils import translation

    with translation.override("en"), pytest.raises(TemplateProblem, match=words):
        check_template(body, kind="birthday")


def test_the_checker_refuses_links_until_site_url_is_set(settings):
    settings.PUBLIC_BASE_URL = ""

    with pytest.raises(TemplateProblem):
        check_template('{% link "https://clinic.example/x" %}', kind="birthday")


def test_a_preview_counts_the_link_at_its_real_length():
    body = "A" * 100 + ' {% link "https://clinic.example/x" %}'

    text = render_message(subject="", body=body, context={}, channel="sms").body

    real = f"{SITE}/r/{'x' * TOKEN_CHARS}/"
    assert text == "A" * 100 + " " + real
    assert sms_size(text).units == 101 + len(real)


# --- the planner ------------------------------------------------------------------------------


def _birthday_with_link(body='生日快樂！{% link "https://clinic.example/health" %}'):
    rule = only("生日祝福")
    MessageTemplate.objects.filter(rule=rule).update(body=body)
    return rule


def test_each_message_goes_out_with_its_own_link(clinic, memory_channels):
    rule = _birthday_with_link()
    patients = [PatientFactory(birth_date=dt.date(1960, 11, 24)) for _ in range(3)]
    for patient in patients:
        grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(BIRTHDAY)
    dispatch(SEND)

    messages = list(OutboxMessage.objects.filter(rule=rule))
    assert len(messages) == 3
    for message in messages:
        assert message.status == Status.SENT
        link = TrackedLink.objects.get(message=message)
        assert (link.rule, link.url, link.clicks) == (rule, "https://clinic.example/health", 0)
        assert link.created_at == SEND
        assert len(link.token) >= TOKEN_CHARS
        assert LINK_RE.findall(message.body) == [link.token]
    assert len({link.token for link in TrackedLink.objects.all()}) == 3


def test_a_message_text_gets_its_links_when_it_is_made(clinic, memory_channels):
    rule = _birthday_with_link()
    rule.channel_order = ["sms", "line"]
    rule.save()
    patient = PatientFactory(birth_date=dt.date(1960, 11, 24), line_user_id="U" + "b" * 32)
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    plan(BIRTHDAY)
    dispatch(SEND)
    message = OutboxMessage.objects.get()
    first = TrackedLink.objects.get(message=message)
    assert LINK_RE.findall(message.body) == [first.token]

    later = SEND + dt.timedelta(hours=3)
    line = message_text(message, "line", now=later)

    assert line is not None
    made = TrackedLink.objects.get(message=message, created_at=later)
    assert LINK_RE.findall(line.body) == [made.token] and made.token != first.token
    assert (made.rule, made.url) == (rule, first.url)


def test_planning_makes_no_links_and_sending_one_link_per_message(clinic, memory_channels):
    _birthday_with_link()
    grant(PatientFactory(birth_date=dt.date(1960, 11, 24)), Purpose.RELATIONSHIP, Channel.SMS)

    plan(BIRTHDAY)
    plan(BIRTHDAY + dt.timedelta(minutes=5))
    assert not TrackedLink.objects.exists()  # the text, and its link, are made at send time

    dispatch(SEND)
    dispatch(SEND + dt.timedelta(minutes=5))

    assert TrackedLink.objects.count() == OutboxMessage.objects.count() == 1


def test_a_retry_sends_the_text_made_for_the_first_try(clinic, memory_channels):
    _birthday_with_link()
    grant(PatientFactory(birth_date=dt.date(1960, 11, 24)), Purpose.RELATIONSHIP, Channel.SMS)
    plan(BIRTHDAY)
    MemoryChannel.fail_next(ChannelError("busy", permanent=False))

    dispatch(SEND)
    message = OutboxMessage.objects.get()
    assert message.status == Status.QUEUED and message.body
    made = message.body
    dispatch(SEND + dt.timedelta(minutes=10))

    message.refresh_from_db()
    assert message.status == Status.SENT
    assert message.body == made == outbox[-1].body and len(outbox) == 1
    assert TrackedLink.objects.count() == 1


def test_planning_a_rule_with_links_without_site_url_fails_loud(clinic, settings, caplog):
    rule = _birthday_with_link()
    grant(PatientFactory(birth_date=dt.date(1960, 11, 24)), Purpose.RELATIONSHIP, Channel.SMS)
    settings.PUBLIC_BASE_URL = ""

    with pytest.raises(ImproperlyConfigured, match="PUBLIC_BASE_URL"):
        plan_rule(rule, now=BIRTHDAY, profile=ClinicProfile.load())
    with caplog.at_level(logging.ERROR):
        plan(BIRTHDAY)

    assert not OutboxMessage.objects.exists()
    assert "planning rule" in caplog.text


@pytest.mark.parametrize("base", ["http://crm.clinic.example", "https://localhost:8000"])
def test_production_refuses_a_plain_http_or_local_site_url(clinic, settings, base):
    rule = _birthday_with_link()
    settings.PUBLIC_BASE_URL = base
    settings.DEBUG = False

    with pytest.raises(ImproperlyConfigured):
        plan_rule(rule, now=BIRTHDAY, profile=ClinicProfile.load())


# --- opening a link ---------------------------------------------------------------------------


@pytest.fixture
def link(clinic, memory_channels):
    _birthday_with_link()
    grant(PatientFactory(birth_date=dt.date(1960, 11, 24)), Purpose.RELATIONSHIP, Channel.SMS)
    plan(BIRTHDAY)
    dispatch(SEND)
    return TrackedLink.objects.get()


def test_opening_a_link_counts_the_click_and_redirects_to_its_address(client, link):
    first = timezone.now()

    response = client.get(f"/r/{link.token}/")
    client.get(reverse("tracked-link", args=[link.token]))

    assert response.status_code == 302
    assert response["Location"] == "https://clinic.example/health"
    link.refresh_from_db()
    assert link.clicks == 2
    assert link.first_clicked_at is not None and link.first_clicked_at >= first


def test_the_first_click_time_stays_the_first(client, link):
    client.get(f"/r/{link.token}/")
    link.refresh_from_db()
    first = link.first_clicked_at

    client.get(f"/r/{link.token}/")

    link.refresh_from_db()
    assert link.first_clicked_at == first


def test_the_redirect_only_ever_goes_to_the_stored_address(client, link):
    for query in ("?next=https://evil.example", "?url=//evil.example", "?to=javascript:x"):
        response = client.get(f"/r/{link.token}/{query}")
        assert response["Location"] == "https://clinic.example/health"


def test_an_app_drawing_a_preview_is_sent_on_but_not_counted(client, link):
    response = client.get(
        f"/r/{link.token}/", HTTP_USER_AGENT="facebookexternalhit/1.1;line-poker/1.0"
    )
    client.head(f"/r/{link.token}/")

    assert response.status_code == 302
    link.refresh_from_db()
    assert (link.clicks, link.first_clicked_at) == (0, None)


@pytest.mark.parametrize("token", ["nosuchtoken", "x" * 200, "%00", "..", "a'b"])
def test_an_unknown_token_is_a_plain_zh_hant_page_not_an_error(client, db, token):
    response = client.get(f"/r/{token}/")

    assert response.status_code in (400, 404)
    if response.status_code == 404:
        page = response.content.decode()
        assert "連結" in page and "Not Found" not in page
        assert 'lang="zh-Hant"' in page


def test_opening_a_link_needs_no_login_and_posting_is_refused(client, link):
    assert client.get(f"/r/{link.token}/").status_code == 302
    assert client.post(f"/r/{link.token}/").status_code == 405
    link.refresh_from_db()
    assert link.clicks == 1


# --- checks at start --------------------------------------------------------------------------


def test_the_server_refuses_to_start_with_a_site_url_patients_cannot_open(settings):
    from campaigns.links import check_site_url

    assert check_site_url() == []
    settings.PUBLIC_BASE_URL = "crm.clinic.example"  # no scheme: a relative link
    assert [error.id for error in check_site_url()] == ["campaigns.E001"]
    settings.PUBLIC_BASE_URL = "http://127.0.0.1:8000"
    settings.DEBUG = False
    assert [error.id for error in check_site_url()] == ["campaigns.E001"]


def test_the_deploy_check_names_rules_whose_links_have_no_site(settings):
    from campaigns.links import check_links_have_a_site

    _birthday_with_link()
    assert check_links_have_a_site() == []  # PUBLIC_BASE_URL set
    settings.PUBLIC_BASE_URL = ""

    errors = check_links_have_a_site()

    assert [error.id for error in errors] == ["campaigns.E003", "campaigns.E002"]
    assert "delivery reports" in errors[0].msg
    assert "生日祝福" in errors[1].msg


def test_the_deploy_check_wants_the_public_address_even_without_links(settings):
    from campaigns.links import check_links_have_a_site

    settings.PUBLIC_BASE_URL = ""

    assert [error.id for error in check_links_have_a_site()] == ["campaigns.E003"]
