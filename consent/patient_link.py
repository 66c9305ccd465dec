"""The patient's own settings: a short link in a message, and what the page it opens may change.

A message template with `{% settings_link %}` (campaigns.links) gives each patient
`<PUBLIC_BASE_URL>/p/<token>/`, where they see which messages the clinic sends and switch each
purpose on or off per channel, and choose their preferred channel and language, without a login.

The token is a keyed hash, not a random value kept in a table: the patient's id and the planning
day, each in base 36, then the first 48 bits of an HMAC-SHA256 of both (SECRET_KEY, salted) in
base64url: 15 characters at a million patients, as short as a random token of the same
strength. Why not a random token in a table: the planner renders thousands of texts a pass in
a loop it owns, and a row per message would be written from inside the template (one INSERT
per text, rows left behind for messages the unique key drops) or need a new hook in the planner;
a keyed hash needs no row and no write, costs nothing to a text without the tag, and comes out
the same for the same `now` (`run_rules --at T` stays reproducible). `django.core.signing`
would be three times as long (SMS segments). What it can't do is revoke one link: a link
works PATIENT_LINK_DAYS days after its planning day, an erased patient's never, and changing
SECRET_KEY ends them all. 48 bits can't be guessed by a client limited to WRONG_TOKENS_PER_HOUR
wrong tokens an hour per address.
"""

import base64
import enum
import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import BooleanField, ExpressionWrapper
from django.utils.crypto import constant_time_compare, salted_hmac

from consent.models import Action, Channel, ConsentState, Purpose, Source
from consent.selectors import has_contact_point
from consent.services import consent_record
from patients.models import AuditEntry, Language, Patient
from patients.services import audit_record

SALT = "consent.patient_link"
EPOCH = date(2020, 1, 1)
DAY_CHARS = 3  # base 36: days since EPOCH until the year 2147
SIGNATURE_BYTES = 6  # 48 bits, 8 characters of base64url
SIGNATURE_CHARS = 8
DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
TYPICAL_ID_CHARS = 4  # a stand-in's patient id part when there is no patient (up to 1.6 M)
MAX_TOKEN_CHARS = 24
WRONG_TOKENS_PER_HOUR = 20
WRONG_TOKEN_WINDOW = 3600  # seconds


def _base36(number: int) -> str:
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = DIGITS[digit] + text
        if not number:
            return text


def _signature(payload: str) -> str:
    digest = salted_hmac(SALT, payload, algorithm="sha256").digest()[:SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(digest).decode()


def patient_link_token(*, patient_id: int, issued_on: date) -> str:
    """The settings-page token of patient `patient_id`, issued on `issued_on` (the planning day).

    Raises ValueError for a day before EPOCH or a patient id that is not positive.
    """
    days = (issued_on - EPOCH).days
    if days < 0 or patient_id <= 0:
        raise ValueError("a patient link needs a positive patient id and a day after 2020")
    payload = _base36(patient_id) + _base36(days).rjust(DAY_CHARS, "0")
    return payload + _signature(payload)


def token_length(patient_id: int | None) -> int:
    """How long a patient's token is (a typical one without a patient): for stand-ins."""
    id_chars = len(_base36(patient_id)) if patient_id else TYPICAL_ID_CHARS
    return id_chars + DAY_CHARS + SIGNATURE_CHARS


class LinkState(enum.StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    UNKNOWN = "unknown"  # not ours, mistyped, or its patient is gone or erased


@dataclass(frozen=True)
class LinkRead:
    state: LinkState
    patient: Patient | None = None
    issued_on: date | None = None
    evidence: str = ""  # names the link in the ledger without being the link


def link_evidence(token: str) -> str:
    """What the ledger and the audit log name a link by: a hash, never the usable token."""
    return "link:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def patient_link_read(token: str, *, today: date) -> LinkRead:
    """The patient a settings-page token is for, if it is ours, still valid and the patient
    is not erased. An erased or deleted patient's link reads as UNKNOWN, like a made-up one,
    so nothing tells whether a patient exists."""
    unknown = LinkRead(LinkState.UNKNOWN)
    if not (DAY_CHARS + SIGNATURE_CHARS < len(token) <= MAX_TOKEN_CHARS):
        return unknown
    payload, signature = token[:-SIGNATURE_CHARS], token[-SIGNATURE_CHARS:]
    if not constant_time_compare(signature, _signature(payload)):
        return unknown
    try:
        patient_id = int(payload[:-DAY_CHARS], 36)
        issued_on = EPOCH + timedelta(days=int(payload[-DAY_CHARS:], 36))
    except ValueError:
        return unknown
    patient = Patient.objects.filter(pk=patient_id, erased_at__isnull=True).first()
    if patient is None:
        return unknown
    if today > issued_on + timedelta(days=settings.PATIENT_LINK_DAYS):
        return LinkRead(LinkState.EXPIRED, issued_on=issued_on)
    return LinkRead(LinkState.VALID, patient, issued_on, link_evidence(token))


# --- wrong tokens per address ------------------------------------------------------------------


def _wrong_key(address: str) -> str:
    return "patient-link-wrong:" + hashlib.sha256(address.encode()).hexdigest()[:16]


def wrong_tokens_blocked(address: str) -> bool:
    """Whether `address` has tried WRONG_TOKENS_PER_HOUR unknown tokens within the hour."""
    return int(cache.get(_wrong_key(address), 0)) >= WRONG_TOKENS_PER_HOUR


def wrong_token_count(address: str) -> None:
    """Count one unknown token from `address` (the window starts with the first)."""
    key = _wrong_key(address)
    if not cache.add(key, 1, WRONG_TOKEN_WINDOW):
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, WRONG_TOKEN_WINDOW)


# --- what the page shows ------------------------------------------------------------------------


def masked_name(name: str) -> str:
    """The name with its middle hidden: 王小明 → 王○明, 林美 → 林○, 歐陽小明 → 歐○○明."""
    name = name.strip()
    if len(name) <= 1:
        return "○"
    if len(name) == 2:
        return name[0] + "○"
    return name[0] + "○" * min(len(name) - 2, 3) + name[-1]


@dataclass(frozen=True)
class ChannelSetting:
    channel: str
    granted: bool
    reachable: bool  # the clinic has an address this channel can deliver to


@dataclass(frozen=True)
class PurposeSettings:
    purpose: str
    channels: tuple[ChannelSetting, ...]


CHANNELS = (Channel.LINE, Channel.SMS, Channel.EMAIL)


def patient_settings(patient: Patient) -> tuple[PurposeSettings, ...]:
    """Each purpose × channel: on or off now (never recorded is off) and whether reachable."""
    granted = {
        (purpose, channel): on
        for purpose, channel, on in ConsentState.objects.filter(patient=patient).values_list(
            "purpose", "channel", "granted"
        )
    }
    flags = {
        f"reach_{channel}": ExpressionWrapper(has_contact_point(channel), BooleanField())
        for channel in CHANNELS
    }
    row = Patient.objects.filter(pk=patient.pk).annotate(**flags).values_list(*flags).get()
    reachable = dict(zip(CHANNELS, row, strict=True))
    return tuple(
        PurposeSettings(
            purpose,
            tuple(
                ChannelSetting(
                    channel,
                    granted.get((purpose, channel), False),
                    bool(reachable[channel]),
                )
                for channel in CHANNELS
            ),
        )
        for purpose in Purpose.values
    )


# --- changes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    kind: str  # "consent", "channel" or "language"
    purpose: str = ""
    channel: str = ""
    granted: bool = False
    value: str = ""


@transaction.atomic
def patient_settings_change(
    *,
    patient: Patient,
    consent: dict[tuple[str, str], bool],
    preferred_channel: str,
    preferred_language: str,
    evidence: str,
    now: datetime,
) -> list[Change]:
    """Apply what the patient chose on their settings page; returns what actually changed.

    `consent` maps (purpose, channel) to on or off: each that differs from the current state
    becomes one ledger entry with source PATIENT_LINK and `evidence`; a switch that stays off
    records nothing. A new preferred channel or language is saved and audited (no staff actor).
    Raises ValueError for an unknown purpose, channel or language.
    """
    if preferred_channel not in ("", *Channel.values) or preferred_language not in Language.values:
        raise ValueError("unknown channel or language")
    current = {
        (purpose.purpose, setting.channel): setting.granted
        for purpose in patient_settings(patient)
        for setting in purpose.channels
    }
    changes = []
    for (purpose, channel), on in consent.items():
        if (purpose, channel) not in current:
            raise ValueError(f"unknown purpose or channel: {purpose!r}, {channel!r}")
        if on == current[(purpose, channel)]:
            continue
        consent_record(
            patient=patient,
            purpose=purpose,
            channel=channel,
            action=Action.GRANT if on else Action.WITHDRAW,
            source=Source.PATIENT_LINK,
            evidence=evidence,
            at=now,
        )
        changes.append(Change("consent", purpose=purpose, channel=channel, granted=on))
    fields = []
    if preferred_channel != patient.preferred_channel:
        patient.preferred_channel = preferred_channel
        fields.append("preferred_channel")
        changes.append(Change("channel", value=preferred_channel))
    if preferred_language != patient.preferred_language:
        patient.preferred_language = preferred_language
        fields.append("preferred_language")
        changes.append(Change("language", value=preferred_language))
    if fields:
        patient.save(update_fields=[*fields, "updated_at"])
    if changes:
        audit_record(
            actor=None,
            action=AuditEntry.Action.CHANGE,
            patients=[patient],
            path="/p/",
            detail=f"patient's own settings page ({evidence}): "
            + ", ".join(_describe(change) for change in changes),
        )
    return changes


def _describe(change: Change) -> str:
    # Ids and codes only: the audit log never holds an address or a name.
    if change.kind == "consent":
        return f"{change.purpose}/{change.channel} {'on' if change.granted else 'off'}"
    return f"{change.kind}={change.value or '-'}"


def patient_settings_view_record(*, patient: Patient, evidence: str) -> None:
    """Audit one showing of the patient's settings page (the patient's own, no staff actor)."""
    audit_record(
        actor=None,
        action=AuditEntry.Action.VIEW,
        patients=[patient],
        path="/p/",
        detail=f"patient's own settings page ({evidence})",
    )
