"""Code systems, identifier systems and value maps shared by the FHIR export and import.

FHIR R4: fhir.resources 8 models R5 at its top level; its R4B sub-package (4.3) is the closest
it ships to R4 (4.0.1) and has the same shape for every element used here (Encounter.reasonCode,
MedicationRequest.dispenseRequest, Procedure.performed[x], Consent.provision).
"""

from django.conf import settings

from patients.models import Appointment, Language, Patient

# TW Core IG (臺灣核心實作指引, 衛生福利部), Patient profile, identifier slices
# (github.com/cctwFHIRterm/MOHW_TWCoreIG_Build input/fsh/profiles/profiles_patient.fsh):
# idCardNumber = system http://www.moi.gov.tw, type v2-0203#NNxxx (suffix TWN);
# medicalRecord = type v2-0203#MR with the assigning organisation's own system (its example:
# https://www.tph.mohw.gov.tw), which is settings.FHIR_CHART_NO_SYSTEM here.
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
NATIONAL_ID_SYSTEM = "http://www.moi.gov.tw"
NATIONAL_ID_TYPE = "NNxxx"
CHART_NO_TYPE = "MR"


def chart_no_system() -> str:
    return settings.FHIR_CHART_NO_SYSTEM


# A resource's own UUID as a business identifier (we keep Visit.uuid across a round trip).
URI_SYSTEM = "urn:ietf:rfc:3986"

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
# Diagnosis code systems read on import; TW Core also names ICD-10-CM editions by year.
ICD10CM_PREFIXES = (ICD10CM, "https://twcore.mohw.gov.tw/ig/twcore/CodeSystem/icd-10-cm")
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"
UCUM = "http://unitsofmeasure.org"
BCP47 = "urn:ietf:bcp:47"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
LOINC = "http://loinc.org"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

# What FHIR has no element for: a channel of consent, a care-plan key. Our own namespace, a URN
# because the product has no web address of its own that could serve the definitions.
LOCAL = "urn:clinic-crm:fhir"
EXT_CONTACT_CHANNEL = f"{LOCAL}:contact-channel"
CARE_PLAN_SYSTEM = f"{LOCAL}:care-plan"
# The HIS's own number for a visit, prescription, procedure or booking (external_id), which the
# tabular import matches on too.
HIS_NUMBER_SYSTEM = f"{LOCAL}:his-number"

GENDER = {
    Patient.Sex.FEMALE: "female",
    Patient.Sex.MALE: "male",
    Patient.Sex.OTHER: "other",
    Patient.Sex.UNKNOWN: "unknown",
}
SEX = {fhir: sex for sex, fhir in GENDER.items()}

LANGUAGE = {Language.ZH_HANT: "zh-TW", Language.EN: "en"}


def language_from(tag: str) -> str | None:
    """Our language for a BCP 47 tag (zh, zh-TW, zh-Hant → 繁體中文; en-* → English), or None."""
    tag = tag.strip().lower()
    if tag == "zh" or tag.startswith(("zh-tw", "zh-hant")):
        return Language.ZH_HANT
    if tag == "en" or tag.startswith("en-"):
        return Language.EN
    return None


# Frequencies FHIR codes in GTSAbbreviation; HS is a timing event (repeat.when) and PRN is
# asNeeded, so they travel in those elements instead.
GTS_FREQUENCIES = {"QD", "BID", "TID", "QID"}

APPOINTMENT_STATUS = {
    Appointment.Status.BOOKED: "booked",
    Appointment.Status.CONFIRMED: "booked",  # FHIR has no "confirmed by the patient"
    Appointment.Status.CANCELLED: "cancelled",
    Appointment.Status.ATTENDED: "fulfilled",
    Appointment.Status.NO_SHOW: "noshow",
}
APPOINTMENT_STATUS_IN = {
    "booked": Appointment.Status.BOOKED,
    "arrived": Appointment.Status.ATTENDED,
    "checked-in": Appointment.Status.ATTENDED,
    "fulfilled": Appointment.Status.ATTENDED,
    "cancelled": Appointment.Status.CANCELLED,
    "noshow": Appointment.Status.NO_SHOW,
}

# Consent purposes as HL7 v3 ActReason: care reminders are treatment, birthday greetings and
# health news are healthcare marketing.
PURPOSE_REASON = {"care": "TREAT", "relationship": "HMARKT"}
REASON_PURPOSE = {reason: purpose for purpose, reason in PURPOSE_REASON.items()}
