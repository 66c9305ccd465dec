"""A patient links their LINE by sending the one-time code from the desk: through the real signed
webhook (signed as LINE signs, checked with the SDK's own SignatureValidator), and answered with
the real line-bot-sdk reply call against the fake LINE on 127.0.0.1, whose requests are checked
against LINE's OpenAPI spec."""

import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from linebot.v3.webhook import SignatureValidator

from consent.models import Action, Channel, ConsentEntry, Purpose, Source
from consent.selectors import may_contact
from patients.models import ClinicProfile, Patient
from reminders.linking import (
    FAILURE_WINDOW,
    code_candidates,
    code_hash,
    line_link_code_create,
)
from reminders.models import LineAccountState, LineLinkCode, LineLinkFailure
from tests.factories import PatientFactory, grant

pytestmark = pytest.mark.django_db
SECRET = "test-line-secret"
SENDER = "U" + "6" * 32
OTHER = "U" + "7" * 32


@pytest.fixture(autouse=True)
def line_settings(settings, fake_line):
    settings.LINE_CHANNEL_SECRET = SECRET
    settings.LINE_LINK_CODE_HOURS = 24


@pytest.fixture
def profile(clinic):
    clinic.line_basic_id = "@123abcde"
    clinic.save()
    return clinic


@pytest.fixture
def patient(profile):
    return PatientFactory(phone="+886912345678")


def make_code(patient, purposes=(Purpose.CARE,), *, by=None, now=None):
    return line_link_code_create(
        patient=patient, purposes=list(purposes), created_by=by, now=now or timezone.now()
    )


def post(client, *events):
    """LINE's webhook call: the body signed with the channel secret as LINE signs it."""
    body = json.dumps({"destination": "U" + "0" * 32, "events": list(events)})
    signature = base64.b64encode(
        hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest()
    ).decode()
    assert SignatureValidator(SECRET).validate(body, signature)  # as the SDK itself checks
    return client.post(
        reverse("line-webhook"),
        body,
        content_type="application/json",
        HTTP_X_LINE_SIGNATURE=signature,
    )


def event(kind, user_id=SENDER, **extra):
    return {
        "type": kind,
        "mode": "active",
        "timestamp": int(timezone.now().timestamp() * 1000),
        "source": {"type": "user", "userId": user_id},
        "webhookEventId": "01H" + uuid.uuid4().hex[:23].upper(),
        "deliveryContext": {"isRedelivery": False},
        **extra,
    }


def text(body, user_id=SENDER):
    return event(
        "message",
        user_id,
        replyToken=uuid.uuid4().hex,
        message={"type": "text", "id": "444573844083572737", "quoteToken": "q", "text": body},
    )


def replies(fake_line):
    return [r["messages"][0]["text"] for r in fake_line.replies]


def line_grants(patient):
    return ConsentEntry.objects.filter(
        patient=patient, channel=Channel.LINE, action=Action.GRANT, source=Source.LINE
    )


def test_the_right_code_links_the_account_records_consent_and_welcomes(
    client, patient, fake_line, front_desk_user
):
    # given: a code made at the desk for care and relationship messages
    row, code = make_code(patient, [Purpose.CARE, Purpose.RELATIONSHIP], by=front_desk_user)
    message = text(code)

    # when: the patient's LINE sends it
    response = post(client, message)

    # then: the LINE id is stored (encrypted, with its blind index) on that patient
    assert response.status_code == 200
    patient.refresh_from_db()
    assert patient.line_user_id == SENDER
    assert patient.line_user_id_bidx == Patient.index_of("line_user_id", SENDER)
    with connection.cursor() as cursor:
        cursor.execute("SELECT line_user_id FROM patients_patient WHERE id = %s", [patient.pk])
        assert SENDER not in cursor.fetchone()[0]  # encrypted at rest
    # a ledger entry per purpose agreed at the desk, source LINE, the event as evidence
    entries = line_grants(patient)
    assert {e.purpose for e in entries} == {Purpose.CARE, Purpose.RELATIONSHIP}
    assert all(message["webhookEventId"] in e.evidence for e in entries)
    assert all(e.recorded_by == front_desk_user for e in entries)
    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)
    # the code is used up, and only its hash was ever stored
    row.refresh_from_db()
    assert row.used_at and row.used_event_id == message["webhookEventId"]
    assert row.code_hash == code_hash(code) != code
    assert code not in json.dumps(list(LineLinkCode.objects.values()), default=str)
    # the welcome went by the event's reply token, through the real SDK
    assert [r["replyToken"] for r in fake_line.replies] == [message["replyToken"]]
    assert "歡迎" in replies(fake_line)[0] and "安心診所" in replies(fake_line)[0]
    assert LineAccountState.objects.get(patient=patient).linked_at


@pytest.mark.parametrize(
    "sentence",
    [
        "我的代碼是 {code}",
        "您好，綁定代碼：{lower}。謝謝！",
        "{fullwidth}",
        "Hi, my code is {lower} 🙏",
    ],
)
def test_a_code_in_a_sentence_any_case_or_full_width_links(client, patient, fake_line, sentence):
    _row, code = make_code(patient)
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in code)  # a Chinese keyboard's letters

    post(client, text(sentence.format(code=code, lower=code.lower(), fullwidth=fullwidth)))

    patient.refresh_from_db()
    assert patient.line_user_id == SENDER
    assert line_grants(patient).count() == 1


def test_a_wrong_code_links_nothing_and_says_so(client, patient, fake_line):
    _row, code = make_code(patient)
    wrong = "ZZ9ZZ8" if code != "ZZ9ZZ8" else "ZZ9ZZ7"

    response = post(client, text(f"代碼 {wrong}"))

    assert response.status_code == 200
    patient.refresh_from_db()
    assert not patient.line_user_id and not line_grants(patient).exists()
    assert LineLinkFailure.objects.count() == 1
    assert "無法使用" in replies(fake_line)[0]


def test_an_expired_code_does_not_link(client, patient, fake_line):
    made = timezone.now() - dt.timedelta(hours=24, minutes=1)
    _row, code = make_code(patient, now=made)

    post(client, text(code))

    patient.refresh_from_db()
    assert not patient.line_user_id and not line_grants(patient).exists()
    assert "已過期" in replies(fake_line)[0]


def test_a_used_code_does_not_link_a_second_account(client, patient, fake_line):
    _row, code = make_code(patient)
    post(client, text(code))

    post(client, text(code, user_id=OTHER))

    patient.refresh_from_db()
    assert patient.line_user_id == SENDER
    assert line_grants(patient).count() == 1
    assert "無法使用" in replies(fake_line)[1]


def test_a_code_links_only_the_patient_it_was_made_for(client, patient, fake_line):
    # given: two patients each with a code; the sender already linked the first
    other = PatientFactory()
    _first, first_code = make_code(patient)
    _second, second_code = make_code(other, [Purpose.RELATIONSHIP])
    post(client, text(first_code))

    # when: the same LINE sends the other patient's code (a parent linking a child)
    post(client, text(second_code))

    # then: each code linked its own patient, with its own purposes
    patient.refresh_from_db()
    other.refresh_from_db()
    assert patient.line_user_id == other.line_user_id == SENDER
    assert [e.purpose for e in line_grants(patient)] == [Purpose.CARE]
    assert [e.purpose for e in line_grants(other)] == [Purpose.RELATIONSHIP]


def test_a_newer_code_replaces_the_patients_earlier_one(client, patient, fake_line):
    _old, old_code = make_code(patient)
    _new, new_code = make_code(patient)

    post(client, text(old_code))
    assert not Patient.objects.get(pk=patient.pk).line_user_id

    post(client, text(new_code))
    assert Patient.objects.get(pk=patient.pk).line_user_id == SENDER


def test_a_replayed_event_links_once_and_answers_once(client, patient, fake_line):
    _row, code = make_code(patient)
    message = text(code)
    post(client, message)

    redelivered = {**message, "deliveryContext": {"isRedelivery": True}}
    response = post(client, redelivered)

    assert response.status_code == 200
    assert line_grants(patient).count() == 1
    assert len(fake_line.replies) == 1


def test_wrong_codes_are_rate_limited_per_line_user(client, patient, fake_line):
    # given: five wrong codes from one LINE user
    _row, code = make_code(patient)
    for wrong in ("22222A", "33333B", "44444C", "55555D", "66666E"):
        post(client, text(wrong))

    # when: the sixth message carries the right code
    post(client, text(code))

    # then: it is not even looked up: a polite answer, nothing linked, the code still usable
    patient.refresh_from_db()
    assert not patient.line_user_id
    assert "次數過多" in replies(fake_line)[-1]
    assert LineLinkFailure.objects.count() == 5
    assert not LineLinkCode.objects.filter(used_at__isnull=False).exists()
    # another LINE user is not held back by them
    post(client, text(code, user_id=OTHER))
    assert Patient.objects.get(pk=patient.pk).line_user_id == OTHER


def test_the_rate_limit_lifts_after_the_window(client, patient, fake_line):
    _row, code = make_code(patient)
    key = Patient.index_of("line_user_id", SENDER)
    old = timezone.now() - FAILURE_WINDOW - dt.timedelta(minutes=1)
    LineLinkFailure.objects.bulk_create(
        [LineLinkFailure(sender_bidx=key, at=old) for _i in range(5)]
    )

    post(client, text(code))

    assert Patient.objects.get(pk=patient.pk).line_user_id == SENDER


def test_a_follow_from_an_unknown_user_is_greeted_with_how_to_link(client, profile, fake_line):
    follow = event("follow", replyToken=uuid.uuid4().hex, follow={"isUnblocked": False})

    response = post(client, follow)

    assert response.status_code == 200
    assert fake_line.replies[0]["replyToken"] == follow["replyToken"]
    assert "綁定代碼" in replies(fake_line)[0]
    assert not Patient.objects.filter(line_user_id_bidx__isnull=False).exists()


def test_an_unfollow_marks_the_linked_account_blocked_and_a_follow_unblocks(
    client, patient, fake_line
):
    _row, code = make_code(patient)
    post(client, text(code))

    post(client, event("unfollow"))

    state = LineAccountState.objects.get(patient=patient)
    assert state.blocked_at is not None
    assert not may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)
    assert len(fake_line.replies) == 1  # nothing answers an unfollow

    post(client, event("follow", replyToken=uuid.uuid4().hex, follow={"isUnblocked": False}))
    state.refresh_from_db()
    assert state.blocked_at is None
    # consent stays withdrawn until the patient agrees again
    assert not may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)


def test_a_linked_patients_words_are_not_taken_for_codes(client, patient, fake_line):
    _row, code = make_code(patient)
    post(client, text(code))
    grant(patient, Purpose.CARE, Channel.SMS)

    for words in ("THANKS", "謝謝", "OK 123", "1", "明天 10:30 可以嗎"):
        assert post(client, text(words)).status_code == 200

    assert not LineLinkFailure.objects.exists()
    assert len(fake_line.replies) == 1  # only the welcome


@pytest.mark.parametrize(
    "message",
    [
        {
            "type": "sticker",
            "id": "1",
            "quoteToken": "q",
            "packageId": "446",
            "stickerId": "1988",
            "stickerResourceType": "STATIC",
        },
        {"type": "image", "id": "2", "quoteToken": "q", "contentProvider": {"type": "line"}},
        {"type": "text", "id": "3", "quoteToken": "q", "text": "😀🙏🏻👨‍👩‍👧"},
        {"type": "text", "id": "4", "quoteToken": "q", "text": "AB12CD " * 800},
        {"type": "text", "id": "5", "quoteToken": "q", "text": ""},
        {"type": "text", "id": "6", "quoteToken": "q", "text": "\u0000\ufffd" + "碼" * 4999},
    ],
    ids=["sticker", "image", "emoji", "oversized", "empty", "nul"],
)
def test_stickers_images_emoji_and_oversized_text_never_fail(client, patient, fake_line, message):
    _row, code = make_code(patient)

    response = post(client, event("message", replyToken=uuid.uuid4().hex, message=message))

    assert response.status_code == 200
    assert not Patient.objects.filter(line_user_id_bidx__isnull=False).exists()
    assert not ConsentEntry.objects.exists()


@pytest.mark.parametrize("kind", ["sticker", "image", "file"])
def test_a_sticker_photo_or_file_is_answered_please_write_once(client, patient, fake_line, kind):
    # As LINE sends them (../shared/provider-specs/line_webhook.yml, each's required fields).
    message = {"type": kind, "id": "7", "quoteToken": "q"} | {
        "sticker": {"packageId": "446", "stickerId": "1988", "stickerResourceType": "STATIC"},
        "image": {"contentProvider": {"type": "line"}},
        "file": {"fileName": "報告.pdf", "fileSize": 2048},
    }[kind]
    sent = event("message", replyToken=uuid.uuid4().hex, message=message)

    first, again = post(client, sent), post(client, sent)  # LINE redelivers it

    assert first.status_code == again.status_code == 200
    assert [r["replyToken"] for r in fake_line.replies] == [sent["replyToken"]]
    assert "文字" in replies(fake_line)[0]
    assert not ConsentEntry.objects.exists()


def test_a_link_code_with_a_bad_signature_changes_nothing(client, patient, fake_line):
    _row, code = make_code(patient)
    body = json.dumps({"destination": "U" + "0" * 32, "events": [text(code)]})

    response = client.post(
        reverse("line-webhook"), body, content_type="application/json", HTTP_X_LINE_SIGNATURE="x"
    )

    assert response.status_code == 403
    assert not Patient.objects.get(pk=patient.pk).line_user_id
    assert not fake_line.replies


def test_codes_are_short_unambiguous_and_found_only_when_code_shaped():
    assert code_candidates("我的代碼是 AB23CD") == ["AB23CD"]
    assert code_candidates("ab23cd") == ["AB23CD"]
    assert code_candidates("THANKS 123456") == []  # a word, a number: no letter and digit
    assert code_candidates("AB1OCD") == []  # O is not in the alphabet
    assert code_candidates("AB23CDE") == []  # seven characters
    assert code_candidates("ab2 3cd") == code_candidates(" A-B-2-3-C-D ") == ["AB23CD"]
    assert code_candidates("AB 23 CD 45") == []  # spaced out, but not one code


def test_without_a_basic_id_the_profile_still_loads(patient):
    profile = ClinicProfile.load()
    profile.line_basic_id = ""
    profile.full_clean()
    profile.line_basic_id = "@123ABCDE"
    profile.full_clean()
    assert profile.line_basic_id == "@123abcde"


def test_the_daily_cleanup_forgets_wrong_codes_past_the_window():
    from reminders.tasks import webhook_cleanup_task

    now = timezone.now()
    LineLinkFailure.objects.create(sender_bidx="a", at=now - FAILURE_WINDOW * 2)
    LineLinkFailure.objects.create(sender_bidx="a", at=now)

    webhook_cleanup_task()

    assert list(LineLinkFailure.objects.values_list("at", flat=True)) == [now]
