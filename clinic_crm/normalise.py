"""Canonical forms of contact data, used both for storage and for blind-index lookups."""

import re
import unicodedata
from datetime import date

import phonenumbers
from django.conf import settings

# How people write an extension in Taiwan and abroad; phonenumbers reads only some of them.
EXTENSION_MARK = re.compile(r"#|ext|分機|轉", re.IGNORECASE)
SMS_CAPABLE = frozenset(
    {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
)
# A Taiwan mobile number as most records spell it (0912345678, 0912-345-678, +886 912 345 678):
# answered without phonenumbers, whose parse is most of an import's time per patient. Its
# metadata says the same (TW mobile: 9[0-8] and 7 digits); tests/test_normalise.py checks that
# both agree on every 09xx prefix and spelling.
_TW_MOBILE = re.compile(r"(?:0|\+886[ -]?)(9[0-8]\d)[ -]?(\d{3})[ -]?(\d{3})")


def _taiwan_mobile(raw: str) -> str | None:
    """E.164 of `raw` when it is plainly a Taiwan mobile number; else None (then ask
    phonenumbers)."""
    found = _TW_MOBILE.fullmatch(raw)
    if found is None or (raw[0] == "0" and settings.PHONE_DEFAULT_REGION != "TW"):
        return None
    return "+886" + "".join(found.groups())


def phone_has_extension(raw: str) -> bool:
    """Whether `raw` names an extension, which E.164 can't hold (it would be dropped)."""
    if EXTENSION_MARK.search(raw):
        return True
    if _taiwan_mobile(raw):
        return False
    number = _parse(raw)
    return bool(number is not None and number.extension)


def _parse(raw: str) -> phonenumbers.PhoneNumber | None:
    try:
        number = phonenumbers.parse(raw, settings.PHONE_DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        return None
    return number if phonenumbers.is_valid_number(number) else None


def phone_e164(raw: str) -> str | None:
    """`0912-345-678`, `+886 912 345 678` and `0912345678` all become `+886912345678`.

    Returns None when the text is not a valid phone number, or has an extension (E.164 has no
    room for one, and dropping it silently would call the wrong desk).
    """
    if fast := _taiwan_mobile(raw):
        return fast
    number = _parse(raw)
    if number is None or number.extension or EXTENSION_MARK.search(raw):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_is_mobile(raw: str) -> bool:
    """Whether `raw` is a valid number that can receive SMS: a Taiwan 09xx mobile or a foreign
    mobile. A landline or a 0800 number is a phone to call, never to text."""
    if _taiwan_mobile(raw):
        return True
    number = _parse(raw) if raw and phone_e164(raw) else None
    return number is not None and phonenumbers.number_type(number) in SMS_CAPABLE


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


# Joins the values of an index over several fields (clinic_crm.fields.BlindIndexField).
SOURCE_SEPARATOR = "\x1f"


def phone_tail_birth_key(raw: str) -> str:
    """Lookup form of a phone and a birth date joined by SOURCE_SEPARATOR: the phone's last four
    digits and the ISO date ("5678|1960-03-15"); "" when either is missing."""
    phone, _sep, born = raw.partition(SOURCE_SEPARATOR)
    digits = "".join(ch for ch in unicodedata.normalize("NFKC", phone) if ch in "0123456789")
    try:
        day = date.fromisoformat(born.strip())
    except ValueError:
        return ""
    if len(digits) < 4:
        return ""
    return f"{digits[-4:]}|{day.isoformat()}"
