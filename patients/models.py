import re
import uuid
from datetime import date, time, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import (
    MaxValueValidator,
    MinValueValidator,
    RegexValidator,
    validate_email,
)
from django.db import models
from django.utils import timezone
from django.utils.translation import get_language
from django.utils.translation import gettext_lazy as _

from clinic_crm.append_only import AppendOnlyModel
from clinic_crm.fields import (
    BlindIndexField,
    EncryptedCharField,
    EncryptedPhoneField,
    EncryptedTextField,
    MobileFlagField,
)
from clinic_crm.normalise import (
    email_key,
    identifier_key,
    name_key,
    phone_key,
    phone_tail_birth_key,
)
from clinic_crm.validators import validate_birth_date, validate_single_line, validate_taiwan_id


class Language(models.TextChoices):
    ZH_HANT = "zh-hant", "繁體中文"
    EN = "en", "English"


class ContactChannel(models.TextChoices):
    SMS = "sms", _("SMS")
    LINE = "line", "LINE"
    EMAIL = "email", _("E-mail")


line_basic_id_validator = RegexValidator(
    r"^@[a-z0-9._-]{3,20}$",
    _("A LINE ID is @ followed by 3 to 20 letters, digits, dots, dashes or underscores."),
    flags=re.IGNORECASE,
)


class ClinicProfile(models.Model):
    """The clinic itself: one row, read by every message."""

    name = models.CharField(
        _("clinic name"), max_length=100, default="", validators=[validate_single_line]
    )
    phone = models.CharField(
        _("phone"), max_length=32, blank=True, validators=[validate_single_line]
    )
    address = models.CharField(
        _("address"), max_length=200, blank=True, validators=[validate_single_line]
    )
    line_account_name = models.CharField(
        _("LINE official account"), max_length=100, blank=True, validators=[validate_single_line]
    )
    # The account's basic ID (@123abcde) or premium ID (@clinic): the LINE link slip's QR
    # opens a chat with it. Empty: the patient page says so and shows no QR.
    line_basic_id = models.CharField(
        _("LINE basic ID"),
        max_length=21,
        blank=True,
        validators=[line_basic_id_validator],
        help_text=_(
            "The official account's ID with its @, for example @123abcde (LINE Official "
            "Account Manager → Settings). Patients link their LINE to the clinic through it."
        ),
    )
    send_window_start = models.TimeField(_("send messages from"), default=time(9, 0))
    send_window_end = models.TimeField(_("send messages until"), default=time(21, 0))
    closed_weekdays = models.JSONField(
        _("closed weekdays"),
        default=list,
        blank=True,
        help_text=_("No messages are sent on these days (0 = Monday … 6 = Sunday)."),
    )

    class Meta:
        verbose_name = _("clinic profile")
        verbose_name_plural = _("clinic profile")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(send_window_start__lt=models.F("send_window_end")),
                name="clinic_send_window_order",
                violation_error_message=_("The send window must start before it ends."),
            )
        ]

    def __str__(self):
        return self.name or str(_("clinic profile"))

    def clean(self):
        super().clean()
        # LINE IDs are case-insensitive; the oaMessage link wants the one spelling.
        self.line_basic_id = (self.line_basic_id or "").strip().lower()
        if len(set(self.closed_weekdays or [])) >= 7:
            raise ValidationError(
                {"closed_weekdays": _("Leave at least one day open, or no message can go out.")}
            )

    @classmethod
    def load(cls) -> "ClinicProfile":
        profile, _created = cls.objects.get_or_create(pk=1)
        return profile


class ClinicDay(models.Model):
    """A date on which the clinic departs from its weekly pattern: closed on a day it normally
    opens (a national holiday, a typhoon day, the doctor's leave) or open on a day it normally
    closes (a make-up workday, 補班)."""

    class Kind(models.TextChoices):
        HOLIDAY = "holiday", _("national holiday")
        TYPHOON = "typhoon", _("typhoon day")
        LEAVE = "leave", _("doctor's leave")
        CLOSED = "closed", _("other closure")
        WORKDAY = "workday", _("make-up workday")

    date = models.DateField(_("date"), unique=True)
    # Derived from kind on save; kept as a column so the planner's calendar reads one flag.
    open = models.BooleanField(_("clinic open"), default=False, editable=False)
    kind = models.CharField(_("kind"), max_length=10, choices=Kind.choices, default=Kind.HOLIDAY)
    note = models.CharField(
        _("note"), max_length=100, blank=True, validators=[validate_single_line]
    )

    class Meta:
        ordering = ["date"]
        verbose_name = _("closure or make-up day")
        verbose_name_plural = _("closure and make-up days")
        constraints = [
            # A make-up workday is the one kind that opens the clinic.
            models.CheckConstraint(
                condition=models.Q(open=True, kind="workday")
                | (models.Q(open=False) & ~models.Q(kind="workday")),
                name="clinic_day_open_iff_workday",
                violation_error_message=_("Only a make-up workday opens the clinic."),
            )
        ]

    def __str__(self):
        return f"{self.date:%Y-%m-%d} {self.get_kind_display()}"

    def save(self, *args, **kwargs):
        self.open = self.kind == self.Kind.WORKDAY
        super().save(*args, **kwargs)


class Condition(models.Model):
    """A chronic-condition tag (hypertension, diabetes, …) used by recall rules."""

    code = models.SlugField(_("code"), max_length=40, unique=True)
    label_zh = models.CharField(_("name (Chinese)"), max_length=60)
    label_en = models.CharField(_("name (English)"), max_length=60)

    class Meta:
        ordering = ["code"]
        verbose_name = _("chronic condition")
        verbose_name_plural = _("chronic conditions")

    def __str__(self):
        return self.label_en if (get_language() or "").startswith("en") else self.label_zh


class MonthDayField(models.PositiveSmallIntegerField):
    """Month and day of a date field as one indexed number (Mar 5 → 305), for birthdays."""

    def __init__(self, *args, source: str = "", **kwargs):
        self.source = source
        kwargs.setdefault("null", True)
        kwargs.setdefault("editable", False)
        kwargs.setdefault("db_index", True)
        super().__init__(*args, **kwargs)

    def pre_save(self, model_instance: models.Model, add: bool) -> int | None:
        day: date | None = getattr(model_instance, self.source)
        value = day.month * 100 + day.day if day else None
        setattr(model_instance, self.attname, value)
        return value


def age_on(born: date, day: date) -> int:
    """Age in whole years on `day` of someone born on `born`."""
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


chart_no_validator = RegexValidator(
    r"^[A-Z0-9-]{1,20}$", _("A chart number uses letters, digits and dashes only.")
)
line_user_id_validator = RegexValidator(
    r"^U[0-9a-f]{32}$", _("A LINE user id is U followed by 32 hexadecimal characters.")
)


class ChartNumberField(models.CharField):
    def to_python(self, value):
        value = super().to_python(value)
        if value:
            # Normalising would quietly remove a line break: refuse it first.
            validate_single_line(value)
        return identifier_key(value) if value else value


class Patient(models.Model):
    class Sex(models.TextChoices):
        FEMALE = "F", _("female")
        MALE = "M", _("male")
        OTHER = "O", _("other")
        UNKNOWN = "U", _("not stated")

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    chart_no = ChartNumberField(
        _("chart number"), max_length=20, unique=True, validators=[chart_no_validator]
    )
    name = EncryptedCharField(_("full name"), max_length=100)
    name_bidx = BlindIndexField(source="name", normaliser=name_key)
    sex = models.CharField(_("sex"), max_length=1, choices=Sex.choices, default=Sex.UNKNOWN)
    birth_date = models.DateField(
        _("birth date"), null=True, blank=True, validators=[validate_birth_date]
    )
    birth_mmdd = MonthDayField(source="birth_date")
    phone = EncryptedPhoneField(
        _("phone"),
        max_length=32,
        blank=True,
        help_text=_("A mobile number also receives SMS; a landline or 0800 number is only called."),
    )
    phone_bidx = BlindIndexField(source="phone", normaliser=phone_key)
    phone_is_mobile = MobileFlagField(_("phone receives SMS"), source="phone")
    # The front desk's "last four digits and birthday" lookup. Only the pair is indexed: the
    # last four digits alone would sort patients into 10,000 buckets anyone could enumerate.
    phone4_birth_bidx = BlindIndexField(
        source=("phone", "birth_date"), normaliser=phone_tail_birth_key
    )
    email = EncryptedCharField(_("e-mail"), max_length=254, blank=True, validators=[validate_email])
    email_bidx = BlindIndexField(source="email", normaliser=email_key)
    line_user_id = EncryptedCharField(
        _("LINE user id"), max_length=33, blank=True, validators=[line_user_id_validator]
    )
    line_user_id_bidx = BlindIndexField(source="line_user_id", normaliser=str.strip)
    national_id = EncryptedCharField(
        _("national ID"), max_length=10, blank=True, validators=[validate_taiwan_id]
    )
    national_id_bidx = BlindIndexField(source="national_id", normaliser=identifier_key)
    preferred_language = models.CharField(
        _("preferred language"), max_length=8, choices=Language.choices, default=Language.ZH_HANT
    )
    preferred_channel = models.CharField(
        _("preferred channel"),
        max_length=8,
        choices=ContactChannel.choices,
        blank=True,
        help_text=_("Tried first when a rule allows several channels."),
    )
    conditions = models.ManyToManyField(
        Condition, blank=True, related_name="patients", verbose_name=_("chronic conditions")
    )
    caregiver_contact = EncryptedCharField(
        _("caregiver or proxy contact"),
        max_length=200,
        blank=True,
        help_text=_("Name, relationship and phone of a family member or proxy."),
    )
    notes = EncryptedTextField(_("notes"), blank=True)
    erased_at = models.DateTimeField(_("erased at"), null=True, blank=True, editable=False)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["chart_no"]
        verbose_name = _("patient")
        verbose_name_plural = _("patients")
        permissions = [
            ("export_patient", _("Can export everything held about a patient")),
            ("erase_patient", _("Can erase a patient's contact data")),
        ]
        # Blind indexes are matched whole: one plain index each (clinic_crm.fields).
        indexes = [
            models.Index(fields=["name_bidx"], name="patient_name_bidx"),
            models.Index(fields=["phone_bidx"], name="patient_phone_bidx"),
            models.Index(fields=["phone4_birth_bidx"], name="patient_phone4_birth_bidx"),
            models.Index(fields=["email_bidx"], name="patient_email_bidx"),
            models.Index(fields=["line_user_id_bidx"], name="patient_line_user_id_bidx"),
            models.Index(fields=["national_id_bidx"], name="patient_national_id_bidx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["national_id_bidx"],
                condition=models.Q(national_id_bidx__isnull=False),
                name="patient_national_id_unique",
                violation_error_message=_("Another patient already has this national ID."),
            )
        ]

    def __str__(self):
        return f"{self.chart_no}"

    def clean(self):
        super().clean()
        if self.email:
            self.email = self.email.strip()
        # Blind indexes are normally set in pre_save; set them now so constraint validation
        # (a duplicate national ID) reports a form error instead of failing at INSERT.
        for field in self._meta.concrete_fields:
            if isinstance(field, BlindIndexField):
                setattr(self, field.attname, field.digest(field.source_value(self)))
        # The unique constraint is on national_id_bidx, a field forms exclude from validation.
        if (
            self.national_id_bidx
            and Patient.objects.filter(national_id_bidx=self.national_id_bidx)
            .exclude(pk=self.pk)
            .exists()
        ):
            raise ValidationError(
                {"national_id": _("Another patient already has this national ID.")}
            )

    @property
    def is_erased(self) -> bool:
        return self.erased_at is not None

    @classmethod
    def index_of(cls, field: str, raw: str) -> str | None:
        """Blind-index value to match `raw` against the encrypted `field`."""
        index = cls._meta.get_field(f"{field}_bidx")
        if not isinstance(index, BlindIndexField):
            raise TypeError(f"{field} has no blind index")
        return index.digest(raw)

    def age_on(self, day: date) -> int | None:
        return age_on(self.birth_date, day) if self.birth_date else None


class Visit(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # Indexed by visit_patient_latest, which starts with the patient: a second index on the
    # patient alone would only slow every insert (300,000 visits an import).
    patient = models.ForeignKey(
        Patient,
        on_delete=models.PROTECT,
        related_name="visits",
        verbose_name=_("patient"),
        db_index=False,
    )
    visited_on = models.DateField(_("visit date"), default=timezone.localdate)
    department = models.CharField(_("department"), max_length=40, validators=[validate_single_line])
    doctor = models.CharField(_("doctor"), max_length=60, validators=[validate_single_line])
    diagnosis_codes = models.CharField(
        _("diagnosis codes"),
        max_length=200,
        blank=True,
        validators=[
            validate_single_line,
            RegexValidator(
                r"^\s*[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?(\s*,\s*[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?)*\s*$",
                _("Enter ICD-10 codes separated by commas, for example I10, E11.9."),
            ),
        ],
    )
    note = EncryptedTextField(_("note"), blank=True)
    # The HIS's own number for the row, when its export has one: a re-import matches on it.
    external_id = models.CharField(
        _("HIS visit number"),
        max_length=64,
        unique=True,
        null=True,
        blank=True,
        validators=[validate_single_line],
    )

    class Meta:
        ordering = ["-visited_on"]
        verbose_name = _("visit")
        verbose_name_plural = _("visits")
        indexes = [
            models.Index(fields=["patient", "-visited_on"], name="visit_patient_latest"),
            # The dashboard's department and doctor filters read a department's or doctor's
            # patients from the index alone (dashboard/selectors.py, _patients_q).
            models.Index(fields=["department", "patient"], name="visit_department_patients"),
            models.Index(fields=["doctor", "patient"], name="visit_doctor_patients"),
        ]

    def __str__(self):
        return f"{self.visited_on} {self.department}"


class Frequency(models.TextChoices):
    """Taiwan prescription abbreviations, with the dose times a clinic usually means."""

    QD = "QD", _("QD: once a day")
    BID = "BID", _("BID: twice a day")
    TID = "TID", _("TID: three times a day")
    QID = "QID", _("QID: four times a day")
    HS = "HS", _("HS: at bedtime")
    PRN = "PRN", _("PRN: when needed")


DEFAULT_DOSE_TIMES = {
    Frequency.QD: ["09:00"],
    Frequency.BID: ["09:00", "18:00"],
    Frequency.TID: ["08:00", "12:00", "18:00"],
    Frequency.QID: ["08:00", "12:00", "18:00", "21:00"],
    Frequency.HS: ["21:00"],
    Frequency.PRN: [],
}
DOSE_TIME = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
# 慢性病連續處方箋: a refill may be picked up in the last 10 days of the previous supply.
REFILL_WINDOW_DAYS = 10


class Prescription(models.Model):
    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="prescriptions", verbose_name=_("patient")
    )
    visit = models.ForeignKey(
        Visit,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="prescriptions",
        verbose_name=_("visit"),
    )
    drug = models.CharField(_("drug"), max_length=120)
    dose = models.CharField(_("dose"), max_length=60, help_text=_("For example 1 tab, 5 ml."))
    frequency = models.CharField(_("frequency"), max_length=4, choices=Frequency.choices)
    dose_times = models.JSONField(
        _("dose times"),
        default=list,
        blank=True,
        help_text=_("24-hour times such as 08:00; left empty, the usual times for the frequency."),
    )
    start_date = models.DateField(_("start date"), default=timezone.localdate)
    days_supplied = models.PositiveSmallIntegerField(
        _("days supplied"), validators=[MinValueValidator(1), MaxValueValidator(90)]
    )
    refills = models.PositiveSmallIntegerField(
        _("chronic refills"),
        default=0,
        validators=[MaxValueValidator(3)],
        help_text=_("Further pickups of a chronic continuous prescription (慢箋) after the first."),
    )
    dose_reminders = models.BooleanField(
        _("remind each dose"),
        default=False,
        help_text=_("Only when the patient asked for a text before every dose."),
    )
    refill_reminders = models.BooleanField(_("remind refill pickups"), default=True)
    # The HIS's own number for the row, when its export has one: a re-import matches on it.
    external_id = models.CharField(
        _("HIS prescription number"),
        max_length=64,
        unique=True,
        null=True,
        blank=True,
        validators=[validate_single_line],
    )

    class Meta:
        ordering = ["-start_date"]
        verbose_name = _("prescription")
        verbose_name_plural = _("prescriptions")

    def __str__(self):
        return f"{self.drug} {self.dose} {self.frequency}"

    def clean(self):
        super().clean()
        times = self.dose_times or DEFAULT_DOSE_TIMES.get(self.frequency, [])
        if not isinstance(times, list) or not all(
            isinstance(t, str) and DOSE_TIME.match(t) for t in times
        ):
            raise ValidationError(
                {"dose_times": _('List dose times as 24-hour HH:MM, e.g. ["08:00", "20:00"].')}
            )
        self.dose_times = sorted(times)

    @property
    def end_date(self) -> date:
        """Last day covered by the first dispensing."""
        return self.start_date + timedelta(days=self.days_supplied - 1)

    def refill_windows_due(self) -> list[tuple[int, date, date]]:
        """(refill number, opens on, closes on) for each chronic refill."""
        windows = []
        for number in range(1, self.refills + 1):
            last_day = self.start_date + timedelta(days=self.days_supplied * number - 1)
            opens = last_day - timedelta(days=REFILL_WINDOW_DAYS - 1)
            windows.append((number, opens, last_day))
        return windows


class RefillWindow(models.Model):
    """When one refill of a chronic continuous prescription may be picked up."""

    prescription = models.ForeignKey(
        Prescription, on_delete=models.CASCADE, related_name="refill_windows"
    )
    number = models.PositiveSmallIntegerField(_("refill number"))
    opens_on = models.DateField(_("opens on"))
    closes_on = models.DateField(_("closes on"))
    picked_up_on = models.DateField(_("picked up on"), null=True, blank=True)

    class Meta:
        ordering = ["prescription", "number"]
        verbose_name = _("refill window")
        verbose_name_plural = _("refill windows")
        constraints = [
            models.UniqueConstraint(fields=["prescription", "number"], name="refill_number_once")
        ]
        indexes = [
            models.Index(fields=["opens_on"], name="refill_opens"),
            models.Index(fields=["closes_on"], name="refill_closes"),
        ]

    def __str__(self):
        return f"#{self.number} {self.opens_on}–{self.closes_on}"


class Procedure(models.Model):
    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="procedures", verbose_name=_("patient")
    )
    procedure_type = models.CharField(_("procedure"), max_length=80)
    performed_at = models.DateTimeField(_("performed at"))
    discharged_at = models.DateTimeField(_("discharged at"), null=True, blank=True)
    care_plan_key = models.SlugField(
        _("care plan"),
        max_length=40,
        blank=True,
        help_text=_("Which post-op care rule applies, for example cataract or colonoscopy."),
    )
    # The HIS's own number for the row, when its export has one: a re-import matches on it.
    external_id = models.CharField(
        _("HIS procedure number"),
        max_length=64,
        unique=True,
        null=True,
        blank=True,
        validators=[validate_single_line],
    )

    class Meta:
        ordering = ["-performed_at"]
        verbose_name = _("procedure")
        verbose_name_plural = _("procedures")
        indexes = [models.Index(fields=["discharged_at"], name="procedure_discharged")]

    def __str__(self):
        return self.procedure_type

    def clean(self):
        super().clean()
        if self.discharged_at and self.performed_at and self.discharged_at < self.performed_at:
            raise ValidationError({"discharged_at": _("Discharge can't be before the procedure.")})


class Appointment(models.Model):
    class Status(models.TextChoices):
        BOOKED = "booked", _("booked")
        CONFIRMED = "confirmed", _("confirmed")
        CANCELLED = "cancelled", _("cancelled")
        ATTENDED = "attended", _("attended")
        NO_SHOW = "no_show", _("no-show")

    class ConfirmedVia(models.TextChoices):
        REPLY = "reply", _("reply")
        LINE = "line", _("LINE button")
        PHONE = "phone", _("phone")
        DESK = "desk", _("at the desk")

    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="appointments", verbose_name=_("patient")
    )
    starts_at = models.DateTimeField(_("starts at"))
    department = models.CharField(_("department"), max_length=40, validators=[validate_single_line])
    doctor = models.CharField(_("doctor"), max_length=60, validators=[validate_single_line])
    location = models.CharField(
        _("location"), max_length=120, blank=True, validators=[validate_single_line]
    )
    bring_notes = models.CharField(
        _("what to bring"),
        max_length=200,
        blank=True,
        help_text=_("NHI card, test reports, …"),
        validators=[validate_single_line],
    )
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.BOOKED
    )
    # The HIS's booking number: a re-imported feed updates the same appointment, and a booking
    # gone from a full-day feed is found and cancelled (patients.imports).
    external_id = models.CharField(
        _("HIS booking number"),
        max_length=64,
        unique=True,
        null=True,
        blank=True,
        validators=[validate_single_line],
    )
    # How the patient confirmed: the day view shows it, and the front desk phones the rest.
    confirmed_via = models.CharField(
        _("confirmed via"), max_length=10, choices=ConfirmedVia.choices, blank=True
    )
    confirmed_at = models.DateTimeField(_("confirmed at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["starts_at"]
        verbose_name = _("appointment")
        verbose_name_plural = _("appointments")
        indexes = [
            models.Index(fields=["starts_at", "status"], name="appointment_upcoming"),
            # As the visits': the dashboard's department and doctor filters.
            models.Index(fields=["department", "patient"], name="appt_department_patients"),
            models.Index(fields=["doctor", "patient"], name="appt_doctor_patients"),
        ]

    def __str__(self):
        return f"{timezone.localtime(self.starts_at):%Y-%m-%d %H:%M} {self.department}"


class AuditEntry(AppendOnlyModel):
    """Who saw or took which patients' data, when. Never changed or deleted."""

    class Action(models.TextChoices):
        LIST = "list", _("listed")
        VIEW = "view", _("viewed")
        SEARCH = "search", _("searched")
        EXPORT = "export", _("exported")
        ERASE = "erase", _("erased")
        IMPORT = "import", _("imported")
        # The patient changed their own settings (consent/patient_link.py): no staff member.
        CHANGE = "change", _("changed")
        # A message staff wrote: to a group (reminders.groups: the group's definition and
        # counts, no patients) or to one patient (the inbox: that patient).
        SEND = "send", _("sent a message")

    at = models.DateTimeField(_("at"), default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        # PROTECT: a staff account with history is deactivated, never deleted.
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        verbose_name=_("staff member"),
    )
    actor_name = models.CharField(_("staff member"), max_length=150, blank=True)
    action = models.CharField(_("action"), max_length=10, choices=Action.choices)
    # The link rows are append-only too (AuditLink), so no patient can be taken out of an
    # entry afterwards, and a patient with audit history can't be deleted.
    patients = models.ManyToManyField(
        Patient, through="AuditLink", related_name="audit_entries", verbose_name=_("patients")
    )
    path = models.CharField(_("page"), max_length=300, blank=True)
    detail = models.CharField(_("detail"), max_length=300, blank=True)

    class Meta:
        ordering = ["-at"]
        verbose_name = _("audit entry")
        verbose_name_plural = _("audit log")

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name} {self.get_action_display()}"


class AuditLink(AppendOnlyModel):
    """One patient an audit entry is about; written with the entry, never changed or deleted."""

    entry = models.ForeignKey(
        AuditEntry, on_delete=models.PROTECT, related_name="links", verbose_name=_("audit entry")
    )
    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="audit_links", verbose_name=_("patient")
    )
    # A pseudonym beside the key: the trail keeps saying which record it was about even if a
    # patient row were ever removed by hand, past the ORM and the foreign key, which refuse it.
    patient_uuid = models.UUIDField(_("patient reference"), editable=False)

    class Meta:
        verbose_name = _("audited patient")
        verbose_name_plural = _("audited patients")
        constraints = [models.UniqueConstraint(fields=["entry", "patient"], name="audit_link_once")]

    def __str__(self):
        return str(self.patient_uuid)


class ImportKind(models.TextChoices):
    """What one tabular import file holds (patients.imports.kinds declares each kind's columns)."""

    PATIENTS = "patients", _("patients")
    VISITS = "visits", _("visits")
    PRESCRIPTIONS = "prescriptions", _("prescriptions")
    PROCEDURES = "procedures", _("procedures")
    APPOINTMENTS = "appointments", _("appointments")


class ImportMapping(models.Model):
    """A saved column → field mapping for one source (the clinic's HIS export), reused by the
    command line, the admin page and the daily feed."""

    name = models.CharField(
        _("name"), max_length=100, unique=True, validators=[validate_single_line]
    )
    kind = models.CharField(_("records"), max_length=16, choices=ImportKind.choices)
    source = models.CharField(
        _("source"),
        max_length=100,
        blank=True,
        help_text=_("Which system the files come from, for example the HIS's name."),
        validators=[validate_single_line],
    )
    # {"file's column header": "field name" or ""}: "" leaves a column out on purpose.
    columns = models.JSONField(_("columns"), default=dict)
    encoding = models.CharField(
        _("encoding"),
        max_length=20,
        blank=True,
        help_text=_("Left empty, the encoding is detected from the file."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("import mapping")
        verbose_name_plural = _("import mappings")

    def __str__(self):
        return self.name


class ImportRun(models.Model):
    """One import of one file: what it did, or why it did nothing. Row errors are kept masked."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        DONE = "done", _("done")
        FAILED = "failed", _("failed")
        # Bad rows in an all-or-nothing run, or too many rejects for a feed: nothing written.
        REJECTED = "rejected", _("rejected")

    class Origin(models.TextChoices):
        COMMAND = "command", _("command line")
        ADMIN = "admin", _("admin page")
        # The worker's daily feed folder (patients.imports.feed): its failures need a manager.
        FEED = "feed", _("daily feed")

    kind = models.CharField(_("records"), max_length=16, choices=ImportKind.choices)
    origin = models.CharField(
        _("origin"), max_length=10, choices=Origin.choices, default=Origin.COMMAND
    )
    file_name = models.CharField(_("file name"), max_length=255, validators=[validate_single_line])
    checksum = models.CharField(_("SHA-256 checksum"), max_length=64, blank=True, db_index=True)
    encoding = models.CharField(_("encoding"), max_length=20, blank=True)
    mapping = models.ForeignKey(
        ImportMapping,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="runs",
        verbose_name=_("import mapping"),
    )
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.QUEUED
    )
    dry_run = models.BooleanField(_("dry run"), default=False)
    all_or_nothing = models.BooleanField(_("all or nothing"), default=True)
    full_day = models.BooleanField(_("full-day feed"), default=False)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        verbose_name=_("started by"),
    )
    queued_at = models.DateTimeField(_("queued at"), default=timezone.now)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    # Rows read so far, written every batch: the admin's progress display reads it.
    progress = models.PositiveIntegerField(_("rows read"), default=0)
    rows_total = models.PositiveIntegerField(_("rows"), default=0)
    added = models.PositiveIntegerField(_("added"), default=0)
    updated = models.PositiveIntegerField(_("updated"), default=0)
    unchanged = models.PositiveIntegerField(_("unchanged"), default=0)
    rejected = models.PositiveIntegerField(_("rejected"), default=0)
    cancelled = models.PositiveIntegerField(_("appointments cancelled"), default=0)
    summary = models.CharField(_("summary"), max_length=500, blank=True)
    # The first row errors (row, column, masked value, reason): never a whole value.
    errors = models.JSONField(_("row errors"), default=list, blank=True)
    rejects_file = models.CharField(_("rejected rows file"), max_length=500, blank=True)
    # The header → field mapping this run used, as run (a saved mapping may change later).
    columns = models.JSONField(_("columns"), default=dict, blank=True)

    class Meta:
        ordering = ["-queued_at"]
        verbose_name = _("import run")
        verbose_name_plural = _("import runs")

    def __str__(self):
        return f"{self.file_name} {self.get_status_display()}"
