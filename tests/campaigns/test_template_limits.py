"""How long a template and a rendered message may be (issue 7, point 13)."""

import datetime as dt
import os
import subprocess
import sys

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.utils import translation

from campaigns.models import MessageTemplate, Rule
from campaigns.templating import (
    LINE_MAX_TEXT_UNITS,
    RenderedText,
    RenderFailure,
    TemplateProblem,
    TemplateRenderError,
    check_template,
    render_message,
)
from consent.models import Channel, Purpose
from reminders.channels import line
from reminders.channels.memory import outbox
from reminders.models import OutboxMessage, Status
from tests.factories import PatientFactory, grant
from tests.helpers import dispatch, plan, taipei

CONTEXT = {"patient": {"display_name": "林小姐", "name": "林美玲"}, "clinic": {"name": "安心診所"}}


@pytest.fixture(autouse=True)
def _english():
    with translation.override("en"):
        yield


def refusal(*, body: str, channel: str, subject: str = "") -> TemplateRenderError:
    with pytest.raises(TemplateRenderError) as refused:
        render_message(subject=subject, body=body, context=CONTEXT, channel=channel)
    return refused.value


# --- source length when saved -----------------------------------------------------------------


def test_a_body_of_2000_characters_passes_and_one_more_is_refused():
    assert check_template("a" * 2000, kind="birthday") is None

    with pytest.raises(TemplateProblem) as refused:
        check_template("a" * 2001, kind="birthday")

    assert str(refused.value) == "The text is 2001 characters long; at most 2000 are allowed."


@pytest.mark.django_db
def test_a_template_body_over_the_limit_does_not_pass_model_validation():
    template = MessageTemplate.objects.filter(channel="line").first()
    template.body = "生日快樂" * 500 + "!"

    with pytest.raises(ValidationError) as refused:
        template.full_clean()

    assert refused.value.message_dict == {
        "body": ["The text is 2001 characters long; at most 2000 are allowed."]
    }


@pytest.mark.django_db
def test_a_subject_over_150_characters_gets_one_message_not_two():
    template = MessageTemplate.objects.filter(channel="email").first()
    template.subject = "s" * 151

    with pytest.raises(ValidationError) as refused:
        template.full_clean()

    assert refused.value.message_dict == {
        "subject": ["Ensure this value has at most 150 characters (it has 151)."]
    }


# --- rendered size per channel ----------------------------------------------------------------


def test_sms_of_six_ucs2_segments_passes_and_seven_are_refused():
    assert render_message(subject="", body="診" * 402, context=CONTEXT, channel="sms").body == (
        "診" * 402
    )

    error = refusal(body="診" * 403, channel="sms")

    assert str(error) == "too long for SMS (7 segments, at most 6)"
    assert error.failure is RenderFailure.TOO_LONG and error.in_subject is False


def test_the_sms_segment_limit_is_a_setting(settings):
    settings.SMS_MAX_SEGMENTS = 2

    assert str(refusal(body="a" * 307, channel="sms")) == "too long for SMS (3 segments, at most 2)"
    assert render_message(subject="", body="a" * 306, context=CONTEXT, channel="sms").body


def test_sms_max_segments_comes_from_the_environment_with_a_default_of_six():
    assert django_settings.SMS_MAX_SEGMENTS == 6

    result = subprocess.run(  # noqa: S603 - our own settings, fixed arguments
        [
            sys.executable,
            "-c",
            "from django.conf import settings; print(settings.SMS_MAX_SEGMENTS)",
        ],
        cwd=django_settings.BASE_DIR,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "clinic_crm.settings",
            "SMS_MAX_SEGMENTS": "3",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.stdout.strip() == "3", result.stderr


def test_line_text_over_5000_utf16_units_is_refused():
    assert render_message(subject="", body="a" * 5000, context=CONTEXT, channel="line").body

    assert str(refusal(body="a" * 5001, channel="line")) == (
        "too long for LINE (5001 characters, at most 5000)"
    )
    # An emoji outside the BMP is two UTF-16 units, as LINE may count it.
    assert str(refusal(body="😀" * 2501, channel="line")) == (
        "too long for LINE (5002 characters, at most 5000)"
    )


def test_the_line_channel_and_the_planner_use_the_same_limit():
    assert line.MAX_TEXT_UNITS == LINE_MAX_TEXT_UNITS == 5000


def test_email_body_over_20000_characters_is_refused():
    assert render_message(subject="s", body="a" * 20000, context=CONTEXT, channel="email").body

    assert str(refusal(body="a" * 20001, channel="email")) == (
        "too long for e-mail (20001 characters, at most 20000)"
    )


def test_email_subject_too_long_or_with_a_line_break_is_refused_as_the_subjects_fault():
    long_subject = refusal(body="hi", subject="s" * 201, channel="email")
    two_lines = refusal(body="hi", subject="{{ clinic.name }}\nBcc: x@example.com", channel="email")

    assert str(long_subject) == "e-mail subject too long (201 characters, at most 200)"
    assert long_subject.in_subject is True
    assert str(two_lines) == "the e-mail subject has a line break"
    assert two_lines.failure is RenderFailure.FAILED and two_lines.in_subject is True


@pytest.mark.parametrize("channel", ["sms", "line", "email"])
def test_a_text_that_renders_empty_is_refused(channel):
    error = refusal(body="{% if clinic.address %}{{ clinic.address }}{% endif %}", channel=channel)

    assert str(error) == "the text is empty"
    assert error.failure is RenderFailure.EMPTY


@pytest.mark.parametrize(
    ("channel", "subject"), [("sms", ""), ("line", ""), ("email", "Hi 林小姐")]
)
def test_only_email_gets_a_subject(channel, subject):
    rendered = render_message(
        subject="Hi {{ patient.display_name }}",
        body="{{ clinic.name }}",
        context=CONTEXT,
        channel=channel,
    )

    assert rendered == RenderedText(subject=subject, body="安心診所")


def test_an_unknown_channel_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown channel 'fax'"):
        render_message(subject="", body="hi", context=CONTEXT, channel="fax")


# --- the planner ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_sms_too_long_for_the_segment_limit_is_never_sent_and_says_why(clinic, memory_channels):
    # Given a birthday SMS text stored without validation that makes 8 segments
    rule = Rule.objects.get(name__startswith="生日祝福")
    Rule.objects.exclude(pk=rule.pk).update(enabled=False)
    MessageTemplate.objects.filter(rule=rule, channel="sms").update(
        body="{{ patient.display_name }}" + "生日快樂" * 130
    )
    patient = PatientFactory(name="林美玲", sex="F", birth_date=dt.date(1960, 11, 24))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    # When the day is planned and its messages are sent
    plan(taipei(2026, 11, 24, 8, 0))
    dispatch(taipei(2026, 11, 24, 10, 0))

    # Then nothing went out to her (she has no other channel), and why is recorded
    message = OutboxMessage.objects.get(patient=patient)
    assert message.status == Status.DROPPED
    assert not message.attempts_log.exists() and not outbox
    assert message.error.startswith("SMS: too long for SMS (8 segments, at most 6)")
