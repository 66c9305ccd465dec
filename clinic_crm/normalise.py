"""Canonical forms of contact data, used both for storage and for blind-index lookups."""

import unicodedata

import phonenumbers
from django.conf import settings


def phone_e164(raw: str) -> str | None:
    """`0912-345-678`, `+886 912 345 678` and `0912345678` all become `+886912345678`.

    Returns None when the text is not a valid phone number.
    """
    try:
        number = phonenumbers.parse(raw, settings.PHONE_DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_key(raw: str) -> str:
    """Lookup form of a phone number: E.164 when valid, else its bare digits."""
    return phone_e164(raw) or "".join(ch for ch in raw if ch.isdigit())


def email_key(raw: str) -> str:
    return raw.strip().lower()


def name_key(raw: str) -> str:
    """Full-width/half-width and spacing differences don't stop a name search."""
    return "".join(unicodedata.normalize("NFKC", raw).split()).casefold()


def identifier_key(raw: str) -> str:
    return "".join(unicodedata.normalize("NFKC", raw).split()).upper()
