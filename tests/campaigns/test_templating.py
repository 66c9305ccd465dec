import pytest
from django.utils import translation

from campaigns.templating import (
    TemplateProblem,
    check_template,
    display_name,
    render,
    sms_size,
)

KNOWN_FOR_BIRTHDAY = (
    "patient.display_name, patient.name, patient.age, clinic.name, clinic.phone, "
    "clinic.address, clinic.line_account_name"
)


@pytest.fixture(autouse=True)
def _english():
    with translation.override("en"):
        yield


def problem(source: str, kind: str | None = "birthday") -> str:
    """The message check_template refuses `source` with (the test fails if it accepts it)."""
    with pytest.raises(TemplateProblem) as refused:
        check_template(source, kind=kind)
    return str(refused.value)


def test_known_fields_pass_and_render():
    source = "{{ patient.display_name }} {{ appointment.time }}"
    context = {"patient": {"display_name": "林小姐"}, "appointment": {"time": "14:30"}}

    assert check_template(source, kind="appointment") is None
    assert render(source, context) == "林小姐 14:30"


def test_unknown_field_is_rejected_with_the_known_ones_listed():
    assert problem("{{ patient.birthday }}") == (
        f"Unknown field {{{{ patient.birthday }}}}. Known: {KNOWN_FOR_BIRTHDAY}."
    )


def test_a_field_of_another_rule_kind_is_rejected():
    assert problem("{{ appointment.time }}").startswith("Unknown field {{ appointment.time }}.")


def test_without_a_kind_the_fields_of_every_kind_are_allowed():
    assert check_template("{{ appointment.time }} {{ visit.last_date }}", kind=None) is None


def test_unknown_field_inside_an_if_is_rejected():
    assert problem("{% if patient.secret %}x{% endif %}").startswith(
        "Unknown field {{ patient.secret }}."
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ patient.display_name ", "unclosed tag in '{{ patient.display_name'"),
        (
            "{% if patient.name %}",
            "Unclosed tag on line 1: 'if'. Looking for one of: elif, else, endif.",
        ),
        ("{% %}", "Empty block tag on line 1"),
        ("{{ }}", "Empty variable tag on line 1"),
    ],
)
def test_syntax_errors_are_rejected_with_what_is_wrong(source, message):
    assert problem(source) == f"Template syntax error: {message}"


def test_a_syntax_error_is_reported_before_an_unknown_field():
    assert problem("{% if patient.nonexistent %}x").startswith("Template syntax error: Unclosed")


@pytest.mark.parametrize("tag", ["include", "load", "for", "url", "block", "verbatim"])
def test_tags_beyond_if_are_not_allowed(tag):
    assert problem(f"{{% {tag} 'x' %}}") == f"The tag {{% {tag} %}} is not allowed in messages."


def test_rendering_does_not_html_escape_sms_text():
    assert render("{{ clinic.name }}", {"clinic": {"name": "A&B <診所>"}}) == "A&B <診所>"


def test_rendering_strips_the_surrounding_blank_lines():
    source = "\n{% if patient.name %}\n{{ patient.name }}\n{% endif %}\n"

    assert render(source, {"patient": {"name": "林美玲"}}) == "林美玲"


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("{" * 80, "GSM-7", 160, 1),  # extension characters count twice
        ("{" * 81, "GSM-7", 162, 2),
        ("診" * 70, "UCS-2", 70, 1),
        ("診" * 71, "UCS-2", 71, 2),
        ("診" * 134, "UCS-2", 134, 2),
        ("診" * 135, "UCS-2", 135, 3),
        ("a" * 69 + "診", "UCS-2", 70, 1),  # one Chinese character makes it all UCS-2
        ("", "GSM-7", 0, 0),
    ],
)
def test_sms_segments(text, encoding, units, segments):
    size = sms_size(text)

    assert (size.encoding, size.units, size.segments) == (encoding, units, segments)


def test_emoji_take_two_ucs2_units():
    assert sms_size("😀" * 35).units == 70


@pytest.mark.parametrize(
    ("name", "sex", "language", "expected"),
    [
        ("林美玲", "F", "zh-hant", "林小姐"),
        ("陳志明", "M", "zh-hant", "陳先生"),
        ("陳志明", "U", "zh-hant", "陳志明"),
        ("Lin Mei-ling", "F", "en", "Lin Mei-ling"),
        ("", "F", "zh-hant", ""),
    ],
)
def test_patients_are_addressed_politely(name, sex, language, expected):
    assert display_name(name, sex, language) == expected
