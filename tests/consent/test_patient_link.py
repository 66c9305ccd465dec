"""The patient's own settings page, /p/<token>/: a short link that expires and is bound to its
patient, every showing audited, each switch one ledger entry with the source "patient link"."""

import datetime as dt
import re

import pytest
import time_machine
from django.core.cache import cache
from django.test import Client

from consent.models import Channel, ConsentEntry, Purpose, Source
from consent.patient_link import (
    WRONG_TOKENS_PER_HOUR,
    LinkState,
    link_evidence,
    masked_name,
    patient_link_read,
    patient_link_token,
)
from consent.selectors import Reason, may_contact
from patients.models import AuditEntry, Patient
from tests.factories import PatientFactory, grant
from tests.helpers import taipei

pytestmark = pytest.mark.django_db
TODAY = dt.date(2026, 12, 3)
NOW = taipei(2026, 12, 3, 10, 0)


@pytest.fixture(autouse=True)
def _frozen_and_fresh(settings):
    settings.PATIENT_LINK_DAYS = 30
    cache.clear()
    with time_machine.travel(NOW, tick=False):
        yield
    cache.clear()


@pytest.fixture
def patient(db):
    patient = PatientFactory(name="王小明", line_user_id="")
    grant(patient, Purpose.CARE, Channel.SMS)
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    return patient


def _url(patient, issued_on=TODAY):
    return f"/p/{patient_link_token(patient_id=patient.pk, issued_on=issued_on)}/"


def _form(**overrides):
    """The whole form as the page shows it for `patient` above, with `overrides`."""
    data = {
        "care:sms": "on",
        "relationship:sms": "on",
        "preferred_channel": "",
        "preferred_language": "zh-hant",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


# --- the token -------------------------------------------------------------------------------


def test_the_token_is_short_and_url_safe():
    token = patient_link_token(patient_id=1_000_000, issued_on=TODAY)

    assert len(token) <= 15
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)


def test_the_token_reads_back_to_its_patient(patient):
    token = patient_link_token(patient_id=patient.pk, issued_on=TODAY)

    read = patient_link_read(token, today=TODAY)

    assert (read.state, read.patient, read.issued_on) == (LinkState.VALID, patient, TODAY)
    assert read.evidence == link_evidence(token)
    assert token not in read.evidence


def test_a_token_is_bound_to_its_patient(patient):
    other = PatientFactory()
    token = patient_link_token(patient_id=patient.pk, issued_on=TODAY)
    # The signature of one patient's link doesn't open another's.
    forged = patient_link_token(patient_id=other.pk, issued_on=TODAY)[:-8] + token[-8:]

    assert patient_link_read(forged, today=TODAY).state == LinkState.UNKNOWN


def test_the_token_expires_after_patient_link_days(patient):
    token = patient_link_token(patient_id=patient.pk, issued_on=TODAY)

    last = patient_link_read(token, today=TODAY + dt.timedelta(days=30))
    gone = patient_link_read(token, today=TODAY + dt.timedelta(days=31))

    assert last.state == LinkState.VALID
    assert (gone.state, gone.patient) == (LinkState.EXPIRED, None)


def test_masked_name_hides_the_middle():
    assert masked_name("王小明") == "王○明"
    assert masked_name("林美") == "林○"
    assert masked_name("歐陽小明") == "歐○○明"


# --- the page ----------------------------------------------------------------------------------


def test_the_page_shows_a_masked_name_and_the_switches_and_is_audited(client, patient):
    response = client.get(_url(patient))

    page = response.content.decode()
    assert response.status_code == 200
    assert "王○明" in page and "王小明" not in page
    assert 'name="robots" content="noindex' in page
    assert response["X-Robots-Tag"].startswith("noindex")
    assert 'name="care:sms" value="on" checked' in page
    assert 'name="care:line" value="on">' in page
    entry = AuditEntry.objects.get()
    assert entry.action == AuditEntry.Action.VIEW
    assert entry.actor is None
    assert list(entry.patients.all()) == [patient]
    assert patient_link_token(patient_id=patient.pk, issued_on=TODAY) not in entry.detail


@pytest.mark.parametrize(
    "token",
    ["nothing", "1aaaAAAAAAAA", "x" * 15, "0" * 40],
)
def test_an_unknown_token_gets_a_friendly_404(client, patient, token):
    response = client.get(f"/p/{token}/")

    assert response.status_code == 404
    assert "此連結無法使用" in response.content.decode()
    assert not AuditEntry.objects.exists()


def test_an_expired_link_gets_a_friendly_410(client, patient):
    response = client.get(_url(patient, TODAY - dt.timedelta(days=31)))

    assert response.status_code == 410
    assert "連結已過期" in response.content.decode()


def test_an_erased_patients_link_reads_like_an_unknown_one(client, patient):
    url = _url(patient)
    Patient.objects.filter(pk=patient.pk).update(erased_at=NOW)
    made_up = client.get("/p/zzzzzzzzzzzzzzz/")

    response = client.get(url)

    assert response.status_code == 404
    assert response.content == made_up.content
    assert not AuditEntry.objects.exists()


def test_a_deleted_patients_link_is_a_404_too(client):
    token = patient_link_token(patient_id=987654, issued_on=TODAY)

    assert client.get(f"/p/{token}/").status_code == 404


def test_many_wrong_tokens_from_one_address_are_refused_for_an_hour(client, patient):
    for number in range(WRONG_TOKENS_PER_HOUR):
        assert client.get(f"/p/wrong{number:010d}/").status_code == 404

    blocked = client.get(_url(patient))
    other_address = client.get(_url(patient), REMOTE_ADDR="10.0.0.9")

    assert blocked.status_code == 429
    assert other_address.status_code == 200


def test_switching_a_purpose_off_writes_one_entry_and_stops_sending_at_once(client, patient):
    token = patient_link_token(patient_id=patient.pk, issued_on=TODAY)
    assert may_contact(patient=patient, purpose=Purpose.RELATIONSHIP, channel=Channel.SMS)

    response = client.post(f"/p/{token}/", _form(**{"relationship:sms": None}))

    assert response.status_code == 200
    page = response.content.decode()
    assert "已儲存您的設定" in page
    entry = ConsentEntry.objects.get(source=Source.PATIENT_LINK)
    assert (entry.purpose, entry.channel, entry.action) == ("relationship", "sms", "withdraw")
    assert entry.evidence == link_evidence(token)
    assert entry.recorded_by is None
    decision = may_contact(patient=patient, purpose=Purpose.RELATIONSHIP, channel=Channel.SMS)
    assert (decision.allowed, decision.reason) == (False, Reason.WITHDRAWN)
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)
    change = AuditEntry.objects.get(action=AuditEntry.Action.CHANGE)
    assert change.actor is None and "relationship/sms off" in change.detail


def test_each_switch_is_its_own_entry_and_an_unchanged_form_writes_none(client, patient):
    url = _url(patient)

    client.post(url, _form(**{"care:email": "on", "relationship:sms": None}))
    client.post(url, _form(**{"care:email": "on", "relationship:sms": None}))

    entries = ConsentEntry.objects.filter(source=Source.PATIENT_LINK)
    assert sorted(entries.values_list("purpose", "channel", "action")) == [
        ("care", "email", "grant"),
        ("relationship", "sms", "withdraw"),
    ]
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.EMAIL)


def test_a_patient_may_switch_everything_off(client, patient):
    client.post(_url(patient), _form(**{"care:sms": None, "relationship:sms": None}))

    for purpose in Purpose.values:
        for channel in Channel.values:
            assert not may_contact(patient=patient, purpose=purpose, channel=channel)


def test_switching_on_a_channel_without_an_address_says_why_it_wont_reach(client, patient):
    response = client.post(_url(patient), _form(**{"care:line": "on"}))

    assert "LINE 尚未與診所綁定" in response.content.decode()
    decision = may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)
    assert decision.reason == Reason.NO_CONTACT_POINT


def test_channel_and_language_changes_are_stored_and_audited(client, patient):
    response = client.post(_url(patient), _form(preferred_channel="email", preferred_language="en"))

    patient.refresh_from_db()
    assert (patient.preferred_channel, patient.preferred_language) == ("email", "en")
    assert not ConsentEntry.objects.filter(source=Source.PATIENT_LINK).exists()
    change = AuditEntry.objects.get(action=AuditEntry.Action.CHANGE)
    assert change.actor is None
    assert "channel=email" in change.detail and "language=en" in change.detail
    assert "偏好管道：E-mail" in response.content.decode() or "偏好管道" in (
        response.content.decode()
    )


def test_a_bad_channel_or_language_changes_neither(client, patient):
    client.post(_url(patient), _form(preferred_channel="fax", preferred_language="fr"))

    patient.refresh_from_db()
    assert (patient.preferred_channel, patient.preferred_language) == ("", "zh-hant")


def test_a_post_without_the_csrf_token_is_refused(patient):
    csrf_client = Client(enforce_csrf_checks=True)

    response = csrf_client.post(_url(patient), _form(**{"relationship:sms": None}))

    assert response.status_code == 403
    assert not ConsentEntry.objects.filter(source=Source.PATIENT_LINK).exists()


def test_a_post_with_the_pages_csrf_token_goes_through(patient):
    csrf_client = Client(enforce_csrf_checks=True)
    page = csrf_client.get(_url(patient)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]

    response = csrf_client.post(
        _url(patient), _form(**{"relationship:sms": None, "csrfmiddlewaretoken": token})
    )

    assert response.status_code == 200
    assert ConsentEntry.objects.filter(source=Source.PATIENT_LINK).count() == 1


def test_an_expired_link_changes_nothing(client, patient):
    response = client.post(
        _url(patient, TODAY - dt.timedelta(days=40)), _form(**{"relationship:sms": None})
    )

    assert response.status_code == 410
    assert not ConsentEntry.objects.filter(source=Source.PATIENT_LINK).exists()


def test_the_page_speaks_english_when_the_browser_asks(client, patient):
    response = client.get(_url(patient), HTTP_ACCEPT_LANGUAGE="en")

    assert "Your messages from the clinic" in response.content.decode()
