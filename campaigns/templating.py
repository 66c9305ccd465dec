"""Message templates: the fixed context they may use, checking, rendering and sizing per channel.

Templates use Django template syntax limited to `{{ variable|filter }}`,
`{% if %}/{% elif %}/{% else %}/{% endif %}`, tracked links `{% link "https://…" %}` (a
literal http(s) URL, at most MAX_LINKS a text; campaigns.links) and `{% settings_link %}` (the
patient's own settings page, a short expiring link; campaigns.links, consent.patient_link;
the address and 19 more characters), over the variables in
COMMON_FIELDS and each kind's template_fields (campaigns.kinds), and the filters in FILTERS,
whose argument must be a literal. A template naming anything else is rejected when it is
saved, not discovered when a patient gets a blank: a variable argument (`|add:patient.name`)
or a padding filter (`|ljust:"5000000"`) would let a saved text leak other fields, fail on one
patient's data or grow to megabytes.

Rendering a message goes through render_message, which also holds each channel's size limit
and raises TemplateRenderError, whose text never contains patient data (safe to log).
"""

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import URLValidator
from django.template import Context, Engine, TemplateSyntaxError
from django.template.base import Lexer, Template, Token, TokenType, Variable, filter_re
from django.utils import timezone
from django.utils.html import escape, linebreaks
from django.utils.translation import gettext as _

from campaigns.links import literal, site_url
from patients.models import ContactChannel

# Variables every template may use, then those of each rule kind. A template names exactly
# root.field: nothing deeper, nothing else.
COMMON_FIELDS: dict[str, tuple[str, ...]] = {
    "patient": ("display_name", "name"),
    "clinic": ("name", "phone", "address", "line_account_name"),
}
ALLOWED_TAGS = frozenset({"if", "elif", "else", "endif", "link", "settings_link"})
IF_WORDS = frozenset({"and", "or", "not", "in", "is", "==", "!=", "<", ">", "<=", ">="})
# The filters a message may use, and whether each takes an argument (then a literal). Dates
# and times arrive formatted, so no date filters; padding and repeating filters could make one
# message megabytes; the shipped texts (migration 0002) use none at all.
FILTERS: dict[str, bool] = {"default": True, "upper": False, "lower": False}

# Source lengths a template may have when saved (the subject's is also its column's length).
BODY_MAX_CHARS = 2000
SUBJECT_MAX_CHARS = 150
# Rendered lengths per channel; SMS is limited by settings.SMS_MAX_SEGMENTS instead.
# LINE's text message limit, counted in UTF-16 code units, which is never more lenient than
# LINE's own count (an emoji outside the BMP counts as two here).
LINE_MAX_TEXT_UNITS = 5000
EMAIL_MAX_BODY_CHARS = 20_000
EMAIL_MAX_SUBJECT_CHARS = 200

CHANNELS = frozenset(ContactChannel.values)  # looked up for every text a pass renders

# Links: a few per text, each short enough to read aloud from a phone's screen.
MAX_LINKS = 3
LINK_MAX_CHARS = 300

_engine = Engine(autoescape=False, builtins=["campaigns.links"])


class TemplateProblem(Exception):
    """A template that can't be saved: bad syntax, a tag, filter or field we don't allow."""


class RenderFailure(enum.StrEnum):
    """Why a template gave no text for one message."""

    FAILED = "failed"  # the template raised on this context
    EMPTY = "empty"  # it rendered to nothing (blank text is refused by every provider)
    TOO_LONG = "too_long"  # over the channel's limit


class TemplateRenderError(Exception):
    """A template that gave no sendable text for one message.

    Its message names the failure and at most an exception's type, never a value from the
    context, so it is safe to log; it is raised with no exception chained for the same reason.
    `in_subject` says whether the e-mail subject, not the body, is the problem.
    """

    def __init__(self, failure: RenderFailure, message: str, *, in_subject: bool = False) -> None:
        super().__init__(message)
        self.failure = failure
        self.in_subject = in_subject


@dataclass(frozen=True)
class RenderedText:
    """One message's texts for one channel; `subject` is empty except for e-mail."""

    subject: str
    body: str


def allowed_fields(kind: str | None) -> dict[str, tuple[str, ...]]:
    """The variables a template of `kind` may use (every kind's when `kind` is None)."""
    from campaigns.kinds import KINDS  # kinds renders with this module's date formats

    fields = {root: list(names) for root, names in COMMON_FIELDS.items()}
    kinds = [KINDS[kind]] if kind in KINDS else [] if kind else list(KINDS.values())
    for each in kinds:
        for root, names in each.template_fields.items():
            fields.setdefault(root, []).extend(names)
    return {root: tuple(names) for root, names in fields.items()}


def check_template(source: str, *, kind: str | None, max_chars: int = BODY_MAX_CHARS) -> None:
    """Check a template's source before it is saved or previewed.

    Raises TemplateProblem, with a message for staff, unless `source` is at most `max_chars`
    long, compiles, and uses only the allowed tags, the allowed filters with literal arguments,
    and the fields allowed for `kind`.
    """
    if len(source) > max_chars:
        raise TemplateProblem(
            _("The text is %(count)d characters long; at most %(max)d are allowed.")
            % {"count": len(source), "max": max_chars}
        )
    allowed = allowed_fields(kind)
    try:
        variables = list(_variables(source))
        _engine.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(_("Template syntax error: %(error)s") % {"error": exc}) from exc
    _check_link_count(source)
    for variable in variables:
        if variable.literal is not None:
            continue
        lookups = variable.lookups or ()
        if len(lookups) != 2 or lookups[1] not in allowed.get(lookups[0], ()):
            known = ", ".join(f"{r}.{f}" for r, names in allowed.items() for f in names)
            raise TemplateProblem(
                _("Unknown field {{ %(field)s }}. Known: %(known)s.")
                % {"field": variable.var, "known": known}
            )


def _variables(source: str) -> Iterator[Variable]:
    """The variables `source` names. Raises TemplateProblem for a tag or filter not allowed and
    TemplateSyntaxError for an unclosed tag; leaves other syntax errors to the compiler."""
    for token in Lexer(source).tokenize():
        if token.token_type == TokenType.TEXT and (
            "{{" in token.contents or "{%" in token.contents
        ):
            # Django renders an unclosed tag as literal text; a patient would see the braces.
            raise TemplateSyntaxError(f"unclosed tag in {token.contents.strip()[:40]!r}")
        if token.token_type == TokenType.VAR:
            yield from _expression_variables(token.contents)
        elif token.token_type == TokenType.BLOCK:
            yield from _block_variables(token)


def _block_variables(token: Token) -> Iterator[Variable]:
    bits = token.split_contents()
    if not bits:
        return  # "{% %}": the compiler names it
    if bits[0] not in ALLOWED_TAGS:
        raise TemplateProblem(
            _("The tag {%% %(tag)s %%} is not allowed in messages.") % {"tag": bits[0]}
        )
    if bits[0] == "link":
        _check_link(bits)
        return
    if bits[0] == "settings_link":
        if len(bits) != 1:
            raise TemplateProblem(
                _("The settings link is written {% settings_link %}, with nothing inside.")
            )
        _check_site_url()
        return
    for bit in bits[1:]:
        if bit not in IF_WORDS:
            yield from _expression_variables(bit)


def _check_link(bits: list[str]) -> None:
    """A link is one literal http(s) URL of at most LINK_MAX_CHARS, and needs PUBLIC_BASE_URL."""
    if len(bits) != 2 or not literal(bits[1]):
        raise TemplateProblem(
            _('A link is written {% link "https://…" %}: one address in quotes, no fields.')
        )
    url = bits[1][1:-1]
    if len(url) > LINK_MAX_CHARS:
        raise TemplateProblem(
            _("The link is %(count)d characters long; at most %(max)d are allowed.")
            % {"count": len(url), "max": LINK_MAX_CHARS}
        )
    try:
        _url_validator(url)
    except ValidationError:
        raise TemplateProblem(
            _("The link must be a full web address starting with https:// or http://.")
        ) from None
    _check_site_url()


def _check_site_url() -> None:
    try:
        site_url()
    except ImproperlyConfigured:
        # Saved now, every message of the rule would fail to plan (or lead nowhere).
        raise TemplateProblem(
            _("Links can't be used until the server's PUBLIC_BASE_URL setting is set.")
        ) from None


_url_validator = URLValidator(schemes=["http", "https"])


def _check_link_count(source: str) -> None:
    count = sum(
        1
        for token in Lexer(source).tokenize()
        if token.token_type == TokenType.BLOCK and token.split_contents()[:1] == ["link"]
    )
    if count > MAX_LINKS:
        raise TemplateProblem(
            _("The text has %(count)d links; at most %(max)d are allowed.")
            % {"count": count, "max": MAX_LINKS}
        )


def _expression_variables(text: str) -> Iterator[Variable]:
    """The variable of one `value|filter:"arg"` expression (none for a literal).

    Walks it with the regular expression Django's own parser uses, so both read the same
    parts; where it stops making sense, the compiler reports the syntax error.
    """
    upto = 0
    for index, match in enumerate(filter_re.finditer(text)):
        if match.start() != upto:
            return
        upto = match.end()
        if index == 0 and (name := match["var"]) is not None:
            yield _variable(name)
        if (name := match["filter_name"]) is not None:
            _check_filter(name, constant=match["constant_arg"], variable=match["var_arg"])


def _variable(name: str) -> Variable:
    if name.startswith("_") or "._" in name:
        # Django refuses these too, but in English and without saying what to do.
        raise TemplateProblem(
            _("Names starting with an underscore are not allowed: %(name)s.") % {"name": name}
        )
    return Variable(name)


def _check_filter(name: str, *, constant: str | None, variable: str | None) -> None:
    takes_argument = FILTERS.get(name)
    if takes_argument is None:
        raise TemplateProblem(
            _("The filter |%(filter)s is not allowed in messages. Allowed: %(allowed)s.")
            % {"filter": name, "allowed": ", ".join(f"|{each}" for each in FILTERS)}
        )
    given = constant if constant is not None else variable
    if given is None and takes_argument:
        raise TemplateProblem(
            _('The filter |%(filter)s needs a value in quotes, e.g. |%(filter)s:"-".')
            % {"filter": name}
        )
    if given is not None and not takes_argument:
        raise TemplateProblem(_("The filter |%(filter)s takes no value.") % {"filter": name})
    if variable is not None and not _is_number(variable):
        # A field here would be rendered from the patient's data: a way around the field list.
        raise TemplateProblem(
            _("The value after |%(filter)s: must be text in quotes or a number, not %(value)s.")
            % {"filter": name, "value": variable}
        )


def _is_number(text: str) -> bool:
    try:
        literal = Variable(text).literal
    except TemplateSyntaxError:  # a name starting with "_"
        return False
    return isinstance(literal, int | float)


@lru_cache(maxsize=512)
def _compiled(source: str) -> Template:
    # A planning pass renders the same few templates tens of thousands of times; compiling
    # was most of its time. A compiled Template is safe to render again with a new Context.
    return _engine.from_string(source)


def render(source: str, context: Mapping[str, object]) -> str:
    """`source` rendered with `context`, without HTML escaping, stripped.

    Raises TemplateRenderError (safe to log) when the template fails, whatever the cause.
    """
    try:
        text = _compiled(source).render(Context(dict(context), autoescape=False)).strip()
    except Exception as exc:  # whatever the cause, one error that is safe to log
        failed = type(exc).__name__
    else:
        return text
    # Raised outside the except block so no exception is chained: the original's message can
    # hold a value from the context (a patient's name), and a logged traceback would show it.
    raise TemplateRenderError(
        RenderFailure.FAILED,
        _("the template failed on this data (%(error)s)") % {"error": failed},
    )


def render_message(
    *,
    subject: str,
    body: str,
    context: Mapping[str, object],
    channel: str,
) -> RenderedText:
    """The subject and body of one message for `channel`, within that channel's size limit.

    Raises TemplateRenderError (its message holds no patient data) when a template fails on
    `context`, the body renders empty, or a text is too long for the channel: SMS over
    settings.SMS_MAX_SEGMENTS segments, LINE over LINE_MAX_TEXT_UNITS UTF-16 units, e-mail over
    EMAIL_MAX_BODY_CHARS (body) or EMAIL_MAX_SUBJECT_CHARS or a line break (subject). Raises
    ValueError for a channel that is not a ContactChannel.
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    text = render(body, context)
    if not text:
        raise TemplateRenderError(RenderFailure.EMPTY, _("the text is empty"))
    if channel == ContactChannel.SMS:
        segments, most = sms_size(text).segments, int(settings.SMS_MAX_SEGMENTS)
        if segments > most:
            raise _too_long(
                _("too long for SMS (%(count)d segments, at most %(max)d)"), segments, most
            )
        return RenderedText(subject="", body=text)
    if channel == ContactChannel.LINE:
        units = utf16_units(text)
        if units > LINE_MAX_TEXT_UNITS:
            raise _too_long(
                _("too long for LINE (%(count)d characters, at most %(max)d)"),
                units,
                LINE_MAX_TEXT_UNITS,
            )
        return RenderedText(subject="", body=text)
    if len(text) > EMAIL_MAX_BODY_CHARS:
        raise _too_long(
            _("too long for e-mail (%(count)d characters, at most %(max)d)"),
            len(text),
            EMAIL_MAX_BODY_CHARS,
        )
    title = render(subject, context)
    if len(title) > EMAIL_MAX_SUBJECT_CHARS:
        raise _too_long(
            _("e-mail subject too long (%(count)d characters, at most %(max)d)"),
            len(title),
            EMAIL_MAX_SUBJECT_CHARS,
            in_subject=True,
        )
    if "\n" in title or "\r" in title:
        # A header can't hold a line break: the mail library would refuse it at send time.
        raise TemplateRenderError(
            RenderFailure.FAILED, _("the e-mail subject has a line break"), in_subject=True
        )
    return RenderedText(subject=title, body=text)


def _too_long(
    message: str, count: int, most: int, *, in_subject: bool = False
) -> TemplateRenderError:
    return TemplateRenderError(
        RenderFailure.TOO_LONG, message % {"count": count, "max": most}, in_subject=in_subject
    )


def utf16_units(text: str) -> int:
    """The length of `text` in UTF-16 code units (an emoji outside the BMP counts two)."""
    return len(text.encode("utf-16-le")) // 2


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
        units = utf16_units(text)
        single, multi, encoding = 70, 67, "UCS-2"
    segments = 1 if units <= single else -(-units // multi)
    return SmsSize(encoding, units, segments if units else 0)
