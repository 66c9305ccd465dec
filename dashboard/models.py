"""The dashboard's summary of the outbox: per clinic-local day, rule and channel, how many
messages were due and what became of them. The page reads it instead of scanning a quarter's
outbox rows (about 650 k at 1 M messages, a second per scan); dashboard.summary keeps it.

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
            models.UniqueConstraint(fields=["day", "rule", "channel"], name="message_day_once")
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.rule_id} {self.channel}"


class SummarisedDay(models.Model):
    """A day whose MessageDay rows are complete, and when they were counted."""

    day = models.DateField(primary_key=True)
    refreshed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.day}"
