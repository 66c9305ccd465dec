"""Skip reasons for a channel that is off, a text too long for its channel and a visit with no
open day left before it; and
the shipped confirmation request names the visit's date instead of "tomorrow": it goes out on
the last open day before the visit, which is not always the day before."""

from django.db import migrations, models

RULE = "回診確認 Return-visit confirmation"
OLD = {
    "zh-hant": (
        "明天回診，請確認",
        "{{ patient.display_name }}您好，明天 {{ appointment.time }} {{ appointment.department }}"
        " {{ appointment.doctor }} 回診，請回覆 1 確認、2 更改時間，並記得攜帶健保卡。"
        "{{ clinic.name }}",
    ),
    "en": (
        "Please confirm tomorrow's visit",
        "{{ patient.display_name }}, your visit is tomorrow at {{ appointment.time }} "
        "({{ appointment.department }}, {{ appointment.doctor }}). Reply 1 to confirm, 2 to "
        "change. Please bring your NHI card. {{ clinic.name }}",
    ),
}
NEW = {
    "zh-hant": (
        "回診確認",
        "{{ patient.display_name }}您好，{{ appointment.date }} {{ appointment.time }} "
        "{{ appointment.department }} {{ appointment.doctor }} 回診，請回覆 1 確認、2 更改時間，"
        "並記得攜帶健保卡。{{ clinic.name }}",
    ),
    "en": (
        "Please confirm your visit",
        "{{ patient.display_name }}, your visit is on {{ appointment.date }} at "
        "{{ appointment.time }} ({{ appointment.department }}, {{ appointment.doctor }}). Reply 1 "
        "to confirm, 2 to change. Please bring your NHI card. {{ clinic.name }}",
    ),
}


def _swap(apps, old, new):
    MessageTemplate = apps.get_model("campaigns", "MessageTemplate")
    for language, (old_subject, old_body) in old.items():
        new_subject, new_body = new[language]
        # Only texts the clinic has not edited: its own words stay its own.
        for template in MessageTemplate.objects.filter(
            rule__name=RULE, language=language, body=old_body
        ):
            template.body = new_body
            if template.subject == old_subject:
                template.subject = new_subject
            template.save(update_fields=["body", "subject"])


def forward(apps, schema_editor):
    _swap(apps, OLD, NEW)


def backward(apps, schema_editor):
    _swap(apps, NEW, OLD)


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0003_verbose_names")]

    operations = [
        migrations.AlterField(
            model_name="skip",
            name="reason",
            field=models.CharField(
                choices=[
                    ("no_consent", "no consent for this purpose on any channel"),
                    ("withdrawn", "consent withdrawn"),
                    ("no_contact_point", "no phone, LINE or e-mail for the consented channels"),
                    ("outside_audience", "outside the rule's audience"),
                    ("frequency_cap", "frequency cap reached"),
                    ("already_confirmed", "appointment already confirmed"),
                    ("no_template", "no template for the channel and language"),
                    ("template_error", "template could not be rendered"),
                    ("too_long", "message too long for the channel"),
                    (
                        "stale",
                        "would arrive too late (outside the send window before it is useful)",
                    ),
                    ("no_open_day", "no open day left before the visit to send it on"),
                    ("channel_off", "channel not configured"),
                    ("erased", "patient data erased"),
                ],
                max_length=20,
                verbose_name="reason",
            ),
        ),
        migrations.RunPython(forward, backward),
    ]
