"""Message templates: the fixed context they may use, checking, rendering and SMS sizing.

Templates use Django template syntax limited to `{{ variable|filter }}` and
`{% if %}/{% elif %}/{% else %}/{% endif %}`, over the variables in CONTEXT_FIELDS. A template
naming anything else is rejected when it is saved, not discovered when a patient gets a blank.
"""

from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache

from django.template import Context, Engine, TemplateSyntaxError
from django.template.base import FilterExpression, Lexer, Parser, TokenType, Variable
from django.utils import timezone
from django.utils.html import escape, linebreaks
from django.utils.translation import gettext as _

# Variables every template may use, then those of each rule kind.
COMMON_FIELDS = {
    "patient": ("display_name", "name"),
    "clinic": ("name", "phone", "address", "line_account_name"),
}
KIND_FIELDS = {
    "birthday": {"patient": ("age",)},
    "postop": {"procedure": ("type", "discharge_date", "days_since")},
    "dose": {"prescription": ("drug", "dose", "dose_time")},
    "refill_opens": {"prescription": ("drug", "refill_number", "opens_on", "closes_on")},
    "refill_closes": {"prescription": ("drug", "refill_number", "opens_on", "closes_on")},
    "appointment": {
        "appointment": ("date", "time", "department", "doctor", "location", "bring_notes")
    },
    "recall": {"visit": ("last_date", "department")},
}
ALLOWED_TAGS = {"if", "elif", "else", "endif"}
IF_WORDS = {"and", "or", "not", "in", "is", "==", "!=", "<", ">", "<=", ">="}

_engine = Engine(autoescape=False)


class TemplateProblem(Exception):
    """A template that can't be saved: bad syntax, a tag we don't allow, or an unknown field."""


def allowed_fields(kind: str | None) -> dict[str, tuple[str, ...]]:
    """The variables a template of `kind` may use (every kind's when `kind` is None)."""
    fields = {root: list(names) for root, names in COMMON_FIELDS.items()}
    kinds = [kind] if kind else list(KIND_FIELDS)
    for each in kinds:
        for root, names in KIND_FIELDS.get(each, {}).items():
            fields.setdefault(root, []).extend(names)
    return {root: tuple(names) for root, names in fields.items()}


def _variables(source: str):
    parser = Parser([], builtins=_engine.template_builtins)
    for token in Lexer(source).tokenize():
        if token.token_type == TokenType.TEXT and (
            "{{" in token.contents or "{%" in token.contents
        ):
            # Django renders an unclosed tag as literal text; a patient would see the braces.
            raise TemplateSyntaxError(f"unclosed tag in {token.contents.strip()[:40]!r}")
        if token.token_type == TokenType.VAR:
            yield FilterExpression(token.contents, parser)
        elif token.token_type == TokenType.BLOCK:
            bits = token.split_contents()
            if bits[0] not in ALLOWED_TAGS:
                raise TemplateProblem(
                    _("The tag {%% %(tag)s %%} is not allowed in messages.") % {"tag": bits[0]}
                )
            for bit in bits[1:]:
                if bit not in IF_WORDS:
                    yield FilterExpression(bit, parser)


def check_template(source: str, *, kind: str | None) -> None:
    """Raise TemplateProblem unless `source` compiles and uses only fields allowed for `kind`."""
    allowed = allowed_fields(kind)
    try:
        expressions = list(_variables(source))
        _engine.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(_("Template syntax error: %(error)s") % {"error": exc}) from exc
    for expression in expressions:
        if not isinstance(expression.var, Variable) or expression.var.literal is not None:
            continue
        lookups = expression.var.lookups
        root, field = lookups[0], ".".join(lookups[1:])
        if root not in allowed or field not in allowed[root]:
            known = ", ".join(f"{r}.{f}" for r, names in allowed.items() for f in names)
            raise TemplateProblem(
                _("Unknown field {{ %(field)s }}. Known: %(known)s.")
                % {"field": expression.var.var, "known": known}
            )


@lru_cache(maxsize=512)
def _compiled(source: str):
    # A planning pass renders the same few templates tens of thousands of times; compiling
    # was most of its time. A compiled Template is safe to render again with a new Context.
    return _engine.from_string(source)


def render(source: str, context: dict) -> str:
    return _compiled(source).render(Context(context, autoescape=False)).strip()


def render_html(text: str) -> str:
    """The HTML part of an e-mail: the rendered text, escaped, with its line breaks."""
    return linebreaks(escape(text))


WEEKDAYS_ZH = "一二三四五六日"


def format_date(day: date, language: str) -> str:
    if language == "en":
        return day.strftime("%a %-d %b %Y")
    return f"{day.month}月{day.day}日（{WEEKDAYS_ZH[day.weekday()]}）"


def display_name(name: str, sex: str, language: str) -> str:
    """How a message addresses the patient: 林小姐 / 林先生, or the full name."""
    if language == "en" or not name or sex not in ("F", "M"):
        return name
    return name[0] + ("小姐" if sex == "F" else "先生")


def local_time(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%H:%M")


# --- SMS length -------------------------------------------------------------------------------

GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€\f")


@dataclass(frozen=True)
class SmsSize:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2
    segments: int


def sms_size(text: str) -> SmsSize:
    """How many SMS segments `text` takes: GSM-7 160 (153 when split), UCS-2 70 (67).

    Any character outside GSM-7, such as Chinese, makes the whole message UCS-2.
    """
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text):
        units = sum(2 if ch in GSM7_EXTENDED else 1 for ch in text)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi, encoding = 70, 67, "UCS-2"
    segments = 1 if units <= single else -(-units // multi)
    return SmsSize(encoding, units, segments if units else 0)
