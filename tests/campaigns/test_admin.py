import pytest
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Rule, Skip, SkipReason
from campaigns.templating import allowed_fields
from patients.models import AuditEntry
from tests.factories import AppointmentFactory, PatientFactory, VisitFactory
from tests.helpers import delete_by_hand, postgresql_only


@pytest.fixture(autouse=True)
def _english(settings):
    """These tests read the admin's messages; the zh-Hant ones are checked in the browser."""
    settings.LANGUAGE_CODE = "en"


pytestmark = pytest.mark.django_db

ADD_URL = "admin:campaigns_rule_add"
PREVIEW_URL = "admin:campaigns_rule_preview"


@pytest.fixture
def manager(client, manager_user):
    client.force_login(manager_user)
    return client


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


def new_rule_post(templates=(), **overrides) -> dict:
    """The add page's POST: a return-visit rule and the given (channel, language, body)."""
    data = {
        "name": "Test reminder",
        "kind": "appointment",
        "purpose": "care",
        "enabled": "on",
        "priority": "50",
        "offsets": "-3",
        "send_time": "10:00",
        "channel_order_0": "sms",
        "min_age": "",
        "max_age": "",
        "care_plan_key": "",
        "templates-TOTAL_FORMS": str(len(templates)),
        "templates-INITIAL_FORMS": "0",
        "templates-MIN_NUM_FORMS": "0",
        "templates-MAX_NUM_FORMS": "1000",
    }
    for index, (channel, language, body) in enumerate(templates):
        data.update(
            {
                f"templates-{index}-channel": channel,
                f"templates-{index}-language": language,
                f"templates-{index}-subject": "",
                f"templates-{index}-body": body,
            }
        )
    data.update(overrides)
    return data


def change_post(rule: Rule, **overrides) -> dict:
    """The change page's POST for `rule` as it is saved, with its templates."""
    templates = list(rule.templates.all())
    data = {
        "name": rule.name,
        "kind": rule.kind,
        "purpose": rule.purpose,
        "enabled": "on" if rule.enabled else "",
        "priority": str(rule.priority),
        "offsets": ", ".join(map(str, rule.offsets)),
        "send_time": rule.send_time.strftime("%H:%M"),
        **{f"channel_order_{i}": channel for i, channel in enumerate(rule.channel_order)},
        "min_age": "",
        "max_age": "",
        "departments": list(rule.departments),
        "care_plan_key": rule.care_plan_key,
        "templates-TOTAL_FORMS": str(len(templates)),
        "templates-INITIAL_FORMS": str(len(templates)),
        "templates-MIN_NUM_FORMS": "0",
        "templates-MAX_NUM_FORMS": "1000",
    }
    for index, template in enumerate(templates):
        for name in ("id", "rule", "channel", "language", "subject", "body"):
            value = template.rule_id if name == "rule" else getattr(template, name)
            data[f"templates-{index}-{name}"] = value
    data.update(overrides)
    return data


def template_errors(response) -> list[dict]:
    formset = response.context["inline_admin_formsets"][0].formset
    return [form.errors for form in formset.forms]


def rule_errors(response) -> dict:
    return response.context["adminform"].form.errors


KNOWN_FOR_BIRTHDAY = (
    "patient.display_name, patient.name, patient.age, clinic.name, clinic.phone, "
    "clinic.address, clinic.line_account_name"
)
# A rule not saved yet has no kind for MessageTemplate.clean, which then lists every kind's fields.
KNOWN_FOR_ANY_KIND = ", ".join(
    f"{r}.{f}" for r, names in allowed_fields(None).items() for f in names
)


# --- saving rules and templates --------------------------------------------------------------


def test_new_rule_with_its_template_is_saved(manager):
    body = "{{ patient.display_name }}您好，{{ appointment.date }} 請回診。{{ clinic.name }}"

    response = manager.post(
        reverse(ADD_URL),
        new_rule_post(
            templates=[("sms", "zh-hant", body)],
            offsets="-7, -1",
            channel_order_0="line",
            channel_order_1="sms",
        ),
    )

    assert response.status_code == 302
    rule = Rule.objects.get(name="Test reminder")
    assert rule.offsets == [-7, -1]
    assert rule.channel_order == ["line", "sms"]
    assert rule.templates.get().body == body


def test_template_naming_an_unknown_field_is_refused_and_nothing_is_saved(manager):
    rules_before = Rule.objects.count()

    response = manager.post(
        reverse(ADD_URL),
        new_rule_post(templates=[("sms", "zh-hant", "{{ patient.nonexistent }}您好")]),
    )

    assert response.status_code == 200
    [errors] = template_errors(response)
    assert errors == {
        "body": [f"Unknown field {{{{ patient.nonexistent }}}}. Known: {KNOWN_FOR_ANY_KIND}."]
    }
    assert Rule.objects.count() == rules_before
    assert not Rule.objects.filter(name="Test reminder").exists()


def test_template_with_a_syntax_error_is_refused(manager):
    response = manager.post(
        reverse(ADD_URL),
        new_rule_post(templates=[("sms", "zh-hant", "{% if patient.age %}您好")]),
    )

    [errors] = template_errors(response)
    assert errors == {
        "body": [
            "Template syntax error: Unclosed tag on line 1: 'if'. "
            "Looking for one of: elif, else, endif."
        ]
    }
    assert not Rule.objects.filter(name="Test reminder").exists()


def test_template_with_a_tag_other_than_if_is_refused(manager):
    response = manager.post(
        reverse(ADD_URL),
        new_rule_post(templates=[("sms", "zh-hant", "{% load static %}您好")]),
    )

    [errors] = template_errors(response)
    assert errors == {"body": ["The tag {% load %} is not allowed in messages."]}
    assert not Rule.objects.filter(name="Test reminder").exists()


def test_new_rules_template_is_checked_against_the_kind_chosen_on_the_page(manager):
    # Given a birthday rule, which has no appointment to talk about
    post = new_rule_post(kind="birthday", templates=[("sms", "zh-hant", "{{ appointment.date }}")])

    # When it is saved for the first time
    response = manager.post(reverse(ADD_URL), post)

    # Then the template is judged as a birthday template, though the rule has no row yet
    [errors] = template_errors(response)
    assert errors == {
        "body": [f"Unknown field {{{{ appointment.date }}}}. Known: {KNOWN_FOR_BIRTHDAY}."]
    }
    assert not Rule.objects.filter(name="Test reminder").exists()


def test_changing_a_rules_kind_rechecks_its_saved_templates(manager):
    rule = Rule.objects.get(name__startswith="回診通知")

    response = manager.post(
        reverse("admin:campaigns_rule_change", args=[rule.pk]), change_post(rule, kind="birthday")
    )

    # Every text of the rule names the appointment's date first: each is refused for it.
    unknown_date = f"Unknown field {{{{ appointment.date }}}}. Known: {KNOWN_FOR_BIRTHDAY}."
    assert response.status_code == 200
    assert template_errors(response) == [{"body": [unknown_date]}] * rule.templates.count()
    assert Rule.objects.get(pk=rule.pk).kind == "appointment"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "{{ patient.display_name|add:patient.national_id }}",
            "The filter |add is not allowed in messages. Allowed: |default, |upper, |lower.",
        ),
        (
            "{{ clinic.name|default:settings.SECRET_KEY }}",
            "The value after |default: must be text in quotes or a number, "
            "not settings.SECRET_KEY.",
        ),
        (
            '{{ patient.display_name|ljust:"5000000" }}',
            "The filter |ljust is not allowed in messages. Allowed: |default, |upper, |lower.",
        ),
        (
            "{{ patient.__class__ }}",
            "Names starting with an underscore are not allowed: patient.__class__.",
        ),
    ],
)
def test_template_with_a_filter_or_name_that_could_leak_is_refused(manager, body, message):
    response = manager.post(reverse(ADD_URL), new_rule_post(templates=[("sms", "zh-hant", body)]))

    [errors] = template_errors(response)
    assert errors == {"body": [message]}
    assert not Rule.objects.filter(name="Test reminder").exists()


def test_template_over_2000_characters_is_refused(manager):
    response = manager.post(
        reverse(ADD_URL), new_rule_post(templates=[("line", "zh-hant", "您好" * 1000 + "。")])
    )

    [errors] = template_errors(response)
    assert errors == {"body": ["The text is 2001 characters long; at most 2000 are allowed."]}
    assert not Rule.objects.filter(name="Test reminder").exists()


def test_sms_text_too_long_for_the_segment_limit_is_refused_where_line_takes_it(manager):
    # 450 Chinese characters: 7 SMS segments (at most 6), well inside LINE's limit
    body = "{{ clinic.name }}" + "您好" * 221
    post = new_rule_post(templates=[("sms", "zh-hant", body), ("line", "zh-hant", body)])

    response = manager.post(reverse(ADD_URL), post)

    sms_errors, line_errors = template_errors(response)
    assert sms_errors == {"body": ["too long for SMS (7 segments, at most 6)"]}
    assert line_errors == {}
    assert not Rule.objects.filter(name="Test reminder").exists()


def test_the_text_box_tells_the_browser_its_limit(manager):
    response = manager.get(reverse(ADD_URL))

    assert 'maxlength="2000"' in response.content.decode()


def test_saving_a_shipped_rule_unchanged_works(manager):
    rule = Rule.objects.get(name__startswith="術後關懷")

    response = manager.post(
        reverse("admin:campaigns_rule_change", args=[rule.pk]), change_post(rule)
    )

    assert response.status_code == 302
    rule.refresh_from_db()
    assert rule.offsets == [1, 3, 7]
    assert rule.channel_order == ["line", "sms", "email"]


def test_rule_without_a_channel_gets_a_clear_error(manager):
    response = manager.post(reverse(ADD_URL), new_rule_post(channel_order_0=""))

    assert "at least the first channel" in rule_errors(response)["channel_order"][0]
    assert not Rule.objects.filter(name="Test reminder").exists()


@pytest.mark.parametrize(
    ("field", "typed", "message"),
    [
        ("offsets", "1, three, 7", "not three"),
        ("offsets", "", "at least one offset"),
    ],
)
def test_list_fields_typed_badly_get_one_clear_message(manager, field, typed, message):
    response = manager.post(reverse(ADD_URL), new_rule_post(**{field: typed}))

    errors = rule_errors(response)[field]
    assert len(errors) == 1
    assert message in errors[0]


def test_comma_lists_accept_full_width_commas_and_brackets(manager):
    VisitFactory(department="家醫科"), AppointmentFactory(department="眼科")
    response = manager.post(
        reverse(ADD_URL),
        new_rule_post(offsets="[1，3、7]", departments=["家醫科", "眼科"], sexes=["F", "M"]),
    )

    assert response.status_code == 302
    rule = Rule.objects.get(name="Test reminder")
    assert rule.offsets == [1, 3, 7]
    assert rule.departments == ["家醫科", "眼科"]
    assert rule.sexes == ["F", "M"]


def test_front_desk_can_read_rules_but_not_change_them(desk):
    rule = Rule.objects.get(name__startswith="回診通知")
    url = reverse("admin:campaigns_rule_change", args=[rule.pk])

    assert desk.get(reverse("admin:campaigns_rule_changelist")).status_code == 200
    response = desk.post(url, change_post(rule, name="Renamed"))

    assert response.status_code == 403
    assert Rule.objects.get(pk=rule.pk).name == rule.name


def test_manager_switches_a_rule_off_from_the_list(manager):
    rule = Rule.objects.get(name__startswith="生日祝福")
    rules = list(Rule.objects.all())
    data = {
        "form-TOTAL_FORMS": str(len(rules)),
        "form-INITIAL_FORMS": str(len(rules)),
        "_save": "Save",
    }
    for index, each in enumerate(rules):
        data[f"form-{index}-id"] = str(each.pk)
        if each.enabled and each != rule:
            data[f"form-{index}-enabled"] = "on"

    response = manager.post(reverse("admin:campaigns_rule_changelist"), data)

    assert response.status_code == 302
    assert not Rule.objects.get(pk=rule.pk).enabled
    # Every shipped rule but the visit survey, which ships switched off.
    assert Rule.objects.filter(enabled=True).count() == len([r for r in rules if r.enabled]) - 1


# --- preview ----------------------------------------------------------------------------------


def preview(client, body, **fields):
    data = {"kind": "appointment", "channel": "sms", "language": "zh-hant", "body": body}
    return client.post(reverse(PREVIEW_URL), {**data, **fields}).json()


def test_preview_renders_the_text_with_sample_data(manager, clinic):
    answer = preview(manager, "{{ patient.display_name }}您好，{{ appointment.time }} 回診。")

    assert answer["ok"] is True
    assert answer["text"] == "林小姐您好，14:30 回診。"
    assert answer["error"] == ""


def test_preview_of_71_chinese_characters_is_two_ucs2_segments(manager):
    answer = preview(manager, "林" * 71)

    assert (answer["encoding"], answer["units"], answer["segments"]) == ("UCS-2", 71, 2)
    assert answer["size"] == "UCS-2 · 71 characters · 2 segments"


def test_preview_of_160_plain_ascii_characters_is_one_gsm7_segment(manager):
    answer = preview(manager, "a" * 160)

    assert (answer["encoding"], answer["units"], answer["segments"]) == ("GSM-7", 160, 1)


def test_preview_of_an_unknown_field_says_what_is_wrong(manager):
    answer = preview(manager, "{{ patient.nonexistent }}")

    assert answer["ok"] is False
    assert "Unknown field {{ patient.nonexistent }}" in answer["error"]
    assert answer["text"] == ""


def test_preview_judges_fields_by_the_rules_kind(manager):
    answer = preview(manager, "{{ appointment.date }}", kind="birthday")

    assert answer["ok"] is False
    assert answer["error"] == (
        f"Unknown field {{{{ appointment.date }}}}. Known: {KNOWN_FOR_BIRTHDAY}."
    )
    assert answer["text"] == ""


def test_email_preview_renders_the_subject_and_counts_no_segments(manager):
    answer = preview(
        manager, "Hello {{ patient.display_name }}", channel="email", language="en", subject="Hi"
    )

    assert answer["subject"] == "Hi"
    assert answer["text"] == "Hello Lin Mei-ling"
    assert answer["segments"] is None


def test_preview_needs_a_staff_login_and_a_post(client, manager):
    assert manager.get(reverse(PREVIEW_URL)).status_code == 405

    client.logout()
    response = client.post(reverse(PREVIEW_URL), {"body": "hi"})

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_rule_page_shows_a_preview_of_each_saved_template(manager, clinic):
    rule = Rule.objects.get(name__startswith="回診通知")

    response = manager.get(reverse("admin:campaigns_rule_change", args=[rule.pk]))

    page = response.content.decode()
    assert response.status_code == 200
    # One box per saved template, and one in the blank form "Add another" copies.
    assert page.count('class="template-preview"') == rule.templates.count() + 1
    assert "林小姐您好" in page and "安心診所" in page
    assert "campaigns/template_preview.js" in page
    assert "UCS-2 · " in page  # the SMS templates' segment counts


def test_preview_of_a_padding_filter_is_refused_without_rendering_megabytes(manager):
    response = manager.post(
        reverse(PREVIEW_URL),
        {"kind": "appointment", "channel": "sms", "body": '{{ patient.name|ljust:"5000000" }}'},
    )

    answer = response.json()
    assert answer["ok"] is False
    assert answer["error"] == (
        "The filter |ljust is not allowed in messages. Allowed: |default, |upper, |lower."
    )
    assert len(response.content) < 2000


def test_preview_of_a_body_over_the_limit_is_refused(manager):
    answer = preview(manager, "a" * 2_000_000)

    assert answer["ok"] is False
    assert answer["error"] == "The text is 2000000 characters long; at most 2000 are allowed."


def test_preview_of_an_email_subject_over_the_limit_is_refused(manager):
    answer = preview(manager, "Hi", channel="email", subject="s" * 151)

    assert answer["error"] == "The text is 151 characters long; at most 150 are allowed."


def test_preview_says_when_an_sms_is_too_long_for_the_segment_limit(manager, settings):
    settings.SMS_MAX_SEGMENTS = 2

    answer = preview(manager, "林" * 135)

    assert answer["ok"] is False
    assert (
        answer["error"]
        == "The text could not be rendered: too long for SMS (3 segments, at most 2)"
    )
    assert answer["text"] == ""


def test_preview_without_a_channel_renders_the_text_alone(manager):
    answer = preview(manager, "{{ appointment.time }} 回診", channel="")

    assert (answer["ok"], answer["text"], answer["segments"]) == (True, "14:30 回診", None)


# --- skips ------------------------------------------------------------------------------------


def test_skip_list_shows_chart_numbers_and_audits_them(desk, front_desk_user):
    rule = Rule.objects.get(name__startswith="回診通知")
    patient = PatientFactory(chart_no="A000777")
    Skip.objects.create(
        rule=rule,
        patient=patient,
        occurrence_key="appointment:1",
        reason=SkipReason.NO_CONSENT,
        at=timezone.now(),
    )

    response = desk.get(reverse("admin:campaigns_skip_changelist"))

    assert "A000777" in response.content.decode()
    entry = AuditEntry.objects.get(action="list")
    assert entry.actor == front_desk_user
    assert list(entry.patients.all()) == [patient]


@postgresql_only
def test_a_skip_whose_patient_was_deleted_by_hand_is_shown_nowhere(desk):
    # Skips have no database keys (campaigns.models.Skip): one left behind by a patient row
    # deleted past the ORM is joined to nothing, and the list still shows the others.
    rule = Rule.objects.get(name__startswith="回診通知")
    kept, gone = PatientFactory(chart_no="A000777"), PatientFactory(chart_no="A000888")
    for patient in (kept, gone):
        Skip.objects.create(
            rule=rule,
            patient=patient,
            occurrence_key="appointment:1",
            reason=SkipReason.NO_CONSENT,
            at=timezone.now(),
        )
    delete_by_hand("patients_patient", gone.pk)

    response = desk.get(reverse("admin:campaigns_skip_changelist"))

    assert response.status_code == 200
    html = response.content.decode()
    assert "A000777" in html and "A000888" not in html
