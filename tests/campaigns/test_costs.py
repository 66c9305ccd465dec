"""What messages cost: segments and country set when a message is made or moves channel, one
price per message in Python and the same in SQL, LINE's free monthly allowance."""

import datetime as dt
from decimal import Decimal

import pytest

from campaigns.costs import (
    cost_expression,
    line_month_cost,
    message_cost,
    messages_cost,
    phone_country,
)
from campaigns.templating import sms_size
from consent.models import Channel, Purpose
from reminders.channels.base import ChannelError
from reminders.channels.memory import MemoryChannel
from reminders.models import OutboxMessage, Status
from tests.factories import AppointmentFactory, PatientFactory, grant
from tests.helpers import dispatch, only, plan, taipei

pytestmark = pytest.mark.django_db
BIRTHDAY = taipei(2026, 11, 24, 8, 0)


@pytest.fixture(autouse=True)
def prices(settings):
    settings.SMS_PRICE_PER_SEGMENT = {"TW": Decimal("1.5"), "US": Decimal("0.25")}
    settings.SMS_PRICE_DEFAULT = Decimal("3")
    settings.LINE_MONTHLY_ALLOWANCE = 2
    settings.LINE_PRICE_PER_MESSAGE = Decimal("0.2")
    settings.EMAIL_PRICE = Decimal("0")


def test_an_sms_costs_its_segments_at_its_countrys_price():
    assert message_cost("sms", 3, "TW") == Decimal("4.5")
    assert message_cost("sms", 1, "US") == Decimal("0.25")
    assert message_cost("sms", 2, "JP") == Decimal("6")  # not listed: the default
    assert message_cost("sms", 1, "") == Decimal("3")
    assert message_cost("line", 1, "") == Decimal("0.2")
    assert message_cost("email", 1, "") == Decimal("0")
    with pytest.raises(ValueError, match="fax"):
        message_cost("fax", 1, "")


def test_line_is_free_up_to_the_monthly_allowance():
    assert line_month_cost(0) == line_month_cost(2) == Decimal("0")
    assert line_month_cost(7) == Decimal("1.0")


def test_phone_country_reads_the_numbers_region():
    assert phone_country("+886912345678") == "TW"
    assert phone_country("+12125550123") == "US"
    assert phone_country("+14165550123") == "CA"  # same +1, told apart by the area code
    assert phone_country("") == ""
    assert phone_country("not a number") == ""


def _message(patient, n, channel, segments=1, country="", sent_at=None):
    at = sent_at or taipei(2026, 11, 24, 10, 0)
    return OutboxMessage.objects.create(
        rule_id=1,
        patient=patient,
        occurrence_key=f"m{n}",
        purpose=Purpose.CARE,
        channel=channel,
        status=Status.SENT,
        due_at=at,
        next_attempt_at=at,
        sent_at=at,
        expires_at=at,
        body="x",
        segments=segments,
        country=country,
    )


def test_the_sql_price_of_every_message_is_the_python_price():
    patient = PatientFactory()
    cases = [
        ("sms", 1, "TW"),
        ("sms", 4, "TW"),
        ("sms", 2, "US"),
        ("sms", 3, "JP"),
        ("sms", 1, ""),
        ("line", 1, ""),
        ("email", 1, ""),
    ]
    for n, (channel, segments, country) in enumerate(cases):
        _message(patient, n, channel, segments, country)

    in_sql = OutboxMessage.objects.annotate(cost=cost_expression()).order_by("occurrence_key")

    assert [Decimal(row.cost) for row in in_sql] == [message_cost(*case) for case in cases]


def test_the_cost_of_many_messages_takes_the_line_allowance_off_per_month():
    # given, in November, 3 SMS segments in Taiwan and 5 LINE messages (2 free); in December 1
    # LINE message (free) and an e-mail
    patient = PatientFactory()
    _message(patient, 1, "sms", 3, "TW")
    for n in range(5):
        _message(patient, 10 + n, "line")
    _message(patient, 20, "line", sent_at=taipei(2026, 12, 2, 10, 0))
    _message(patient, 21, "email", sent_at=taipei(2026, 12, 2, 10, 0))

    total = messages_cost(OutboxMessage.objects.all())

    assert total == Decimal("4.5") + Decimal("0.6")


def test_an_sms_notes_its_segments_and_country_when_its_text_is_made(clinic, memory_channels):
    only("生日祝福")
    short = PatientFactory(name="林美玲", birth_date=dt.date(1960, 11, 24), phone="+886912000001")
    abroad = PatientFactory(name="Ann Lee", birth_date=dt.date(1960, 11, 24), phone="+12125550123")
    abroad.preferred_language = "en"
    abroad.save()
    for patient in (short, abroad):
        grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(BIRTHDAY)
    dispatch(taipei(2026, 11, 24, 10, 0))

    for patient, country in ((short, "TW"), (abroad, "US")):
        message = OutboxMessage.objects.get(patient=patient)
        assert message.status == Status.SENT
        assert message.country == country
        assert message.segments == sms_size(message.body).segments >= 1


def test_a_line_message_is_one_segment_with_no_country(clinic):
    only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1960, 11, 24), line_user_id="U" + "a" * 32)
    patient.preferred_channel = "line"
    patient.save()
    grant(patient, Purpose.RELATIONSHIP, Channel.LINE)

    plan(BIRTHDAY)

    message = OutboxMessage.objects.get(patient=patient)
    assert (message.channel, message.segments, message.country) == ("line", 1, "")


def test_moving_to_another_channel_recounts_segments_and_country(clinic, memory_channels):
    # given a LINE notice whose SMS fallback is long enough for two segments
    rule = only("回診通知")
    rule.channel_order = ["line", "sms"]
    rule.save()
    rule.templates.filter(channel="sms").update(body="請記得回診。" * 15)
    patient = PatientFactory(line_user_id="U" + "d" * 32, phone="+886912000002")
    grant(patient, Purpose.CARE, Channel.LINE)
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 14, 30))
    plan(taipei(2026, 11, 24, 8, 0))
    message = OutboxMessage.objects.get()
    assert (message.channel, message.segments, message.country) == ("line", 1, "")

    # when LINE refuses it for good
    MemoryChannel.fail_next(ChannelError("blocked", permanent=True))
    dispatch(taipei(2026, 11, 24, 10, 1))

    # then it moved to SMS with the SMS text's size and the phone's country
    message.refresh_from_db()
    assert message.channel == "sms"
    assert (message.segments, message.country) == (2, "TW")
