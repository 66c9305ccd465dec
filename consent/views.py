"""The patient's own settings page, `/p/<token>/`: public, no login, the token is the key.

Thin: read the token (consent.patient_link), show or apply, audit every showing. An unknown,
erased-patient or expired link gets a friendly page (404, 410), never a hint whether the
patient exists; an address that tries too many unknown tokens gets 429 for an hour.
"""

from axes.helpers import get_client_ip_address
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_http_methods
from django_stubs_ext import StrOrPromise

from consent.models import Channel, Purpose
from consent.patient_link import (
    CHANNELS,
    Change,
    LinkState,
    masked_name,
    patient_link_read,
    patient_settings,
    patient_settings_change,
    patient_settings_view_record,
    wrong_token_count,
    wrong_tokens_blocked,
)
from patients.models import ClinicProfile, Language

# Plain words for what each purpose covers, for a patient rather than staff.
PURPOSE_WORDS: dict[str, tuple[StrOrPromise, StrOrPromise]] = {
    Purpose.CARE: (
        gettext_lazy("Care"),
        gettext_lazy(
            "Reminders of your appointments, of taking your medicine and collecting refills, "
            "and a check-in after a procedure."
        ),
    ),
    Purpose.RELATIONSHIP: (
        gettext_lazy("Greetings and news"),
        gettext_lazy("Birthday greetings and health news from the clinic."),
    ),
}
NO_ADDRESS: dict[str, StrOrPromise] = {
    Channel.SMS: gettext_lazy(
        "The clinic has no mobile number for you, so text messages can't reach you."
    ),
    Channel.LINE: gettext_lazy(
        "Your LINE is not linked to the clinic yet, so LINE messages can't reach you. "
        "Ask at the front desk for the link code."
    ),
    Channel.EMAIL: gettext_lazy(
        "The clinic has no e-mail address for you, so e-mails can't reach you."
    ),
}
CLINIC_CHOOSES = gettext_lazy("Let the clinic choose")


def _gone(request: HttpRequest, status: int) -> HttpResponse:
    context = {"status": status, "clinic_name": ClinicProfile.load().name}
    return _unindexed(render(request, "consent/patient_link_gone.html", context, status=status))


def _unindexed(response: HttpResponse) -> HttpResponse:
    # Also for crawlers that never parse the page (a link pasted somewhere public).
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response


@never_cache
@csrf_protect
@require_http_methods(["GET", "POST"])
def patient_settings_page(request: HttpRequest, token: str) -> HttpResponse:
    # The address the login lockout (django-axes) sees, so both agree behind the proxy.
    address = get_client_ip_address(request) or ""
    if wrong_tokens_blocked(address):
        return _gone(request, 429)
    now = timezone.now()
    link = patient_link_read(token, today=timezone.localdate(now))
    if link.state == LinkState.UNKNOWN:
        wrong_token_count(address)
        return _gone(request, 404)
    if link.state == LinkState.EXPIRED or link.patient is None:
        return _gone(request, 410)
    patient = link.patient
    changes: list[Change] | None = None
    if request.method == "POST":
        channel = request.POST.get("preferred_channel", "")
        language = request.POST.get("preferred_language", "")
        if channel not in ("", *Channel.values) or language not in Language.values:
            channel, language = patient.preferred_channel, patient.preferred_language
        changes = patient_settings_change(
            patient=patient,
            consent={
                (purpose, ch): f"{purpose}:{ch}" in request.POST
                for purpose in Purpose.values
                for ch in CHANNELS
            },
            preferred_channel=channel,
            preferred_language=language,
            evidence=link.evidence,
            now=now,
        )
    patient_settings_view_record(patient=patient, evidence=link.evidence)
    purposes = [
        {
            "key": each.purpose,
            "title": PURPOSE_WORDS[each.purpose][0],
            "words": PURPOSE_WORDS[each.purpose][1],
            "channels": [
                {
                    "name": f"{each.purpose}:{setting.channel}",
                    "label": Channel(setting.channel).label,
                    "on": setting.granted,
                    "unreachable": NO_ADDRESS[setting.channel]
                    if setting.granted and not setting.reachable
                    else "",
                }
                for setting in each.channels
            ],
        }
        for each in patient_settings(patient)
    ]
    context = {
        "clinic_name": ClinicProfile.load().name,
        "name": masked_name(patient.name),
        "purposes": purposes,
        "channels": [("", CLINIC_CHOOSES), *((c, Channel(c).label) for c in CHANNELS)],
        "languages": Language.choices,
        "preferred_channel": patient.preferred_channel,
        "preferred_language": patient.preferred_language,
        "saved": changes is not None,
        "changes": [_change_words(change) for change in changes or []],
    }
    return _unindexed(render(request, "consent/patient_settings.html", context))


def _change_words(change: Change) -> str:
    if change.kind == "consent":
        title = PURPOSE_WORDS[Purpose(change.purpose)][0]
        words = (
            _("%(purpose)s by %(channel)s: on")
            if change.granted
            else _("%(purpose)s by %(channel)s: off")
        )
        return words % {"purpose": title, "channel": Channel(change.channel).label}
    if change.kind == "channel":
        label = Channel(change.value).label if change.value else CLINIC_CHOOSES
        return _("Preferred channel: %(channel)s") % {"channel": label}
    return _("Language: %(language)s") % {"language": Language(change.value).label}
