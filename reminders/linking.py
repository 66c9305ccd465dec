"""Linking a patient's LINE account in one scan.

At the desk, staff make a one-time code for the patient and pick the purposes the patient
agrees to (line_link_code_create). The slip shows the code, a QR code and the same link as
text: LINE's oaMessage link, which opens a chat with the clinic's official account with
"綁定代碼 ABC234" ready to send. When that message arrives by webhook, the code binds the
sender's LINE user id to the patient and grants the purposes on LINE, with the event as the
evidence (line_link_redeem, called from reminders.replies inside the event's transaction).

Codes are six characters from an alphabet without look-alikes (no 0/O, 1/I/L), always with a
letter and a digit, so a word in a message ("THANKS") is never taken for one. They are single
use, expire after LINE_LINK_CODE_HOURS, are bound to their patient, and only a keyed hash is
stored. A LINE user who sends MAX_FAILURES wrong codes in FAILURE_WINDOW gets a polite answer
and no lookup until the window has passed.
"""

import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import quote

import segno
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import translation
from django.utils.translation import gettext as _

from campaigns.costs import channel_size
from campaigns.models import Rule, RuleKind, SkipReason
from clinic_crm import crypto
from consent.models import Action, Channel, ConsentState, Purpose, Source
from consent.selectors import may_contact
from consent.services import consent_record
from patients.models import ClinicProfile, Patient
from reminders.channels.base import channel_configured
from reminders.models import LineAccountState, LineLinkCode, LineLinkFailure, OutboxMessage

log = logging.getLogger(__name__)

ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 6
MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(hours=1)
# A code comes alone or in a sentence; LINE allows 5,000 characters, and a text that long is
# not someone sending their code: it is not searched.
MAX_SCAN_CHARS = 500
_TOKEN = re.compile(r"[A-Z0-9]+")
_LINE_USER_ID = re.compile(r"U[0-9a-f]{32}")  # patients.models.line_user_id_validator
HASH_DOMAIN = "line_link_code"


class LinkOutcome(StrEnum):
    LINKED = "linked"
    WRONG_CODE = "wrong link code"
    RATE_LIMITED = "too many wrong link codes"


def code_new() -> str:
    """A fresh random code: six characters of ALPHABET with at least one letter and a digit."""
    while True:
        code = "".join(secrets.choice(ALPHABET) for _i in range(CODE_LENGTH))
        if _code_shaped(code):
            return code


def _code_shaped(token: str) -> bool:
    return (
        len(token) == CODE_LENGTH
        and all(char in ALPHABET for char in token)
        and any(char.isdigit() for char in token)
        and any(char.isalpha() for char in token)
    )


def code_hash(code: str) -> str:
    """The keyed hash a code is stored and looked up by."""
    return crypto.blind_index(HASH_DOMAIN, code.upper())


def code_candidates(text: str) -> list[str]:
    """The link codes `text` may hold, alone or in a sentence ("我的代碼是 ab12cd", full-width
    letters from a Chinese keyboard too); [] when it holds none or is too long to be one."""
    if not text or len(text) > MAX_SCAN_CHARS:
        return []
    normalised = unicodedata.normalize("NFKC", text).upper()
    found = [token for token in _TOKEN.findall(normalised) if _code_shaped(token)]
    # A message that is only the code, typed as the slip spaces it out ("AB3 4CD", "A-B-3…").
    compact = re.sub(r"[\s\-]", "", normalised)
    if not found and _code_shaped(compact):
        found = [compact]
    return list(dict.fromkeys(found))[:3]


def _purposes_checked(purposes: list[str]) -> list[str]:
    chosen = list(dict.fromkeys(purposes))
    if not chosen:
        raise ValueError("choose at least one purpose")
    unknown = [p for p in chosen if p not in Purpose.values]
    if unknown:
        raise ValueError(f"unknown purpose: {unknown[0]!r}")
    return chosen


@transaction.atomic
def line_link_code_create(
    *,
    patient: Patient,
    purposes: list[str],
    created_by: User | None,
    now: datetime,
) -> tuple[LineLinkCode, str]:
    """Make a one-time LINE link code for `patient`, granting `purposes` on LINE when it is
    used; earlier unused codes of the patient stop working. Returns the row and the plain code
    (shown once, never stored). Raises ValueError for an erased patient, no purpose or an
    unknown one."""
    if patient.erased_at is not None:
        raise ValueError("the patient's contact data is erased")
    chosen = _purposes_checked(purposes)
    LineLinkCode.objects.filter(
        patient=patient, used_at__isnull=True, revoked_at__isnull=True
    ).update(revoked_at=now)
    expires_at = now + timedelta(hours=settings.LINE_LINK_CODE_HOURS)
    for _try in range(5):
        code = code_new()
        try:
            with transaction.atomic():
                row = LineLinkCode.objects.create(
                    patient=patient,
                    code_hash=code_hash(code),
                    purposes=chosen,
                    created_by=created_by,
                    created_at=now,
                    expires_at=expires_at,
                )
        except IntegrityError:
            continue  # the same code was drawn before (about 1 in 800 million)
        return row, code
    raise RuntimeError("could not draw an unused link code")


def line_link_code_check(*, patient: Patient, code: str, now: datetime) -> LineLinkCode | None:
    """The usable code row of `patient` whose code is `code`, or None: what the slip page
    checks before it sends a code it was handed back by the staff member's browser."""
    return LineLinkCode.objects.filter(
        patient=patient,
        code_hash=code_hash(code),
        used_at__isnull=True,
        revoked_at__isnull=True,
        expires_at__gt=now,
    ).first()


def link_text(code: str) -> str:
    """What the patient's LINE has ready to send: the code in a short sentence."""
    with translation.override("zh-hant"):
        return _("LINE link code %(code)s") % {"code": code}


def oa_message_url(basic_id: str, text: str) -> str:
    """LINE's link that opens a chat with the official account `basic_id` (@ included) with
    `text` ready to send: https://line.me/R/oaMessage/{ID}/?{text}, both percent-encoded."""
    return f"https://line.me/R/oaMessage/{quote(basic_id, safe='')}/?{quote(text, safe='')}"


def qr_svg(url: str, *, title: str = "") -> str:
    """The QR code of `url` as an inline <svg> element (drawn here: no CDN, no script)."""
    return str(segno.make(url, error="m").svg_inline(scale=5, border=2, title=title or None))


@dataclass(frozen=True)
class LinkSlip:
    """What the desk shows and prints for one code."""

    code: str
    url: str
    qr_svg: str
    clinic_name: str
    expires_at: datetime


def link_slip(*, code: str, row: LineLinkCode, profile: ClinicProfile) -> LinkSlip | None:
    """The slip for `code`, or None when the clinic profile has no LINE basic ID (there is
    no link to make then: the page says so)."""
    if not profile.line_basic_id:
        return None
    url = oa_message_url(profile.line_basic_id, link_text(code))
    return LinkSlip(
        code=code,
        url=url,
        qr_svg=qr_svg(url, title=profile.line_basic_id),
        clinic_name=profile.name,
        expires_at=row.expires_at,
    )


class SmsRefused(Exception):
    """The link can't go by SMS; the message says why, in the clinic's language."""


# The link SMS is a care message: the patient's SMS consent for care is what lets it go.
LINK_SMS_PURPOSE = Purpose.CARE


def _link_rule() -> Rule:
    rule, _created = Rule.objects.get_or_create(
        kind=RuleKind.LINE_LINK,
        defaults={
            "name": "LINE 綁定連結",
            "purpose": LINK_SMS_PURPOSE,
            "channel_order": [Channel.SMS],
            "offsets": [0],
            "priority": 10,
        },
    )
    return rule


@transaction.atomic
def line_link_sms_queue(
    *, row: LineLinkCode, code: str, profile: ClinicProfile, now: datetime
) -> OutboxMessage:
    """Queue an SMS with the LINE link for `code` (of `row`) to its patient's phone, through
    the outbox: the gate checks consent and the send window again before it goes, and drops it
    once the code is used or replaced. Raises SmsRefused when the patient's SMS consent for
    care or a mobile number is missing, SMS is off here, the clinic has no LINE basic ID, or
    this code was sent already."""
    patient = row.patient
    decision = may_contact(patient=patient, purpose=LINK_SMS_PURPOSE, channel=Channel.SMS)
    if not decision:
        reason = SkipReason(decision.reason).label if decision.reason in SkipReason.values else ""
        raise SmsRefused(
            _("Not sent by SMS: %(reason)s (SMS for care reminders).") % {"reason": reason}
        )
    if not channel_configured(Channel.SMS):
        raise SmsRefused(_("Not sent: SMS is not configured here."))
    if not profile.line_basic_id:
        raise SmsRefused(_("Not sent: the clinic profile has no LINE basic ID."))
    url = oa_message_url(profile.line_basic_id, link_text(code))
    with translation.override(patient.preferred_language or "zh-hant"):
        body = _(
            "%(clinic)s: to get your reminders on LINE, open this link and send the code "
            "%(code)s: %(url)s"
        ) % {"clinic": profile.name, "code": code, "url": url}
    try:
        with transaction.atomic():
            return OutboxMessage.objects.create(
                rule=_link_rule(),
                patient=patient,
                occurrence_key=f"line_link:{row.pk}",
                purpose=LINK_SMS_PURPOSE,
                channel=Channel.SMS,
                channels_left=[],
                due_at=now,
                next_attempt_at=now,
                expires_at=row.expires_at,
                body=body,
                priority=10,
                **channel_size(Channel.SMS, body, patient.phone),
            )
    except IntegrityError:
        raise SmsRefused(_("This code was already sent by SMS.")) from None


def _sender_key(sender: str) -> str:
    return str(Patient.index_of("line_user_id", sender) or "")


def line_link_redeem(
    *, sender: str, candidates: list[str], event_id: str, now: datetime
) -> LinkOutcome:
    """Link the LINE user `sender` to the patient of whichever of `candidates` is a usable
    code: store the id, grant the code's purposes on LINE with the event as evidence, and use
    the code up. Call it in the transaction applying the event (reminders.replies). Never
    raises for a bad code: counts it, and refuses to look up more after MAX_FAILURES."""
    key = _sender_key(sender)
    recent = LineLinkFailure.objects.filter(sender_bidx=key, at__gt=now - FAILURE_WINDOW)
    if not key or not _LINE_USER_ID.fullmatch(sender) or recent.count() >= MAX_FAILURES:
        return LinkOutcome.RATE_LIMITED if key else LinkOutcome.WRONG_CODE
    row = (
        LineLinkCode.objects.filter(
            code_hash__in=[code_hash(code) for code in candidates],
            used_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=now,
            patient__erased_at__isnull=True,
        )
        .select_related("patient")
        .first()
    )
    # One UPDATE that re-checks: of two events carrying the same code, exactly one wins it.
    if row is None or not LineLinkCode.objects.filter(pk=row.pk, used_at__isnull=True).update(
        used_at=now, used_event_id=event_id
    ):
        LineLinkFailure.objects.create(sender_bidx=key, at=now)
        return LinkOutcome.WRONG_CODE
    patient = row.patient
    patient.line_user_id = sender
    patient.save(update_fields=["line_user_id", "line_user_id_bidx", "updated_at"])
    for purpose in row.purposes:
        consent_record(
            patient=patient,
            purpose=purpose,
            channel=Channel.LINE,
            action=Action.GRANT,
            source=Source.LINE,
            recorded_by=row.created_by,
            evidence=f"LINE webhookEventId {event_id}",
            at=now,
        )
    LineAccountState.objects.update_or_create(
        patient=patient, defaults={"linked_at": now, "blocked_at": None}
    )
    log.info("line account linked to patient %s by event %s", patient.pk, event_id)
    return LinkOutcome.LINKED


def line_account_follow(*, patients: list[Patient], following: bool, now: datetime) -> None:
    """Note that the linked account of `patients` blocked (unfollow) or unblocked (follow)
    the clinic's official account."""
    for patient in patients:
        LineAccountState.objects.update_or_create(
            patient=patient, defaults={"blocked_at": None if following else now}
        )


def line_link_failures_forget(*, now: datetime) -> int:
    """Delete counted wrong codes older than the window; returns how many went."""
    deleted, _by_model = LineLinkFailure.objects.filter(at__lt=now - FAILURE_WINDOW).delete()
    return deleted


# --- what the clinic answers on LINE ----------------------------------------------------------


def reply_for(outcome: str, *, profile: ClinicProfile) -> str:
    """The answer to a LINE event that `outcome` (a reminders.replies outcome) calls for, in
    the clinic's language, or "" for none."""
    with translation.override("zh-hant"):
        name = profile.name or _("the clinic")
        texts = {
            LinkOutcome.LINKED: _(
                "Welcome! Your LINE is now linked with %(clinic)s. Reminders will come here. "
                "To stop them, reply 取消."
            ),
            LinkOutcome.WRONG_CODE: _(
                "This link code does not work: it may be mistyped, used already or expired "
                "(a code lasts %(hours)d hours). Please check it, or ask the front desk for a "
                "new one."
            ),
            LinkOutcome.RATE_LIMITED: _(
                "Too many codes that did not work. Please try again in an hour, or ask the "
                "front desk for help."
            ),
            "greeted": _(
                "Thank you for adding %(clinic)s. To receive your reminders here, ask the "
                "front desk for your LINE link code and send it in this chat."
            ),
            "not text": _(
                "Thank you. We can only read written messages here: please write to us in "
                "words, or call %(clinic)s."
            ),
        }
        text = texts.get(outcome, "")
        return text % {"clinic": name, "hours": settings.LINE_LINK_CODE_HOURS} if text else ""


# --- what the patient page and the day view show ---------------------------------------------


@dataclass(frozen=True)
class LineStatus:
    """Where a patient's LINE stands, for the patient page."""

    linked: bool
    linked_at: datetime | None = None  # through a link code; None for an id from before
    blocked_at: datetime | None = None  # the linked account blocked the clinic's account
    # LINE consent is granted but no account is linked: no LINE message can reach them.
    consent_waiting: bool = False


def line_status(*, patient: Patient) -> LineStatus:
    """How `patient`'s LINE stands: linked (when, blocked since when) or not, and whether a
    LINE consent waits for an account. Two queries."""
    state = LineAccountState.objects.filter(patient=patient).first()
    if patient.line_user_id_bidx:
        return LineStatus(
            linked=True,
            linked_at=state.linked_at if state else None,
            blocked_at=state.blocked_at if state else None,
        )
    waiting = ConsentState.objects.filter(
        patient=patient, channel=Channel.LINE, granted=True
    ).exists()
    return LineStatus(linked=False, consent_waiting=waiting)
