"""One parser per kind of cell: text as a HIS exports it → the value we store, or a reason.

Every parser takes the stripped cell text (never empty: empty cells are handled before) and
returns the value, or raises CellError with a zh-Hant reason for the clerk.
"""

import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import date, time
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from clinic_crm.normalise import identifier_key, phone_e164, phone_has_extension
from clinic_crm.validators import EARLIEST_BIRTH_DATE, taiwan_id_checksum_ok
from consent.models import Action, Channel, Purpose
from patients.dates import day_parse
from patients.models import Appointment, Frequency, Patient


class CellError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# Unicode's control characters (category Cc), as clinic_crm.validators refuses them; a regex
# scans a cell in C, which matters at a few hundred thousand rows.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
CONTROL_BUT_LINE_BREAKS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def check_controls(value: str, *, multiline: bool = False) -> None:
    """Refuse NUL and other control characters (line breaks too, unless `multiline`)."""
    if (CONTROL_BUT_LINE_BREAKS if multiline else CONTROL).search(value):
        raise CellError("含有控制字元（例如 NUL 或換行），請刪除後再匯入。")


def text(value: str, max_length: int = 200) -> str:
    check_controls(value)
    if len(value) > max_length:
        raise CellError(f"超過 {max_length} 個字。")
    # A formula (=cmd|' /C calc'!A0) is kept as the text it is: nothing here evaluates it, and
    # every export neutralises it (clinic_crm.exports.cell_neutralise).
    return value


def multiline(value: str) -> str:
    check_controls(value, multiline=True)
    if len(value) > 5000:
        raise CellError("超過 5,000 個字。")
    return value


def name(value: str) -> str:
    return text(value, 100)


def identifier(value: str) -> str:
    check_controls(value)
    key = identifier_key(value)
    if len(key) > 64:
        raise CellError("編號超過 64 個字。")
    return key


CHART_NO = re.compile(r"^[A-Z0-9-]{1,20}$")


def chart_no(value: str) -> str:
    check_controls(value)
    key = identifier_key(value)
    if not CHART_NO.match(key):
        raise CellError("病歷號只能有英文字母、數字與連字號，最多 20 個字。")
    return key


def date_cell(value: str) -> date:
    check_controls(value)
    # A date with a time (an Excel date cell, "2024-05-01 00:00:00") is that date.
    day = day_parse(value.split(" ")[0].split("T")[0]) if " " in value or "T" in value else None
    day = day or day_parse(value)
    if day is None:
        raise CellError("無法判讀日期：請寫成 113/05/01、1130501、民國113年5月1日 或 2024-05-01。")
    return day


def birth_date(value: str) -> date:
    day = date_cell(value)
    # The upper bound (today) is checked against the run's `now` by the importer.
    if day < EARLIEST_BIRTH_DATE:
        raise CellError("出生日期須在 1900-01-01 之後。")
    return day


TIME = re.compile(r"^(\d{1,2})[:：時]?(\d{2})(?:[:：](\d{2}))?分?$")


def time_cell(value: str) -> time:
    check_controls(value)
    text_ = unicodedata.normalize("NFKC", value).strip()
    afternoon = text_.startswith(("下午", "PM", "pm"))
    text_ = text_.removeprefix("上午").removeprefix("下午").strip()
    match = TIME.match(text_)
    if not match:
        raise CellError("無法判讀時間：請寫成 09:30 或 0930。")
    hour, minute = int(match.group(1)), int(match.group(2))
    if afternoon and hour < 12:
        hour += 12
    if hour > 23 or minute > 59:
        raise CellError("無法判讀時間：請寫成 09:30 或 0930。")
    return time(hour, minute)


def datetime_cell(value: str) -> tuple[date, time | None]:
    """A date with an optional time ("113/05/01 09:30", "2024-05-01T09:30"); the importer
    makes it aware in the clinic's zone."""
    check_controls(value)
    text_ = unicodedata.normalize("NFKC", value).strip().replace("T", " ")
    day_part, _sep, time_part = text_.partition(" ")
    day = day_parse(day_part)
    if day is None:
        raise CellError("無法判讀日期時間：請寫成 113/05/01 09:30 或 2024-05-01 09:30。")
    return day, time_cell(time_part.strip()) if time_part.strip() else None


SEXES = {
    "男": Patient.Sex.MALE,
    "m": Patient.Sex.MALE,
    "male": Patient.Sex.MALE,
    "1": Patient.Sex.MALE,
    "女": Patient.Sex.FEMALE,
    "f": Patient.Sex.FEMALE,
    "female": Patient.Sex.FEMALE,
    "2": Patient.Sex.FEMALE,
    "其他": Patient.Sex.OTHER,
    "o": Patient.Sex.OTHER,
    "不詳": Patient.Sex.UNKNOWN,
    "u": Patient.Sex.UNKNOWN,
}


def sex(value: str) -> str:
    found = SEXES.get(unicodedata.normalize("NFKC", value).strip().casefold())
    if found is None:
        raise CellError("性別請寫 男、女、M 或 F。")
    return found


def phone(value: str) -> str:
    check_controls(value)
    if phone_has_extension(value):
        raise CellError("電話不能有分機：請把分機寫在備註。")
    e164 = phone_e164(value)
    if e164 is None:
        raise CellError("不是有效的電話號碼。")
    return e164


def email(value: str) -> str:
    check_controls(value)
    try:
        validate_email(value)
    except ValidationError:
        raise CellError("不是有效的電子郵件地址。") from None
    return value


def national_id(value: str) -> str:
    check_controls(value)
    key = identifier_key(value)
    if not taiwan_id_checksum_ok(key):
        raise CellError("身分證號或居留證號格式或檢查碼不正確。")
    return key


LINE_USER_ID = re.compile(r"^U[0-9a-f]{32}$")


def line_user_id(value: str) -> str:
    if not LINE_USER_ID.match(value):
        raise CellError("LINE 使用者 ID 應為 U 加 32 個十六進位字元。")
    return value


ICD10 = re.compile(r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")


def diagnosis_codes(value: str) -> str:
    check_controls(value)
    codes = [code.strip().upper() for code in re.split(r"[,，、;；\s]+", value) if code.strip()]
    if not codes or not all(ICD10.match(code) for code in codes):
        raise CellError("診斷碼請寫 ICD-10 代碼，以逗號分隔，例如 I10, E11.9。")
    joined = ", ".join(codes)
    if len(joined) > 200:
        raise CellError("診斷碼超過 200 個字。")
    return joined


# HIS frequency codes → the frequencies reminders know. An interval code is the daily count it
# amounts to (Q8H is three doses a day): dose times then come from the frequency's usual times.
FREQUENCIES = {
    "QD": Frequency.QD,
    "QDAM": Frequency.QD,
    "QAM": Frequency.QD,
    "Q24H": Frequency.QD,
    "DAILY": Frequency.QD,
    "BID": Frequency.BID,
    "Q12H": Frequency.BID,
    "TID": Frequency.TID,
    "Q8H": Frequency.TID,
    "QID": Frequency.QID,
    "Q6H": Frequency.QID,
    "HS": Frequency.HS,
    "QN": Frequency.HS,
    "QHS": Frequency.HS,
    "PRN": Frequency.PRN,
    "每日一次": Frequency.QD,
    "一天一次": Frequency.QD,
    "每日兩次": Frequency.BID,
    "一天兩次": Frequency.BID,
    "每日三次": Frequency.TID,
    "一天三次": Frequency.TID,
    "每日四次": Frequency.QID,
    "一天四次": Frequency.QID,
    "睡前": Frequency.HS,
    "需要時": Frequency.PRN,
}


def frequency(value: str) -> str:
    key = "".join(unicodedata.normalize("NFKC", value).split()).upper().replace(".", "")
    found = FREQUENCIES.get(key)
    if found is None:
        raise CellError("無法判讀用藥頻率：請用 QD、BID、TID、QID、HS、Q8H、Q12H、PRN 等代碼。")
    return found


def _whole_number(value: str, low: int, high: int, what: str) -> int:
    text_ = unicodedata.normalize("NFKC", value).strip().removesuffix("天").removesuffix("次")
    try:
        number = int(float(text_)) if re.fullmatch(r"\d+(\.0+)?", text_) else int(text_)
    except ValueError:
        raise CellError(f"{what}須為 {low} 到 {high} 的整數。") from None
    if not low <= number <= high:
        raise CellError(f"{what}須為 {low} 到 {high} 的整數。")
    return number


def days_supplied(value: str) -> int:
    return _whole_number(value, 1, 90, "給藥天數")


def refills(value: str) -> int:
    return _whole_number(value, 0, 3, "慢箋可調劑次數")


SLUG = re.compile(r"^[-a-zA-Z0-9_]{1,40}$")


def slug(value: str) -> str:
    if not SLUG.match(value):
        raise CellError("照護計畫代碼只能有英文字母、數字、連字號與底線，最多 40 個字。")
    return value


CANCELLED_WORDS = {"取消", "已取消", "cancelled", "canceled", "cancel", "x", "退掛"}
BOOKED_WORDS = {"預約", "已預約", "booked", "掛號", "已掛號", "正常", "ok"}


def appointment_status(value: str) -> str:
    key = unicodedata.normalize("NFKC", value).strip().casefold()
    if key in CANCELLED_WORDS:
        return Appointment.Status.CANCELLED
    if key in BOOKED_WORDS:
        return Appointment.Status.BOOKED
    raise CellError("預約狀態請寫「預約」或「取消」。")


PURPOSES = {
    "care": Purpose.CARE,
    "照護": Purpose.CARE,
    "醫療照護": Purpose.CARE,
    "就醫提醒": Purpose.CARE,
    "relationship": Purpose.RELATIONSHIP,
    "關懷": Purpose.RELATIONSHIP,
    "行銷": Purpose.RELATIONSHIP,
    "生日祝福": Purpose.RELATIONSHIP,
}
CHANNELS = {
    "sms": Channel.SMS,
    "簡訊": Channel.SMS,
    "line": Channel.LINE,
    "email": Channel.EMAIL,
    "e-mail": Channel.EMAIL,
    "電子郵件": Channel.EMAIL,
}
ACTIONS = {
    "grant": Action.GRANT,
    "同意": Action.GRANT,
    "y": Action.GRANT,
    "yes": Action.GRANT,
    "withdraw": Action.WITHDRAW,
    "撤回": Action.WITHDRAW,
    "不同意": Action.WITHDRAW,
    "n": Action.WITHDRAW,
    "no": Action.WITHDRAW,
}


def _several(value: str, table: Mapping[str, str], reason: str) -> tuple[str, ...]:
    parts = [p.strip().casefold() for p in re.split(r"[,，、;；/]+", value) if p.strip()]
    found = [table.get(p) for p in parts]
    if not found or any(item is None for item in found):
        raise CellError(reason)
    return tuple(dict.fromkeys(item for item in found if item))


def consent_purposes(value: str) -> tuple[str, ...]:
    return _several(value, PURPOSES, "同意目的請寫「照護」或「關懷」（可用頓號分隔）。")


def consent_channels(value: str) -> tuple[str, ...]:
    return _several(value, CHANNELS, "同意管道請寫 簡訊、LINE 或 電子郵件（可用頓號分隔）。")


def consent_action(value: str) -> str:
    found = ACTIONS.get(unicodedata.normalize("NFKC", value).strip().casefold())
    if found is None:
        raise CellError("請寫「同意」或「撤回」。")
    return found


PARSERS: dict[str, Callable[[str], Any]] = {
    "text": text,
    "multiline": multiline,
    "name": name,
    "identifier": identifier,
    "chart_no": chart_no,
    "date": date_cell,
    "birth_date": birth_date,
    "time": time_cell,
    "datetime": datetime_cell,
    "sex": sex,
    "phone": phone,
    "email": email,
    "national_id": national_id,
    "line_user_id": line_user_id,
    "diagnosis_codes": diagnosis_codes,
    "frequency": frequency,
    "days_supplied": days_supplied,
    "refills": refills,
    "slug": slug,
    "appointment_status": appointment_status,
    "consent_purposes": consent_purposes,
    "consent_channels": consent_channels,
    "consent_action": consent_action,
}


def mask(value: str) -> str:
    """A cell as an error may show it: enough for the clerk to find it, never the whole value
    (a national ID, a phone or a name must not end up in a report or a log)."""
    value = "".join(ch if unicodedata.category(ch) != "Cc" else "␀" for ch in value[:200])
    if len(value) <= 2:
        return "*" * len(value)
    keep = 1 if len(value) <= 6 else 2
    return value[:keep] + "*" * min(len(value) - keep * 2, 8) + value[-keep:]
