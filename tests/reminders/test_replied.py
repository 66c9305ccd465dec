# ruff: noqa: F811 - the fixtures imported from test_replies are used as arguments
"""The dashboard's "replied" step: the confirmation request a patient answered notes when."""

import datetime as dt

import pytest
from django.utils import timezone

from reminders.channels.base import Inbound
from reminders.models import OutboxMessage
from reminders.replies import ReplyOutcome, reply_handle
from tests.reminders.test_replies import (  # noqa: F401 - fixtures
    confirmation_sent,
    patient,
    provider_settings,
    sms_from,
)

pytestmark = pytest.mark.django_db
PHONE = "+886912345678"


def _reply(text: str, at: dt.datetime, event: str) -> ReplyOutcome:
    return reply_handle(
        inbound=Inbound(channel="sms", kind="text", sender=PHONE, text=text),
        event_id=event,
        now=at,
    )


@pytest.mark.parametrize(
    ("answer", "outcome"), [("1", ReplyOutcome.CONFIRMED), ("2", ReplyOutcome.CHANGE_REQUESTED)]
)
def test_an_answer_notes_when_the_request_was_replied_to(confirmation_sent, answer, outcome):
    now = timezone.now()

    assert _reply(answer, now, "SM1") == outcome

    confirmation_sent.refresh_from_db()
    assert confirmation_sent.replied_at == now


def test_only_the_first_answer_counts(confirmation_sent):
    first = timezone.now()

    _reply("2", first, "SM1")
    _reply("1", first + dt.timedelta(minutes=5), "SM2")

    confirmation_sent.refresh_from_db()
    assert confirmation_sent.replied_at == first


def test_a_reply_that_answers_nothing_marks_nothing(confirmation_sent):
    now = timezone.now()

    assert _reply("hello", now, "SM1") == ReplyOutcome.KEPT  # for the staff inbox
    assert _reply("STOP", now, "SM2") == ReplyOutcome.OPTED_OUT

    assert OutboxMessage.objects.get(pk=confirmation_sent.pk).replied_at is None


def test_a_reply_through_the_webhook_marks_the_request(client, confirmation_sent):
    before = timezone.now()

    sms_from(client, PHONE, "1")

    confirmation_sent.refresh_from_db()
    assert confirmation_sent.replied_at is not None and confirmation_sent.replied_at >= before
