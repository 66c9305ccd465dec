"""The dashboard's summary of the outbox: per clinic-local day, rule and channel, and again per
department and doctor, how many messages were due and what became of them. The page reads it
instead of scanning a quarter's outbox rows (about 650 k at 1 M messages, a second per scan);
dashboard.summary keeps it.

A day is only read from the summary once SummarisedDay says it was counted; a day never
counted (and today, which changes by the minute) is counted live from the outbox, so a missing
or half-built summary makes the page slower, never wrong."""

from __future__ import annotations

from django.db import models


class MessageDay(models.Model):
    day = models.DateField()  # of the message's due time, in the clinic's zone
    week = models.DateField()  # the Monday of `day`, as TruncWeek counts
    rule = models.ForeignKey("campaigns.Rule", on_delete=models.CASCADE, related_name="+")
    channel = models.CharField(max_length=8)
    # Both empty: every message. Otherwise the messages to patients of that department, that
    # doctor, or both at once (PatientGroup), as the page's filters select them.
    department = models.CharField(max_length=40, blank=True, default="")
    doctor = models.CharField(max_length=60, blank=True, default="")
    # The funnel's steps (dashboard.selectors.step_counts says what each counts).
    queued = models.PositiveIntegerField(default=0)
    waiting = models.PositiveIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0)
    delivered = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    dropped = models.PositiveIntegerField(default=0)
    unknown = models.PositiveIntegerField(default=0)
    replied = models.PositiveIntegerField(default=0)
    handed = models.PositiveIntegerField(default=0)
    # The outcomes of what was sent, as they stood when counted.
    confirmed = models.PositiveIntegerField(default=0)
    appointments = models.PositiveIntegerField(default=0)
    attended = models.PositiveIntegerField(default=0)
    no_show = models.PositiveIntegerField(default=0)
    recalled = models.PositiveIntegerField(default=0)
    booked = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "rule", "channel", "department", "doctor"], name="message_day_once"
            )
        ]
        indexes = [models.Index(fields=["department", "doctor", "day"], name="message_day_group")]

    def __str__(self) -> str:
        return f"{self.day} {self.rule_id} {self.channel} {self.department} {self.doctor}"


class SummarisedDay(models.Model):
    """A day whose MessageDay rows are complete, and when they were counted."""

    day = models.DateField(primary_key=True)
    refreshed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.day}"


class PatientGroup(models.Model):
    """Which departments and doctors a patient belongs to, for the dashboard's filters: a
    patient with a visit or an appointment of department D and doctor R is in (D, ""),
    ("", R) and (D, R). A database view over the visits and appointments (migration 0003),
    so always current; read only, by dashboard.summary to count messages per group."""

    pk = models.CompositePrimaryKey("patient", "department", "doctor")
    patient = models.ForeignKey(
        "patients.Patient",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="dashboard_groups",
    )
    department = models.CharField(max_length=40)
    doctor = models.CharField(max_length=60)

    class Meta:
        managed = False
        db_table = "dashboard_patient_group"

    def __str__(self) -> str:
        return f"{self.patient_id} {self.department} {self.doctor}"
