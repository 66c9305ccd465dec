"""The fixed context a message template is rendered with (see templating.KIND_FIELDS)."""

from datetime import date, timedelta

from django.utils import timezone

from campaigns.templating import display_name, format_date, local_time
from patients.models import ClinicProfile, Patient


def message_context(*, rule, patient: Patient, profile: ClinicProfile, refs: dict, due) -> dict:
    """Everything a template of `rule.kind` may name, for one patient and occurrence."""
    language = patient.preferred_language
    today = timezone.localdate()
    context = {
        "patient": {
            "display_name": display_name(patient.name, patient.sex, language),
            "name": patient.name,
            "age": patient.age_on(today),
        },
        "clinic": {
            "name": profile.name,
            "phone": profile.phone,
            "address": profile.address,
            "line_account_name": profile.line_account_name,
        },
    }
    if appointment := refs.get("appointment"):
        starts = timezone.localtime(appointment.starts_at)
        context["appointment"] = {
            "date": format_date(starts.date(), language),
            "time": starts.strftime("%H:%M"),
            "department": appointment.department,
            "doctor": appointment.doctor,
            "location": appointment.location,
            "bring_notes": appointment.bring_notes,
        }
    if procedure := refs.get("procedure"):
        discharged = timezone.localtime(procedure.discharged_at).date()
        context["procedure"] = {
            "type": procedure.procedure_type,
            "discharge_date": format_date(discharged, language),
            "days_since": (today - discharged).days,
        }
    if prescription := refs.get("prescription"):
        window = refs.get("refill_window")
        context["prescription"] = {
            "drug": prescription.drug,
            "dose": prescription.dose,
            "dose_time": local_time(due.anchor_at) if due.anchor_at else "",
            "refill_number": window.number if window else "",
            "opens_on": format_date(window.opens_on, language) if window else "",
            "closes_on": format_date(window.closes_on, language) if window else "",
        }
    if "last_visit" in due.row:
        context["visit"] = {
            "last_date": format_date(due.row["last_visit"], language),
            "department": due.row.get("visit_department", ""),
        }
    return context


def sample_context(kind: str, language: str, profile: ClinicProfile) -> dict:
    """A made-up patient and occurrence of `kind`, for template previews in the admin."""
    today = timezone.localdate()
    visit_day = today + timedelta(days=7)
    zh = language != "en"
    name = "林美玲" if zh else "Lin Mei-ling"
    return {
        "patient": {"display_name": display_name(name, "F", language), "name": name, "age": 66},
        "clinic": {
            "name": profile.name or "安心診所",
            "phone": profile.phone or "02-2345-6789",
            "address": profile.address,
            "line_account_name": profile.line_account_name,
        },
        "appointment": {
            "date": format_date(visit_day, language),
            "time": "14:30",
            "department": "家醫科" if zh else "Family medicine",
            "doctor": "王醫師" if zh else "Dr Wang",
            "location": "二樓 3 診" if zh else "2F, room 3",
            "bring_notes": "健保卡、檢驗報告" if zh else "NHI card, lab report",
        },
        "procedure": {
            "type": "白內障手術" if zh else "cataract surgery",
            "discharge_date": format_date(today - timedelta(days=3), language),
            "days_since": 3,
        },
        "prescription": {
            "drug": "Amlodipine 5mg",
            "dose": "1 顆" if zh else "1 tablet",
            "dose_time": "08:00",
            "refill_number": 2,
            "opens_on": format_date(today, language),
            "closes_on": format_date(today + timedelta(days=9), language),
        },
        "visit": {
            "last_date": format_date(date(today.year, 1, 1), language),
            "department": "家醫科" if zh else "Family medicine",
        },
    }
