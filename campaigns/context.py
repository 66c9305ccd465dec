"""The fixed context a message template is rendered with: the patient and clinic, plus what
the rule's kind declares (campaigns.kinds)."""

from datetime import date
from typing import Any

from campaigns.kinds import KINDS, Due, Refs
from campaigns.links import PATIENT_KEY
from campaigns.models import Rule
from campaigns.templating import display_name
from patients.models import ClinicProfile, Patient


def _clinic(profile: ClinicProfile) -> dict[str, str]:
    return {
        "name": profile.name,
        "phone": profile.phone,
        "address": profile.address,
        "line_account_name": profile.line_account_name,
    }


def message_context(
    *, rule: Rule, patient: Patient, profile: ClinicProfile, refs: Refs, due: Due, today: date
) -> dict[str, Any]:
    """Everything a template of `rule.kind` may name, for one patient and occurrence, as of
    `today` (the planning day, never the wall clock: a plan for a given time is reproducible)."""
    language = patient.preferred_language
    return {
        "patient": {
            "display_name": display_name(patient.name, patient.sex, language),
            "name": patient.name,
            "age": patient.age_on(today),
        },
        "clinic": _clinic(profile),
        **KINDS[rule.kind].context(refs, due, language, today),
        PATIENT_KEY: (patient.pk, today),  # {% settings_link %} only (campaigns.links)
    }


def sample_context(kind: str, language: str, profile: ClinicProfile, today: date) -> dict[str, Any]:
    """A made-up patient and occurrence of `kind` (of any kind when `kind` is not one), for
    template previews in the admin."""
    kinds = [KINDS[kind]] if kind in KINDS else list(KINDS.values())
    name = "林美玲" if language != "en" else "Lin Mei-ling"
    clinic = _clinic(profile)
    clinic["name"] = clinic["name"] or "安心診所"
    clinic["phone"] = clinic["phone"] or "02-2345-6789"
    return {
        "patient": {"display_name": display_name(name, "F", language), "name": name, "age": 66},
        "clinic": clinic,
        **{root: values for each in kinds for root, values in each.sample(language, today).items()},
    }
