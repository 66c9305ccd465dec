import uuid
from typing import Any, TypeVar

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from clinic_crm.fields import EncryptedCharField, EncryptedTextField
from consent.models import Channel, Purpose
from patients.models import Appointment, Patient, Prescription, Procedure, RefillWindow


class Status(models.TextChoices):
    QUEUED = "queued", _("queued")
    SENDING = "sending", _("sending")
    SENT = "sent", _("sent")
    DELIVERED = "delivered", _("delivered")
    FAILED = "failed", _("failed")
    DROPPED = "dropped", _("dropped")
    UNKNOWN = "unknown", _("unknown: check with the provider")


FINAL = [Status.SENT, Status.DELIVERED, Status.FAILED, Status.DROPPED, Status.UNKNOWN]


# The records a message is about (a message names one at most), each with its index where set.
# They have no foreign key in the database (OutboxMessage.appointment): the gate checks they
# still exist (campaigns.policy.send_decision).
MESSAGE_ABOUT = {
    "appointment": "message_appointment",
    "procedure": "message_procedure",
    "prescription": "message_prescription",
    "refill_window": "message_refill_window_id",
}


M = TypeVar("M", bound=models.Model)


def _about(model: type[M], on_delete: Any) -> "models.ForeignKey[M | None, M | None]":
    """A record a message may be about (OutboxMessage.appointment and the others)."""
    return models.ForeignKey(
        model, on_delete=on_delete, null=True, blank=True, db_index=False, db_constraint=False
    )


class OutboxMessage(models.Model):
    """One message to one patient for one occurrence of one rule: sent at most once."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # The rule and the patient have no index of their own: message_once_per_occurrence starts
    # with the rule, message_patient_recent with the patient. Every index costs each insert
    # (the planner writes thousands of rows a pass); the records a message is about are indexed
    # only where set (Meta.indexes).
    rule = models.ForeignKey(
        "campaigns.Rule",
        on_delete=models.PROTECT,
        related_name="messages",
        verbose_name=_("rule"),
        db_index=False,
    )
    # No foreign key in the database for the patient either (db_constraint): its check at
    # each commit locked the patient row of every new message, a tenth of a planning pass at a
    # million patients. A patient row is never deleted: erasure blanks it, the app's database
    # role may not DELETE or TRUNCATE it (patients/0016) and the ORM protects it (on_delete).
    patient = models.ForeignKey(
        Patient,
        on_delete=models.PROTECT,
        related_name="messages",
        verbose_name=_("patient"),
        db_index=False,
        db_constraint=False,
    )
    occurrence_key = models.CharField(_("occurrence"), max_length=120)
    purpose = models.CharField(_("purpose"), max_length=16, choices=Purpose.choices)
    channel = models.CharField(_("channel"), max_length=8, choices=Channel.choices)
    channels_left = models.JSONField(
        _("channels left"),
        default=list,
        help_text=_("Channels still to try, in order, if this one fails for good."),
    )
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.QUEUED
    )
    priority = models.PositiveSmallIntegerField(default=50)
    due_at = models.DateTimeField(_("due at"))
    next_attempt_at = models.DateTimeField(_("next attempt at"))
    expires_at = models.DateTimeField(_("useful until"))
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claim = models.CharField(max_length=32, blank=True, help_text="Which dispatch run holds it.")
    provider_id = models.CharField(_("provider id"), max_length=100, blank=True)
    error = models.CharField(_("error or reason"), max_length=300, blank=True)
    subject = EncryptedCharField(_("subject"), max_length=150, blank=True, erase_with_patient=True)
    body = EncryptedTextField(_("text"), erase_with_patient=True)
    # What the message is about, re-checked just before sending (cancelled, rescheduled, …).
    # No foreign key in the database (db_constraint): its check at each commit locks the row a
    # new message names, a fifth of a planning pass's time. The ORM still protects them
    # (on_delete), the gate re-checks them before every send and drops a message whose record
    # is gone (policy.send_decision). The rule keeps its key.
    appointment = _about(Appointment, models.PROTECT)
    procedure = _about(Procedure, models.PROTECT)
    prescription = _about(Prescription, models.PROTECT)
    # SET_NULL: staff may shorten a prescription's refills; the gate then drops the message.
    refill_window = _about(RefillWindow, models.SET_NULL)
    anchor_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)
    delivered_at = models.DateTimeField(_("delivered at"), null=True, blank=True)
    # When the patient answered this message (a confirmation reply, a button): the funnel's
    # "replied" step.
    replied_at = models.DateTimeField(_("replied at"), null=True, blank=True)
    # What the message costs: SMS segments of the text on its current channel (1 for LINE and
    # e-mail), and the recipient's country for the price per segment.
    segments = models.PositiveSmallIntegerField(_("segments"), default=1)
    country = models.CharField(_("country"), max_length=2, blank=True)

    class Meta:
        ordering = ["-due_at"]
        verbose_name = _("message")
        verbose_name_plural = _("outbox")
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "patient", "occurrence_key"], name="message_once_per_occurrence"
            )
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at", "priority"],
                condition=models.Q(status="queued"),
                name="message_due",
            ),
            models.Index(
                fields=["claimed_at"], condition=models.Q(status="sending"), name="message_sending"
            ),
            models.Index(fields=["patient", "-created_at"], name="message_patient_recent"),
            # Status reports find their message by the provider's id; a planned message has
            # none yet, so the planner's rows cost this index nothing.
            models.Index(
                fields=["provider_id"],
                condition=~models.Q(provider_id=""),
                name="message_provider_id_set",
            ),
            *(
                models.Index(
                    fields=[about], condition=models.Q((f"{about}__isnull", False)), name=name
                )
                for about, name in MESSAGE_ABOUT.items()
            ),
            # The dashboard's aggregates over a date range (dashboard/selectors.py): every
            # column its funnel and trends count, so PostgreSQL reads the index, not the rows
            # with their encrypted texts. INCLUDE is PostgreSQL's; elsewhere a plain index.
            models.Index(
                fields=["due_at"],
                include=[
                    "rule",
                    "channel",
                    "status",
                    "sent_at",
                    "replied_at",
                    "patient",
                    "appointment",
                    "refill_window",
                ],
                name="message_dashboard",
            ),
            # Retention (reminders/retention.py) finds the texts still kept, however many
            # final rows have had theirs erased.
            models.Index(fields=["due_at"], condition=~models.Q(body=""), name="message_text_kept"),
            # The dashboard's refill outcomes (a DISTINCT count of windows, never summarised):
            # only the messages about a refill window, not the whole date range.
            models.Index(
                fields=["due_at"],
                include=["rule", "channel", "sent_at", "refill_window", "patient"],
                condition=models.Q(refill_window__isnull=False),
                name="message_refill_window",
            ),
            # The dashboard's cost of this month: what was handed over, by when.
            models.Index(
                fields=["sent_at"],
                include=["rule", "channel", "segments", "country", "patient"],
                condition=models.Q(sent_at__isnull=False),
                name="message_sent_cost",
            ),
        ]

    def __str__(self) -> str:
        channel, status = self.get_channel_display(), self.get_status_display()
        return f"{self.rule} → {self.patient} ({channel}, {status})"

    def text_for_staff(self) -> str:
        """The text; for a planned message still waiting, whose text dispatch makes just
        before the first try, a note saying so (not an empty text, nor one erased by
        retention)."""
        if self.body or self.status not in (Status.QUEUED, Status.SENDING):
            return self.body
        return str(_("Not written yet: made from the rule's template when it is sent."))


class Attempt(models.Model):
    """One hand-over to a provider. Written before the call, so a crash mid-send is visible."""

    class Outcome(models.TextChoices):
        STARTED = "started", _("started (no answer recorded)")
        SENT = "sent", _("accepted by the provider")
        TRANSIENT = "transient", _("temporary error")
        PERMANENT = "permanent", _("permanent error")
        UNKNOWN = "unknown", _("outcome unknown")

    message = models.ForeignKey(
        OutboxMessage, on_delete=models.CASCADE, related_name="attempts_log"
    )
    channel = models.CharField(_("channel"), max_length=8, choices=Channel.choices)
    started_at = models.DateTimeField(_("started at"))
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    outcome = models.CharField(
        _("outcome"), max_length=10, choices=Outcome.choices, default=Outcome.STARTED
    )
    error = models.CharField(_("error"), max_length=300, blank=True)

    class Meta:
        # Ties: after a fall-through the next channel is tried at the same instant.
        ordering = ["started_at", "pk"]
        verbose_name = _("delivery attempt")
        verbose_name_plural = _("delivery attempts")

    def __str__(self) -> str:
        return f"{self.get_channel_display()} · {self.get_outcome_display()}"


class StaffTask(models.Model):
    """Work for a person, such as the post-op phone call the SOP wants on day 1–3."""

    class Kind(models.TextChoices):
        POSTOP_CALL = "postop_call", _("post-op phone call")
        REVIEW_UNKNOWN = "review_unknown", _("check a message whose outcome is unknown")
        RESCHEDULE = "reschedule", _("call back: the patient asked to change the appointment")
        CALL_UNREACHED = "call_unreached", _("call: no channel could deliver a reminder")
        CALL_NO_CHANNEL = "call_no_channel", _("call: appointment soon, no way to remind")
        CALL_REQUESTED = (
            "call_requested",
            _("call: the patient asked for a call after a post-op check-in"),
        )

    class Outcome(models.TextChoices):
        NONE = "", pgettext_lazy("staff task", "not tried yet")
        DONE = "done", pgettext_lazy("staff task", "done")
        NO_ANSWER = "no_answer", pgettext_lazy("staff task", "no answer")
        WRONG_NUMBER = "wrong_number", pgettext_lazy("staff task", "wrong number")

    kind = models.CharField(_("task"), max_length=20, choices=Kind.choices)
    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="staff_tasks", verbose_name=_("patient")
    )
    procedure = models.ForeignKey(Procedure, on_delete=models.PROTECT, null=True, blank=True)
    message = models.ForeignKey(OutboxMessage, on_delete=models.PROTECT, null=True, blank=True)
    appointment = models.ForeignKey(
        Appointment,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="staff_tasks",
        verbose_name=_("appointment"),
    )
    due_on = models.DateField(_("from"))
    until = models.DateField(_("until"))
    done_at = models.DateTimeField(_("done at"), null=True, blank=True)
    note = models.CharField(_("note"), max_length=200, blank=True)
    # SET_NULL: who holds a task is today's arrangement, not history (the audit log keeps who
    # acted on it).
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="staff_tasks",
        verbose_name=_("assigned to"),
    )
    tries = models.PositiveSmallIntegerField(_("tries"), default=0)
    outcome = models.CharField(
        _("last outcome"), max_length=12, choices=Outcome.choices, default="", blank=True
    )

    class Meta:
        ordering = ["done_at", "due_on"]
        verbose_name = _("staff task")
        verbose_name_plural = _("staff tasks")
        indexes = [
            # The task list and the count in the menu: open tasks by how late they are.
            models.Index(
                fields=["until", "due_on"],
                condition=models.Q(done_at__isnull=True),
                name="task_open",
            ),
            # The done list, newest first: without it each page sorts every closed task.
            models.Index(
                fields=["-done_at", "-id"],
                condition=models.Q(done_at__isnull=False),
                name="task_done",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "appointment"],
                condition=models.Q(appointment__isnull=False),
                name="task_once_per_appointment",
            ),
            models.UniqueConstraint(
                fields=["kind", "procedure"],
                condition=models.Q(procedure__isnull=False),
                name="task_once_per_procedure",
            ),
            models.UniqueConstraint(
                fields=["kind", "message"],
                condition=models.Q(message__isnull=False),
                name="task_once_per_message",
            ),
        ]

    def __str__(self) -> str:
        return self.get_kind_display()


class TrackedLink(models.Model):
    """A link in one message, sent as /r/<token>/ on our domain: the click is counted for the
    message's rule, and the URL carries nothing about the patient."""

    token = models.CharField(max_length=32, unique=True)
    message = models.ForeignKey(
        OutboxMessage, on_delete=models.CASCADE, related_name="tracked_links"
    )
    rule = models.ForeignKey(
        "campaigns.Rule", on_delete=models.CASCADE, related_name="tracked_links"
    )
    url = models.URLField(_("link"), max_length=500)
    created_at = models.DateTimeField(_("created at"))
    clicks = models.PositiveIntegerField(_("clicks"), default=0)
    first_clicked_at = models.DateTimeField(_("first clicked at"), null=True, blank=True)

    class Meta:
        verbose_name = _("tracked link")
        verbose_name_plural = _("tracked links")
        indexes = [models.Index(fields=["rule", "created_at"], name="link_rule_created")]

    def __str__(self) -> str:
        return self.url


class WebhookEvent(models.Model):
    """A provider's event we have applied, by the provider's own id for it: a replay of the
    same event is recognised and changes nothing. Kept WEBHOOK_DEDUPE_DAYS days."""

    class Provider(models.TextChoices):
        TWILIO_SMS = "twilio_sms", _("Twilio incoming SMS")
        TWILIO_STATUS = "twilio_status", _("Twilio delivery report")
        LINE = "line", _("LINE event")

    provider = models.CharField(_("provider"), max_length=16, choices=Provider.choices)
    # Twilio: MessageSid (plus MessageStatus for a delivery report); LINE: webhookEventId.
    event_id = models.CharField(_("event id"), max_length=100)
    received_at = models.DateTimeField(_("received at"), db_index=True)

    class Meta:
        verbose_name = _("webhook event")
        verbose_name_plural = _("webhook events")
        constraints = [
            models.UniqueConstraint(fields=["provider", "event_id"], name="webhook_event_once")
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_id}"


class ParkedReport(models.Model):
    """A delivery report that arrived while its message was still being sent (the provider
    answered our callback before our own transaction committed). The sender applies it in
    the transaction that marks the message sent."""

    message = models.ForeignKey(
        OutboxMessage, on_delete=models.CASCADE, related_name="parked_reports"
    )
    provider_id = models.CharField(_("provider id"), max_length=100)
    provider_status = models.CharField(_("provider status"), max_length=32)
    error_code = models.CharField(_("error code"), max_length=10, blank=True)
    received_at = models.DateTimeField(_("received at"), db_index=True)

    class Meta:
        verbose_name = _("early delivery report")
        verbose_name_plural = _("early delivery reports")

    def __str__(self) -> str:
        return f"{self.provider_id} {self.provider_status}"


class LineLinkCode(models.Model):
    """A one-time code the desk gives a patient to link their LINE account: sent to the
    clinic's official account, it binds the sender's LINE user id to this patient and grants
    the purposes agreed at the desk on LINE. Only a keyed hash of the code is kept."""

    patient = models.ForeignKey(
        Patient,
        on_delete=models.CASCADE,
        related_name="line_link_codes",
        verbose_name=_("patient"),
    )
    # HMAC of the code under BLIND_INDEX_KEY (reminders.linking.code_hash): a leaked table
    # cannot be turned back into codes by trying all of them.
    code_hash = models.CharField(max_length=64, unique=True)
    purposes = models.JSONField(_("purposes agreed"), default=list)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("made by"),
    )
    created_at = models.DateTimeField(_("created at"))
    expires_at = models.DateTimeField(_("expires at"))
    used_at = models.DateTimeField(_("used at"), null=True, blank=True)
    # LINE's webhookEventId of the message that carried the code: the consent's evidence.
    used_event_id = models.CharField(_("event id"), max_length=100, blank=True)
    # A newer code for the same patient replaces this one.
    revoked_at = models.DateTimeField(_("replaced at"), null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("LINE link code")
        verbose_name_plural = _("LINE link codes")
        indexes = [models.Index(fields=["patient", "-created_at"], name="line_code_patient")]

    def __str__(self) -> str:
        return f"{self.patient_id} {self.created_at:%Y-%m-%d %H:%M}"


class LineLinkFailure(models.Model):
    """A message from a LINE user that held a code matching no usable link code: counted to
    stop one user from guessing codes. Keyed by the blind index of the user id, never the id."""

    sender_bidx = models.CharField(max_length=64)
    at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["sender_bidx", "at"], name="line_link_failure_recent")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M}"


class LineAccountState(models.Model):
    """How a patient's linked LINE account stands with the clinic's official account: when it
    was linked through a code, and whether it blocked the account since (an unfollow event)."""

    patient = models.OneToOneField(
        Patient, on_delete=models.CASCADE, related_name="line_account", verbose_name=_("patient")
    )
    linked_at = models.DateTimeField(_("linked at"), null=True, blank=True)
    blocked_at = models.DateTimeField(_("blocked at"), null=True, blank=True)

    class Meta:
        verbose_name = _("LINE account state")
        verbose_name_plural = _("LINE account states")

    def __str__(self) -> str:
        return str(self.patient_id)


class InboundMessage(models.Model):
    """A message a patient, or someone we don't know yet, sent us that no keyword handled (not
    STOP, not an answer to a confirmation request, not a LINE link code): the staff inbox. The
    text and the sender's address are encrypted; the text is blanked after
    RETAIN_INBOX_TEXT_DAYS (reminders.retention)."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    channel = models.CharField(_("channel"), max_length=8, choices=Channel.choices)
    # The provider's id for it (Twilio MessageSid, LINE webhookEventId): kept once.
    event_id = models.CharField(_("event id"), max_length=100)
    received_at = models.DateTimeField(_("received at"))
    # Null while the sender is unknown, or is a phone several patients share (staff link it).
    patient = models.ForeignKey(
        Patient,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="inbound_messages",
        verbose_name=_("patient"),
    )
    sender = EncryptedCharField(_("sender"), max_length=100, erase_with_patient=True)
    # Patient.phone_bidx or Patient.line_user_id_bidx of the sender: finds the patient it is.
    sender_bidx = models.CharField(max_length=64, blank=True)
    text = EncryptedTextField(_("text"), blank=True, erase_with_patient=True)
    truncated = models.BooleanField(_("shortened"), default=False)
    read_at = models.DateTimeField(_("read at"), null=True, blank=True)
    handled_at = models.DateTimeField(_("handled at"), null=True, blank=True)
    handled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("handled by"),
    )
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="inbox_messages",
        verbose_name=_("assigned to"),
    )

    class Meta:
        ordering = ["-received_at"]
        verbose_name = _("incoming message")
        verbose_name_plural = _("incoming messages")
        permissions = [("send_staff_message", _("Can write to patients from the inbox"))]
        constraints = [models.UniqueConstraint(fields=["channel", "event_id"], name="inbound_once")]
        indexes = [
            models.Index(fields=["patient", "received_at"], name="inbound_patient"),
            # The inbox list and the badge: what is still open.
            models.Index(
                fields=["patient", "received_at"],
                condition=models.Q(handled_at__isnull=True),
                name="inbound_open",
            ),
            models.Index(fields=["sender_bidx"], name="inbound_sender"),
            # Retention finds the texts still kept.
            models.Index(
                fields=["received_at"], condition=~models.Q(text=""), name="inbound_text_kept"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_channel_display()} {self.received_at:%Y-%m-%d %H:%M}"


class Snippet(models.Model):
    """A saved answer staff insert into a message to a patient."""

    title = models.CharField(_("title"), max_length=60)
    text = models.TextField(_("text"), max_length=1000)
    position = models.PositiveSmallIntegerField(_("order"), default=0)
    active = models.BooleanField(_("in use"), default=True)

    class Meta:
        ordering = ["position", "title"]
        verbose_name = _("saved answer")
        verbose_name_plural = _("saved answers")

    def __str__(self) -> str:
        return self.title


class GroupSend(models.Model):
    """One message staff sent to a chosen group (reminders.groups): the group's definition, the
    text, the counts shown on the confirm step and how many were queued. One row per signed
    confirmation (token_hash), and its outbox rows share the occurrence key `group:<id>`, so
    the same confirmation queues nothing twice."""

    class Kind(models.TextChoices):
        DAY = "day", _("a doctor's patients on one day")
        SEGMENT = "segment", _("a segment of patients")

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(_("group"), max_length=8, choices=Kind.choices)
    # The filters as chosen (doctor, day, ages, …): names of the clinic's own, no patient data.
    definition = models.JSONField(_("definition"), default=dict)
    body = EncryptedTextField(_("text"))
    purpose = models.CharField(_("purpose"), max_length=16, choices=Purpose.choices)
    urgent = models.BooleanField(_("urgent"), default=False)
    # {"sms": 3, "line": 5, "no_consent": 2, …} as shown on the confirm step.
    counts = models.JSONField(_("counts"), default=dict)
    queued = models.PositiveIntegerField(_("queued"), default=0)
    # A hash of the signed confirmation: a double click or a resubmit finds this row.
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("staff member"),
    )
    created_at = models.DateTimeField(_("sent at"))

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("group message")
        verbose_name_plural = _("group messages")
        permissions = [
            ("send_group_message", "Can send a message to any group of patients"),
            ("send_day_group_message", "Can send a message to a doctor's patients of one day"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.created_at:%Y-%m-%d %H:%M}"

    @property
    def occurrence_key(self) -> str:
        # campaigns.policy.is_urgent reads the id back.
        return f"group:{self.pk}"
