"""Input checks shared by every model, so the admin, forms and imports all give the same message.

Messages are in the staff's language (zh-Hant): they are shown next to the field.
"""

import datetime as dt
import re
import unicodedata

from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

# Line breaks a multi-line text may keep; every other control character is refused there too.
MULTILINE_ALLOWED = frozenset("\n\r\t")
EARLIEST_BIRTH_DATE = dt.date(1900, 1, 1)


def _control_characters(value: str, allowed: frozenset[str] = frozenset()) -> bool:
    return any(unicodedata.category(ch) == "Cc" and ch not in allowed for ch in value)


def validate_single_line(value: str) -> None:
    """Refuse CR, LF, NUL, TAB and every other control character in a one-line field.

    A line break in a name or a phone number ends up in an SMS header, a CSV row or a log line.
    """
    if isinstance(value, str) and _control_characters(value):
        raise ValidationError(
            _("Remove line breaks and other control characters: this field is a single line."),
            code="control_characters",
        )


def validate_multiline(value: str) -> None:
    """Refuse NUL and other control characters in a multi-line text; line breaks stay."""
    if isinstance(value, str) and _control_characters(value, MULTILINE_ALLOWED):
        raise ValidationError(
            _("Remove control characters such as NUL from this text."),
            code="control_characters",
        )


def validate_birth_date(value: dt.date) -> None:
    """A birth date between 1900-01-01 and today in the clinic's zone."""
    if value is None:
        return
    if not EARLIEST_BIRTH_DATE <= value <= timezone.localdate():
        raise ValidationError(
            _("Enter a birth date between 1900-01-01 and today."), code="birth_date_range"
        )


# The first letter stands for a number from 10 to 35 (not alphabetical: I, O, W, Z are late).
ID_LETTER_VALUES = {letter: 10 + i for i, letter in enumerate("ABCDEFGHJKLMNPQRSTUVXYWZIO")}
TAIWAN_ID = re.compile(r"^[A-Z][12ABCD89][0-9]{8}$")
ID_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 1)


def taiwan_id_checksum_ok(value: str) -> bool:
    """Checksum of a national ID (A123456789), a new resident certificate number (A800000014)
    or an old one with a second letter A-D (AC01234567)."""
    if not TAIWAN_ID.match(value):
        return False
    area = ID_LETTER_VALUES[value[0]]
    second = value[1]
    # Old resident certificates: the second letter counts as the last digit of its number.
    second_digit = ID_LETTER_VALUES[second] % 10 if second.isalpha() else int(second)
    digits = [second_digit, *(int(ch) for ch in value[2:9])]
    total = (
        area // 10 + (area % 10) * 9 + sum(d * w for d, w in zip(digits, ID_WEIGHTS, strict=True))
    )
    return (total + int(value[9])) % 10 == 0


def validate_taiwan_id(value: str) -> None:
    """A Taiwan national ID or resident certificate number: format and check digit."""
    if not value:
        return
    if not TAIWAN_ID.match(value):
        raise ValidationError(
            _("Enter a Taiwan ID or resident certificate number, for example A123456789."),
            code="invalid_national_id",
        )
    if not taiwan_id_checksum_ok(value):
        raise ValidationError(
            _("This ID number's check digit is wrong: please compare it with the card."),
            code="national_id_checksum",
        )
