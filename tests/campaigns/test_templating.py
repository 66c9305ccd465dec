import pytest
from django.utils import translation

from campaigns.templating import TemplateProblem, check_template, display_name, render, sms_size


@pytest.fixture(autouse=True)
def _english():
    with translation.override("en"):
        yield


def test_known_fields_pass():
    check_template("{{ patient.display_name }} {{ appointment.time }}", kind="appointment")


def test_unknown_field_is_rejected_with_the_known_ones_listed():
    with pytest.raises(TemplateProblem, match=r"patient\.birthday.*Known: .*patient.display_name"):
        check_template("{{ patient.birthday }}", kind="birthday")


def test_a_field_of_another_rule_kind_is_rejected():
    with pytest.raises(TemplateProblem, match="appointment.time"):
        check_template("{{ appointment.time }}", kind="birthday")


def test_unknown_field_inside_an_if_is_rejected():
    with pytest.raises(TemplateProblem, match="patient.secret"):
        check_template("{% if patient.secret %}x{% endif %}", kind="birthday")


@pytest.mark.parametrize(
    "source",
    ["{{ patient.display_name ", "{% if patient.name %}", "{{ patient.name|nosuchfilter }}"],
)
def test_syntax_errors_are_rejected(source):
    with pytest.raises(TemplateProblem, match="syntax"):
        check_template(source, kind="birthday")


@pytest.mark.parametrize("tag", ["include", "load", "for", "url"])
def test_tags_beyond_if_are_not_allowed(tag):
    with pytest.raises(TemplateProblem, match=tag):
        check_template(f"{{% {tag} 'x' %}}", kind="birthday")


def test_rendering_does_not_html_escape_sms_text():
    assert render("{{ clinic.name }}", {"clinic": {"name": "A&B <診所>"}}) == "A&B <診所>"


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("{" * 80, "GSM-7", 1),  # extension characters count twice
        ("{" * 81, "GSM-7", 2),
        ("診" * 70, "UCS-2", 1),
        ("診" * 71, "UCS-2", 2),
        ("診" * 134, "UCS-2", 2),
        ("診" * 135, "UCS-2", 3),
        ("a" * 69 + "診", "UCS-2", 1),  # one Chinese character makes it all UCS-2
        ("", "GSM-7", 0),
    ],
)
def test_sms_segments(text, encoding, segments):
    size = sms_size(text)

    assert (size.encoding, size.segments) == (encoding, segments)


def test_emoji_take_two_ucs2_units():
    assert sms_size("😀" * 35).units == 70


@pytest.mark.parametrize(
    ("name", "sex", "language", "expected"),
    [
        ("林美玲", "F", "zh-hant", "林小姐"),
        ("陳志明", "M", "zh-hant", "陳先生"),
        ("陳志明", "U", "zh-hant", "陳志明"),
        ("Lin Mei-ling", "F", "en", "Lin Mei-ling"),
    ],
)
def test_patients_are_addressed_politely(name, sex, language, expected):
    assert display_name(name, sex, language) == expected
