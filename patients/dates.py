"""Dates as the front desk types them: Gregorian or ROC (民國), with or without separators."""

import re
import unicodedata
from datetime import date

# Taiwan's ROC calendar counts years from 1912 (民國元年): ROC 116 is 2027, ROC 49 is 1960.
ROC_OFFSET = 1911
_SEPARATED = re.compile(r"^(\d{1,4})[-/.年](\d{1,2})[-/.月](\d{1,2})日?$")
_COMPACT_GREGORIAN = re.compile(r"^(\d{4})(\d{2})(\d{2})$")  # 20270101
_COMPACT_ROC = re.compile(r"^(\d{2,3})(\d{2})(\d{2})$")  # 1160101, 490315 (written 0490315 too)


def day_parse(text: str) -> date | None:
    """`2027-01-01`, `2027/1/1`, `20270101`, ROC `116/01/01`, `49/3/15`, `1160101`; else None.

    A year of up to three digits is an ROC year; four digits, Gregorian.
    """
    text = unicodedata.normalize("NFKC", text).strip()
    text = text.removeprefix("民國").strip()
    match = _SEPARATED.match(text) or _COMPACT_GREGORIAN.match(text)
    roc = False
    if match:
        roc = len(match.group(1)) < 4
    else:
        match = _COMPACT_ROC.match(text)
        roc = True
    if not match:
        return None
    year, month, day = (int(part) for part in match.groups())
    if roc:
        year += ROC_OFFSET
    try:
        return date(year, month, day)
    except ValueError:
        return None
