"""What messages cost, in the clinic's currency (NT$), in one place: per message in Python
(`message_cost`) and the same price as an SQL expression (`cost_expression`) so that the
dashboard sums costs in the database, never row by row in Python.

SMS is paid per segment at the recipient country's price (settings.SMS_PRICE_PER_SEGMENT, else
SMS_PRICE_DEFAULT). LINE push messages are free up to the plan's monthly allowance
(LINE_MONTHLY_ALLOWANCE), then LINE_PRICE_PER_MESSAGE each: a per-message price can only be the
price of one more message, so `messages_cost` applies the allowance per calendar month. E-mail
costs EMAIL_PRICE (0: the clinic's own mail server).

A message's `segments` and `country` are set by dispatch when it makes the message's text for a
channel, before the first try there (reminders.services); a planned message has no text yet and
counts as one segment until then.
"""

from decimal import Decimal
from typing import Any

import phonenumbers
from django.conf import settings
from django.db.models import (
    Case,
    Count,
    DecimalField,
    ExpressionWrapper,
    F,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce, TruncMonth

from campaigns.templating import sms_size
from consent.models import Channel
from reminders.models import OutboxMessage

MONEY = DecimalField(max_digits=14, decimal_places=4)


def sms_price(country: str) -> Decimal:
    """The price of one SMS segment to `country` (ISO code; "" when unknown)."""
    prices: dict[str, Decimal] = settings.SMS_PRICE_PER_SEGMENT
    return prices.get(country.upper(), settings.SMS_PRICE_DEFAULT)


def message_cost(channel: str, segments: int, country: str) -> Decimal:
    """What one message costs: SMS per segment by country, a LINE message beyond the monthly
    allowance, an e-mail. Raises ValueError for an unknown channel."""
    if channel == Channel.SMS:
        return sms_price(country) * segments
    if channel == Channel.LINE:
        return Decimal(settings.LINE_PRICE_PER_MESSAGE)
    if channel == Channel.EMAIL:
        return Decimal(settings.EMAIL_PRICE)
    raise ValueError(f"unknown channel {channel!r}")


def cost_expression() -> Case:
    """`message_cost` of an OutboxMessage row, as SQL (LINE at its price beyond the
    allowance; `messages_cost` takes the allowance off)."""
    prices: dict[str, Decimal] = settings.SMS_PRICE_PER_SEGMENT
    sms_segment = Case(
        *[When(country=code, then=Value(price)) for code, price in sorted(prices.items())],
        default=Value(Decimal(settings.SMS_PRICE_DEFAULT)),
        output_field=MONEY,
    )
    return Case(
        When(
            channel=Channel.SMS,
            then=ExpressionWrapper(F("segments") * sms_segment, output_field=MONEY),
        ),
        When(channel=Channel.LINE, then=Value(Decimal(settings.LINE_PRICE_PER_MESSAGE))),
        default=Value(Decimal(settings.EMAIL_PRICE)),
        output_field=MONEY,
    )


def line_month_cost(messages: int) -> Decimal:
    """What `messages` LINE messages in one calendar month cost after the free allowance."""
    paid = max(0, messages - int(settings.LINE_MONTHLY_ALLOWANCE))
    return Decimal(settings.LINE_PRICE_PER_MESSAGE) * paid


def messages_cost(messages: "QuerySet[OutboxMessage]") -> Decimal:
    """What the given messages cost together, in two aggregate queries: SMS and e-mail summed in
    SQL, LINE counted per month (in the clinic's zone) less each month's allowance.

    The allowance is the whole clinic's: pass every message sent in the months concerned to
    split it fairly, or read the result as the cost at the margin for a subset (one rule)."""
    others = messages.exclude(channel=Channel.LINE).aggregate(
        total=Coalesce(Sum(cost_expression()), Value(Decimal(0)), output_field=MONEY)
    )["total"]
    line = Decimal(0)
    months = (
        messages.filter(channel=Channel.LINE)
        .annotate(month=TruncMonth(Coalesce("sent_at", "due_at")))
        .order_by()
        .values("month")
        .annotate(n=Count("id"))
    )
    for month in months:  # one row per month, not per message
        line += line_month_cost(month["n"])
    return Decimal(others) + line


# --- the country of a phone number -----------------------------------------------------------

# The planner asks for every SMS it queues, and phonenumbers takes ~13 µs a number. Most
# calling codes belong to one country (+886 is Taiwan): read from the code alone. For the few
# shared ones (+1, +44, +7, …) the answer is kept per leading digits: eight characters ("+1" and
# an area code, "+44 7781" for Guernsey) decide the region wherever phonenumbers tells them apart.
_COUNTRY_PREFIX = 8
_countries: dict[str, str] = {}


def _single_region(phone: str) -> str | None:
    """The one region of an E.164 number's calling code, or None when the code is shared."""
    for length in (1, 2, 3):  # calling codes are prefix-free
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(phone[1 : 1 + length]))
        if regions:
            return regions[0] if len(regions) == 1 else None
    return ""


def phone_country(phone: str) -> str:
    """The ISO country code of an E.164 `phone` ("TW"), or "" when it is not a number."""
    if not phone:
        return ""
    if phone.startswith("+") and phone[1:4].isdigit():
        single = _single_region(phone)
        if single is not None:
            return single if len(single) == 2 else ""  # "001": a non-geographic code
    key = phone[:_COUNTRY_PREFIX]
    country = _countries.get(key)
    if country is None:
        try:
            number = phonenumbers.parse(phone, settings.PHONE_DEFAULT_REGION)
        except phonenumbers.NumberParseException:
            return ""
        country = phonenumbers.region_code_for_number(number) or ""
        if len(_countries) < 100_000:  # bounded: distinct prefixes are few
            _countries[key] = country
    return country if len(country) == 2 else ""


def channel_size(channel: str, body: str, phone: str) -> dict[str, Any]:
    """The `segments` and `country` fields of a message with `body` on `channel` to a patient
    with `phone`: SMS segments and the phone's country for SMS, 1 and "" otherwise."""
    if channel == Channel.SMS:
        return {"segments": max(1, sms_size(body).segments), "country": phone_country(phone)}
    return {"segments": 1, "country": ""}
