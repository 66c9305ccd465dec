"""The Taiwan-mobile shortcut in clinic_crm.normalise answers exactly as phonenumbers does."""

import phonenumbers
import pytest

from clinic_crm import normalise


def reference(raw: str) -> tuple[str | None, bool, bool]:
    """(E.164, mobile, has extension) of `raw` by phonenumbers alone, as before the shortcut."""
    try:
        number = phonenumbers.parse(raw, "TW")
    except phonenumbers.NumberParseException:
        return None, False, bool(normalise.EXTENSION_MARK.search(raw))
    valid = phonenumbers.is_valid_number(number)
    extension = bool(normalise.EXTENSION_MARK.search(raw)) or bool(valid and number.extension)
    if not valid or extension:
        return None, False, extension
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164, phonenumbers.number_type(number) in normalise.SMS_CAPABLE, False


def spellings(prefix: str) -> list[str]:
    national = f"{prefix}1234567"[:10]  # 09xx + 6 digits
    bare = national[1:]
    return [
        national,
        f"{national[:4]}-{national[4:7]}-{national[7:]}",
        f"{national[:4]} {national[4:7]} {national[7:]}",
        f"+886{bare}",
        f"+886 {bare}",
        f"+886-{bare[:3]}-{bare[3:6]}-{bare[6:]}",
        f"+886 {bare[:3]} {bare[3:6]} {bare[6:]}",
        f"({national[:4]}){national[4:]}",
        f"{national}#12",
        f"{national[:-1]}",
        f"{national}0",
        f"886{bare}",
        f"0{national}",
    ]


@pytest.mark.parametrize("prefix", [f"09{n:02d}" for n in range(100)])
def test_the_shortcut_agrees_with_phonenumbers_on_every_09xx_prefix(settings, prefix):
    settings.PHONE_DEFAULT_REGION = "TW"
    for raw in spellings(prefix):
        e164, mobile, extension = reference(raw)
        assert normalise.phone_e164(raw) == e164, raw
        assert normalise.phone_is_mobile(raw) is mobile, raw
        assert normalise.phone_has_extension(raw) is extension, raw


def test_a_personal_number_is_not_taken_for_a_mobile(settings):
    settings.PHONE_DEFAULT_REGION = "TW"
    assert normalise._taiwan_mobile("0991234567") is None
    assert normalise.phone_is_mobile("0991234567") is False


def test_a_local_spelling_is_read_in_the_configured_region_only(settings):
    settings.PHONE_DEFAULT_REGION = "US"
    assert normalise._taiwan_mobile("0912345678") is None
    assert normalise._taiwan_mobile("+886912345678") == "+886912345678"
    assert normalise.phone_e164("0912345678") == reference_us("0912345678")


def reference_us(raw: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, "US")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
