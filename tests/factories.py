"""Synthetic test data. Names and numbers are made up; none belongs to a real person."""

import datetime as dt

import factory
from django.utils import timezone

from consent.models import Action, Channel, Purpose, Source
from consent.services import consent_record
from patients.models import Appointment, Patient, Prescription, Procedure, Visit


class PatientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Patient

    chart_no = factory.Sequence(lambda n: f"T{n:06d}")
    name = factory.Sequence(lambda n: f"測試病人{n}")
    sex = Patient.Sex.FEMALE
    birth_date = dt.date(1960, 3, 15)
    phone = factory.Sequence(lambda n: f"+8869{n % 100_000_000:08d}")
    email = factory.Sequence(lambda n: f"patient{n}@example.test")
    preferred_language = "zh-hant"


class VisitFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Visit

    patient = factory.SubFactory(PatientFactory)
    visited_on = factory.LazyFunction(timezone.localdate)
    department = "家醫科"
    doctor = "王醫師"
    diagnosis_codes = "I10"


class PrescriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Prescription

    patient = factory.SubFactory(PatientFactory)
    drug = "Amlodipine 5mg"
    dose = "1 tab"
    frequency = "QD"
    dose_times = ["09:00"]
    start_date = factory.LazyFunction(timezone.localdate)
    days_supplied = 28


class ProcedureFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Procedure

    patient = factory.SubFactory(PatientFactory)
    procedure_type = "白內障手術"
    performed_at = factory.LazyFunction(timezone.now)
    discharged_at = factory.LazyFunction(timezone.now)
    care_plan_key = "cataract"


class AppointmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Appointment

    patient = factory.SubFactory(PatientFactory)
    starts_at = factory.LazyFunction(lambda: timezone.now() + dt.timedelta(days=7))
    department = "家醫科"
    doctor = "王醫師"
    location = "二樓 3 診"


def grant(patient, purpose=Purpose.CARE, channel=Channel.SMS, **kwargs):
    return consent_record(
        patient=patient,
        purpose=purpose,
        channel=channel,
        action=Action.GRANT,
        source=kwargs.pop("source", Source.PAPER_FORM),
        **kwargs,
    )


def withdraw(patient, purpose=Purpose.CARE, channel=Channel.SMS, **kwargs):
    return consent_record(
        patient=patient,
        purpose=purpose,
        channel=channel,
        action=Action.WITHDRAW,
        source=kwargs.pop("source", Source.SMS_KEYWORD),
        **kwargs,
    )
