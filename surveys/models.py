"""How was your visit? The 1-5 answers patients give to the survey rule (campaigns.kinds
VISIT_SURVEY), written by surveys.services from reminders.replies, read by the dashboard."""

import uuid

from django.db import models
from django.utils.translation import gettext_lazy as _

from clinic_crm.fields import EncryptedTextField
from consent.models import Channel
from patients.models import Patient, Visit
from reminders.models import InboundMessage, OutboxMessage


class VisitRating(models.Model):
    """One patient's rating of one visit, answering one survey message (once). The doctor and
    department are copied from the visit, so the dashboard groups without a join and a later
    change to the visit record does not move old ratings. What reached the staff inbox (a low
    rating, a comment) is linked: those inbox messages are the feedback to follow up."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)  # the comment's key
    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="visit_ratings", verbose_name=_("patient")
    )
    visit = models.ForeignKey(
        Visit, on_delete=models.SET_NULL, null=True, blank=True, verbose_name=_("visit")
    )
    message = models.OneToOneField(
        OutboxMessage,
        on_delete=models.PROTECT,
        related_name="visit_rating",
        verbose_name=_("survey message"),
    )
    channel = models.CharField(_("channel"), max_length=8, choices=Channel.choices)
    doctor = models.CharField(_("doctor"), max_length=60, blank=True)
    department = models.CharField(_("department"), max_length=40, blank=True)
    rating = models.PositiveSmallIntegerField(_("rating"))
    comment = EncryptedTextField(_("comment"), blank=True, erase_with_patient=True)
    rated_at = models.DateTimeField(_("rated at"))
    commented_at = models.DateTimeField(_("commented at"), null=True, blank=True)
    # The inbox messages this rating put before staff: a low rating, and the comment.
    low_rating_note = models.ForeignKey(
        InboundMessage, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    comment_message = models.ForeignKey(
        InboundMessage, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-rated_at"]
        verbose_name = _("visit rating")
        verbose_name_plural = _("visit ratings")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(rating__gte=1, rating__lte=5), name="visit_rating_1_to_5"
            )
        ]
        indexes = [
            models.Index(fields=["rated_at"], name="visit_rating_at"),
            models.Index(fields=["patient", "channel", "rated_at"], name="visit_rating_patient"),
        ]

    def __str__(self) -> str:
        return f"{self.rating}/5 {self.rated_at:%Y-%m-%d}"
