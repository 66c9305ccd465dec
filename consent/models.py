from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from clinic_crm.append_only import AppendOnlyModel
from patients.models import ContactChannel, Patient

Channel = ContactChannel


class Purpose(models.TextChoices):
    CARE = "care", _("care (visit, medication and post-op reminders)")
    RELATIONSHIP = "relationship", _("relationship (birthday greetings, health news)")


class Action(models.TextChoices):
    GRANT = "grant", _("grant")
    WITHDRAW = "withdraw", _("withdraw")


class Source(models.TextChoices):
    PAPER_FORM = "paper_form", _("paper form")
    FRONT_DESK = "front_desk", _("front desk, verbal")
    LINE_FOLLOW = "line_follow", _("LINE follow / unfollow")
    SMS_KEYWORD = "sms_keyword", _("SMS keyword")
    PATIENT_REQUEST = "patient_request", _("patient request")
    # Explicit consent columns in an imported file (or Consent resources in a FHIR bundle); the
    # file's checksum is the evidence. Consent is never inferred from an import.
    IMPORT = "import", _("imported from the clinic's records")
    # The patient sent the one-time link code from the desk to the clinic's LINE account: the
    # purposes agreed at the desk, granted on LINE, with the webhook event as evidence.
    LINE = "line", _("LINE, linked by the patient")
    # The patient's own settings page, opened from the link in a message (consent/patient_link.py);
    # the evidence names the link by a hash, never the link itself.
    PATIENT_LINK = "patient_link", _("patient link")


class ConsentEntry(AppendOnlyModel):
    """One grant or withdrawal, as it was recorded. The ledger is never changed or deleted."""

    patient = models.ForeignKey(
        Patient,
        on_delete=models.PROTECT,
        related_name="consent_entries",
        verbose_name=_("patient"),
    )
    purpose = models.CharField(_("purpose"), max_length=16, choices=Purpose.choices)
    channel = models.CharField(_("channel"), max_length=8, choices=Channel.choices)
    action = models.CharField(_("grant or withdraw"), max_length=8, choices=Action.choices)
    source = models.CharField(_("source"), max_length=16, choices=Source.choices)
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        # PROTECT: a staff account with history is deactivated, never deleted.
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        verbose_name=_("recorded by"),
    )
    recorded_at = models.DateTimeField(_("recorded at"), default=timezone.now)
    evidence = models.CharField(
        _("evidence"),
        max_length=200,
        blank=True,
        help_text=_("Form version, scanned form reference, or what the patient said."),
    )

    class Meta:
        ordering = ["-recorded_at", "-id"]
        verbose_name = _("consent entry")
        verbose_name_plural = _("consent ledger")
        indexes = [
            models.Index(
                fields=["patient", "purpose", "channel", "-recorded_at"], name="consent_latest"
            )
        ]

    def __str__(self):
        parts = (self.get_action_display(), self.get_purpose_display(), self.get_channel_display())
        return " · ".join(str(part) for part in parts)


class ConsentState(models.Model):
    """Current answer per patient × purpose × channel, kept in step with the ledger.

    Written only by `consent.services.consent_record`, in the same transaction as the entry,
    so planning can join on it instead of re-reading the whole ledger.
    """

    patient = models.ForeignKey(
        Patient, on_delete=models.CASCADE, related_name="consent_states", verbose_name=_("patient")
    )
    purpose = models.CharField(_("purpose"), max_length=16, choices=Purpose.choices)
    channel = models.CharField(_("channel"), max_length=8, choices=Channel.choices)
    granted = models.BooleanField(_("granted"))
    entry = models.ForeignKey(ConsentEntry, on_delete=models.PROTECT, related_name="+")
    changed_at = models.DateTimeField(_("changed at"))

    class Meta:
        verbose_name = _("current consent")
        verbose_name_plural = _("current consent")
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "purpose", "channel"], name="consent_state_once"
            )
        ]
        indexes = [
            models.Index(
                fields=["purpose", "channel", "patient"],
                condition=models.Q(granted=True),
                name="consent_granted",
            ),
            # The planner's and the forecast's "withdrawn?" join: the few refusals, not the
            # whole table (measured: a third of a week-ahead query was that scan).
            models.Index(
                fields=["purpose", "channel", "patient"],
                condition=models.Q(granted=False),
                name="consent_refused",
            ),
        ]

    def __str__(self):
        state = _("granted") if self.granted else _("not granted")
        return f"{self.get_purpose_display()} · {self.get_channel_display()}: {state}"
