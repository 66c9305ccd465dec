from datetime import time

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from campaigns.templating import BODY_MAX_CHARS, SUBJECT_MAX_CHARS, TemplateProblem, check_template
from consent.models import Channel, Purpose
from patients.models import Condition, Language, Patient


class RuleKind(models.TextChoices):
    """What a rule's offsets count from."""

    BIRTHDAY = "birthday", _("birthday (days from the birthday)")
    POSTOP = "postop", _("post-op (days after discharge)")
    DOSE = "dose", _("medication dose (minutes before each dose)")
    REFILL_OPENS = "refill_opens", _("chronic refill (days from the pickup window opening)")
    REFILL_CLOSES = "refill_closes", _("chronic refill (days from the pickup window closing)")
    APPOINTMENT = "appointment", _("return visit (days from the appointment)")
    RECALL = "recall", _("recall (days after the last visit, none booked)")
    VISIT_SURVEY = "visit_survey", _("how was your visit? (days after an attended visit)")
    # Never planned: staff send it from the LINE link page (reminders.linking), through the
    # outbox and its gate like any message.
    LINE_LINK = "line_link", _("LINE link code (sent by staff from the patient page)")
    # Never planned either: a message staff write to one patient (reminders.inbox).
    STAFF = "staff", _("message from staff (written in the inbox or on the patient page)")
    # Never planned either: one message staff send to a chosen group (reminders.groups).
    GROUP = "group", _("group message (sent by staff to a chosen group)")


class Rule(models.Model):
    """One care SOP step: who is due when, through which channels, saying what."""

    name = models.CharField(_("name"), max_length=100)
    kind = models.CharField(_("kind"), max_length=16, choices=RuleKind.choices)
    enabled = models.BooleanField(_("enabled"), default=True)
    purpose = models.CharField(_("purpose"), max_length=16, choices=Purpose.choices)
    offsets = models.JSONField(
        _("offsets"),
        default=list,
        help_text=_(
            "Whole numbers: days from the anchor (negative = before), or minutes before the "
            "dose for medication doses. For example [1, 3, 7] or [-7]."
        ),
    )
    send_time = models.TimeField(
        _("send at"),
        default=time(10, 0),
        help_text=_("Time of day for day-based rules; moved into the clinic's send window."),
    )
    channel_order = models.JSONField(
        _("channel order"),
        default=list,
        help_text=_('Channels to try, in order, e.g. ["line", "sms", "email"].'),
    )
    priority = models.PositiveSmallIntegerField(
        _("priority"),
        default=50,
        help_text=_("Lower goes first when a patient has several messages due at once."),
    )
    min_age = models.PositiveSmallIntegerField(_("minimum age"), null=True, blank=True)
    max_age = models.PositiveSmallIntegerField(_("maximum age"), null=True, blank=True)
    sexes = models.JSONField(
        _("sexes"), default=list, blank=True, help_text=_('e.g. ["F"]; empty for everyone.')
    )
    conditions = models.ManyToManyField(
        Condition,
        blank=True,
        verbose_name=_("chronic conditions"),
        help_text=_("Only patients with any of these; empty for everyone (recall: any)."),
    )
    departments = models.JSONField(
        _("departments"),
        default=list,
        blank=True,
        help_text=_('Appointment or last-visit department, e.g. ["家醫科"]; empty for all.'),
    )
    care_plan_key = models.SlugField(
        _("care plan"), max_length=40, blank=True, help_text=_("Post-op rules: which procedures.")
    )
    asks_confirmation = models.BooleanField(
        _("asks to confirm"),
        default=False,
        help_text=_("Return-visit rules: skip appointments the patient already confirmed."),
    )
    staff_call = models.BooleanField(
        _("staff phone call"),
        default=False,
        help_text=_("Post-op rules: also put a call task for day 1–3 in the staff inbox."),
    )
    # The dashboard's measured effect: a share of patients, chosen by a stable hash of patient
    # and rule, gets no message from this rule (a "holdout" skip), and their outcomes are the
    # comparison group.
    holdout_percent = models.PositiveSmallIntegerField(
        _("holdout share (%)"),
        default=0,
        validators=[MaxValueValidator(50)],
        help_text=_(
            "This share of patients gets no message from this rule, so the dashboard can "
            "compare them with those who did. 0 sends to everyone."
        ),
    )
    # When the rule was last switched on: without a holdout the dashboard compares with the
    # same weeks before this moment.
    enabled_since = models.DateTimeField(_("switched on at"), null=True, blank=True)

    class Meta:
        ordering = ["priority", "name"]
        verbose_name = _("care rule")
        verbose_name_plural = _("care rules")

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        errors = {}
        if not isinstance(self.offsets, list) or not all(
            isinstance(o, int) and not isinstance(o, bool) for o in self.offsets
        ):
            errors["offsets"] = _("Offsets are a list of whole numbers, e.g. [1, 3, 7].")
        elif not self.offsets:
            errors["offsets"] = _("Give at least one offset.")
        channels = self.channel_order
        if not isinstance(channels, list) or not channels:
            errors["channel_order"] = _('Give at least one channel, e.g. ["sms"].')
        elif any(c not in Channel.values for c in channels) or len(set(channels)) != len(channels):
            errors["channel_order"] = _("Channels are sms, line and email, each at most once.")
        if not isinstance(self.sexes, list) or any(s not in Patient.Sex.values for s in self.sexes):
            errors["sexes"] = _("Sexes are F, M, O or U.")
        if self.min_age is not None and self.max_age is not None and self.min_age > self.max_age:
            errors["max_age"] = _("The maximum age is below the minimum age.")
        if not isinstance(self.departments, list):
            errors["departments"] = _("Departments are a list of names.")
        if errors:
            raise ValidationError(errors)


class MessageTemplate(models.Model):
    """What a rule says on one channel in one language (Django template syntax)."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="templates")
    channel = models.CharField(_("channel"), max_length=8, choices=Channel.choices)
    language = models.CharField(_("language"), max_length=8, choices=Language.choices)
    subject = models.CharField(_("e-mail subject"), max_length=SUBJECT_MAX_CHARS, blank=True)
    body = models.TextField(_("text"))

    class Meta:
        ordering = ["rule", "channel", "language"]
        verbose_name = _("message template")
        verbose_name_plural = _("message templates")
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "channel", "language"], name="template_once_per_channel_language"
            )
        ]

    def __str__(self) -> str:
        return f"{self.rule} · {self.channel} · {self.language}"

    def clean(self) -> None:
        super().clean()
        kind = self.rule.kind if self.rule_id else None
        errors = {}
        for field, most in (("body", BODY_MAX_CHARS), ("subject", SUBJECT_MAX_CHARS)):
            source = getattr(self, field)
            if field == "subject" and len(source) > most:
                continue  # the column's max_length already says so, in its own words
            try:
                check_template(source, kind=kind, max_chars=most)
            except TemplateProblem as problem:
                errors[field] = str(problem)
        if errors:
            raise ValidationError(errors)


class SkipReason(models.TextChoices):
    NO_CONSENT = "no_consent", _("no consent for this purpose on any channel")
    WITHDRAWN = "withdrawn", _("consent withdrawn")
    NO_CONTACT_POINT = "no_contact_point", _("no phone, LINE or e-mail for the consented channels")
    OUTSIDE_AUDIENCE = "outside_audience", _("outside the rule's audience")
    FREQUENCY_CAP = "frequency_cap", _("frequency cap reached")
    ALREADY_CONFIRMED = "already_confirmed", _("appointment already confirmed")
    NO_TEMPLATE = "no_template", _("no template for the channel and language")
    TEMPLATE_ERROR = "template_error", _("template could not be rendered")
    TOO_LONG = "too_long", _("message too long for the channel")
    STALE = "stale", _("would arrive too late (outside the send window before it is useful)")
    NO_OPEN_DAY = "no_open_day", _("no open day left before the visit to send it on")
    CHANNEL_NOT_CONFIGURED = "channel_off", _("channel not configured")
    ERASED = "erased", _("patient data erased")
    HOLDOUT = "holdout", _("held out to measure the rule's effect")


class Skip(models.Model):
    """Why a patient who was due for a rule got no message: answers "why didn't she get it?"."""

    # No index of its own: skip_once_per_occurrence starts with the rule. No foreign keys in
    # the database (db_constraint): a planning pass writes a skip for every due patient it
    # does not message, and checking their keys at commit locks each patient row, a tenth of
    # the pass. A skip is an explanation, replaced by the next pass and erased by retention;
    # the ORM still deletes a rule's skips with it (on_delete; a patient row is never deleted,
    # reminders.models.OutboxMessage.patient), and a skip whose rule or patient was removed
    # by hand is joined to nothing, so shown nowhere.
    rule = models.ForeignKey(
        Rule,
        on_delete=models.CASCADE,
        related_name="skips",
        verbose_name=_("rule"),
        db_index=False,
        db_constraint=False,
    )
    patient = models.ForeignKey(
        Patient,
        on_delete=models.CASCADE,
        related_name="rule_skips",
        verbose_name=_("patient"),
        db_constraint=False,
    )
    occurrence_key = models.CharField(_("occurrence"), max_length=120)
    reason = models.CharField(_("reason"), max_length=20, choices=SkipReason.choices)
    at = models.DateTimeField(_("at"))

    class Meta:
        ordering = ["-at"]
        verbose_name = _("skipped message")
        verbose_name_plural = _("skipped messages")
        # The dashboard's skips of a date range by rule and reason; retention's old skips.
        indexes = [models.Index(fields=["at", "rule", "reason"], name="skip_at_rule_reason")]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "patient", "occurrence_key"], name="skip_once_per_occurrence"
            )
        ]

    def __str__(self) -> str:
        return f"{self.rule}: {self.get_reason_display()}"
