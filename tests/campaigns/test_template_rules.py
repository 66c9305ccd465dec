"""What a saved template may name (issue 7, point 12): the documented fields, a few filters with
literal arguments, and nothing that can leak a field, fail on one patient's data or log it."""

import datetime as dt
import logging
from zoneinfo import ZoneInfo

import pytest
from django.utils import translation

from campaigns.models import MessageTemplate, Rule
from campaigns.templating import (
    FILTERS,
    RenderFailure,
    TemplateProblem,
    TemplateRenderError,
    check_template,
    render,
)
from consent.models import Channel, Purpose
from reminders.channels.memory import outbox
from reminders.models import OutboxMessage, Status
from tests.factories import PatientFactory, grant
from tests.helpers import dispatch, plan


@pytest.fixture(autouse=True)
def _english():
    with translation.override("en"):
        yield


def problem(source: str, kind: str | None = "birthday") -> str:
    """The message check_template refuses `source` with (the test fails if it accepts it)."""
    with pytest.raises(TemplateProblem) as refused:
        check_template(source, kind=kind)
    return str(refused.value)


# --- filters ----------------------------------------------------------------------------------

NOT_ALLOWED = "is not allowed in messages. Allowed: |default, |upper, |lower."


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "{{ patient.name|add:patient.national_id }}",
            f"The filter |add {NOT_ALLOWED}",
        ),
        ('{{ patient.name|ljust:"5000000" }}', f"The filter |ljust {NOT_ALLOWED}"),
        ("{{ patient.name|center:99999 }}", f"The filter |center {NOT_ALLOWED}"),
        ("{{ patient.name|nosuchfilter }}", f"The filter |nosuchfilter {NOT_ALLOWED}"),
        (
            '{% if patient.name|divisibleby:"2" %}x{% endif %}',
            f"The filter |divisibleby {NOT_ALLOWED}",
        ),
        ("{{ clinic.name|safe }}", f"The filter |safe {NOT_ALLOWED}"),
    ],
)
def test_filters_beyond_the_short_list_are_refused_by_name(source, message):
    assert problem(source) == message


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("{{ patient.name|default:settings.SECRET_KEY }}", "settings.SECRET_KEY"),
        ("{{ clinic.phone|default:patient.name }}", "patient.name"),
        ("{% if clinic.phone|default:patient.age %}x{% endif %}", "patient.age"),
        ("{{ clinic.phone|default:_secret }}", "_secret"),
    ],
)
def test_a_filter_argument_that_is_a_variable_is_refused(source, value):
    assert problem(source) == (
        f"The value after |default: must be text in quotes or a number, not {value}."
    )


def test_a_variable_filter_argument_is_refused_before_its_unknown_subject():
    # The settings object isn't in any context, but naming it must not pass either way.
    assert "not settings.SECRET_KEY" in problem("{{ x|default:settings.SECRET_KEY }}")


@pytest.mark.parametrize(
    ("source", "context", "expected"),
    [
        (
            '{{ clinic.address|default:"（地址請洽櫃台）" }}',
            {"clinic": {"address": ""}},
            "（地址請洽櫃台）",
        ),
        ("{{ clinic.address|default:'-' }}", {"clinic": {"address": "台北"}}, "台北"),
        ("{{ patient.age|default:0 }}", {"patient": {"age": ""}}, "0"),
        ("{{ patient.name|upper }}", {"patient": {"name": "Lin"}}, "LIN"),
        ('{{ patient.name|default:"x"|lower }}', {"patient": {"name": "LIN"}}, "lin"),
    ],
)
def test_the_allowed_filters_with_literal_arguments_pass_and_render(source, context, expected):
    assert check_template(source, kind="birthday") is None
    assert render(source, context) == expected


def test_the_allowed_filters_are_default_upper_and_lower():
    assert FILTERS == {"default": True, "upper": False, "lower": False}


def test_default_without_a_value_is_refused_with_an_example():
    assert problem("{{ patient.name|default }}") == (
        'The filter |default needs a value in quotes, e.g. |default:"-".'
    )


def test_upper_with_a_value_is_refused():
    assert problem('{{ patient.name|upper:"x" }}') == "The filter |upper takes no value."


# --- names and lookups ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    ["{{ block.super }}", "{{ patient }}", "{{ patient.name.upper }}", "{{ patient.name.0 }}"],
)
def test_only_root_dot_field_of_the_documented_fields_passes(source):
    field = source.strip("{} ")

    assert problem(source).startswith(f"Unknown field {{{{ {field} }}}}. Known: ")


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("{{ _private }}", "_private"),
        ("{{ patient._meta }}", "patient._meta"),
        ("{% if patient.__class__ %}x{% endif %}", "patient.__class__"),
    ],
)
def test_names_starting_with_an_underscore_are_refused(source, name):
    assert problem(source) == f"Names starting with an underscore are not allowed: {name}."


def test_comparisons_between_allowed_fields_and_literals_pass():
    source = (
        "{% if patient.name == clinic.phone %}a{% elif patient.age >= 65 %}b"
        '{% elif "林" in patient.name %}c{% else %}d{% endif %}'
    )

    assert check_template(source, kind="birthday") is None
    assert render(source, {"patient": {"name": "林美玲", "age": 40}, "clinic": {}}) == "c"


def test_a_comparison_with_a_field_that_is_not_documented_is_refused():
    assert problem("{% if patient.name == patient.national_id %}x{% endif %}").startswith(
        "Unknown field {{ patient.national_id }}."
    )


@pytest.mark.django_db
def test_every_shipped_template_passes_for_its_rule_kind():
    templates = list(MessageTemplate.objects.select_related("rule"))

    # Migration 0002: 8 rules on 3 channels, 1 on 2; 0012: the visit survey on 2; 2 languages.
    assert len(templates) == 56
    for template in templates:
        check_template(template.body, kind=template.rule.kind)
        check_template(template.subject, kind=template.rule.kind, max_chars=150)
        template.full_clean()


# --- rendering never carries patient data -----------------------------------------------------


def test_a_failing_template_raises_an_error_that_names_only_the_exception_type():
    # Given a source that never went through check_template and fails on the name
    source = '{{ patient.name|divisibleby:"2" }}'

    with pytest.raises(TemplateRenderError) as failed:
        render(source, {"patient": {"name": "林美玲"}})

    error = failed.value
    assert str(error) == "the template failed on this data (ValueError)"
    assert error.failure is RenderFailure.FAILED
    # Nothing chained: a logged traceback would print the ValueError, which quotes the name.
    assert error.__cause__ is None and error.__context__ is None


TPE = ZoneInfo("Asia/Taipei")


def test_a_template_failing_on_a_patients_data_is_not_sent_and_the_log_has_no_name(
    caplog, clinic, memory_channels
):
    # Given a birthday SMS text stored without validation, which fails on the patient's name
    rule = Rule.objects.get(name__startswith="生日祝福")
    Rule.objects.exclude(pk=rule.pk).update(enabled=False)
    MessageTemplate.objects.filter(rule=rule, channel="sms").update(
        body='{{ patient.name|divisibleby:"2" }}'
    )
    patient = PatientFactory(name="林美玲", sex="F", birth_date=dt.date(1960, 11, 24))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    # When the day is planned and its messages are sent
    with caplog.at_level(logging.DEBUG):
        plan(dt.datetime(2026, 11, 24, 8, 0, tzinfo=TPE))
        dispatch(dt.datetime(2026, 11, 24, 10, 0, tzinfo=TPE))

    # Then nothing went out, the message says why, and the worker's log says which ids, not who
    message = OutboxMessage.objects.get(patient=patient, rule=rule)
    assert message.status == Status.DROPPED and not outbox
    assert message.error.startswith("SMS: the template failed on this data (ValueError)")
    assert f"message {message.pk}" in caplog.text and str(patient.pk) in caplog.text
    assert "林美玲" not in caplog.text and "林小姐" not in caplog.text
