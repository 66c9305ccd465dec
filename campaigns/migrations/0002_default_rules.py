"""The clinic's care SOPs as shipped: rules and their zh-Hant / English texts.

Every text is checked by campaigns.templating.check_template in tests (test_default_templates).
"""

from datetime import time

from django.db import migrations

CARE, RELATIONSHIP = "care", "relationship"
ALL = ["line", "sms", "email"]

# name, kind, purpose, offsets, send time, priority, extra fields, subject (zh, en), text (zh, en)
RULES = [
    (
        "生日祝福 Birthday greeting", "birthday", RELATIONSHIP, [0], time(10), 90, {},
        ("生日快樂", "Happy birthday"),
        (
            "{{ patient.display_name }}生日快樂！{{ clinic.name }}祝您身體健康、平安喜樂。",
            "Happy birthday, {{ patient.display_name }}! Best wishes for good health from "
            "{{ clinic.name }}.",
        ),
    ),
    (
        "術後當日衛教 Post-op instructions", "postop", CARE, [0], time(10), 10, {},
        ("術後照護須知", "After your procedure"),
        (
            "{{ patient.display_name }}您好，{{ procedure.type }}後請依衛教單照護，如有發燒、"
            "劇痛或出血請立即來電 {{ clinic.phone }}。{{ clinic.name }}",
            "{{ patient.display_name }}, after your {{ procedure.type }} please follow the care "
            "sheet. Fever, strong pain or bleeding: call {{ clinic.phone }} at once. "
            "{{ clinic.name }}",
        ),
    ),
    (
        "術後關懷 Post-op check-in", "postop", CARE, [1, 3, 7], time(10), 20,
        {"staff_call": True},
        ("術後關懷", "How are you feeling?"),
        (
            "{{ patient.display_name }}您好，{{ procedure.type }}後第 {{ procedure.days_since }} "
            "天，恢復還好嗎？如有不適請來電 {{ clinic.phone }}。{{ clinic.name }}",
            "{{ patient.display_name }}, it is day {{ procedure.days_since }} after your "
            "{{ procedure.type }}. How are you? If anything worries you, call {{ clinic.phone }}. "
            "{{ clinic.name }}",
        ),
    ),
    (
        "用藥提醒 Dose reminder", "dose", CARE, [15], time(9), 5, {},
        ("用藥提醒", "Time for your medicine"),
        (
            "{{ patient.display_name }}您好，{{ prescription.dose_time }} 請服用 "
            "{{ prescription.drug }} {{ prescription.dose }}。{{ clinic.name }}",
            "{{ patient.display_name }}, at {{ prescription.dose_time }} please take "
            "{{ prescription.drug }} {{ prescription.dose }}. {{ clinic.name }}",
        ),
    ),
    (
        "慢箋可領藥 Refill window opens", "refill_opens", CARE, [0], time(10), 30, {},
        ("慢性病處方箋可以領藥了", "Your refill can be picked up"),
        (
            "{{ patient.display_name }}您好，您的慢性病連續處方箋（{{ prescription.drug }}）"
            "第 {{ prescription.refill_number }} 次領藥期間為 {{ prescription.opens_on }} 至 "
            "{{ prescription.closes_on }}，請攜帶健保卡與處方箋領藥。{{ clinic.name }}",
            "{{ patient.display_name }}, refill {{ prescription.refill_number }} of "
            "{{ prescription.drug }} can be picked up from {{ prescription.opens_on }} to "
            "{{ prescription.closes_on }}. Bring your NHI card and prescription. {{ clinic.name }}",
        ),
    ),
    (
        "慢箋即將逾期 Refill window closing", "refill_closes", CARE, [-2], time(10), 30, {},
        ("慢性病處方箋即將逾期", "Your refill window closes soon"),
        (
            "{{ patient.display_name }}您好，慢性病連續處方箋（{{ prescription.drug }}）領藥期限至 "
            "{{ prescription.closes_on }}，尚未領藥請儘快領取。{{ clinic.name }} {{ clinic.phone }}",
            "{{ patient.display_name }}, the refill of {{ prescription.drug }} must be picked up "
            "by {{ prescription.closes_on }}. {{ clinic.name }} {{ clinic.phone }}",
        ),
    ),
    (
        "回診通知 Return-visit notice", "appointment", CARE, [-7], time(10), 40, {},
        ("回診通知", "Your next visit"),
        (
            "{{ patient.display_name }}您好，提醒您 {{ appointment.date }} {{ appointment.time }} "
            "{{ appointment.department }} {{ appointment.doctor }} 回診，地點："
            "{{ appointment.location }}。{% if appointment.bring_notes %}請攜帶："
            "{{ appointment.bring_notes }}。{% endif %}{{ clinic.name }} {{ clinic.phone }}",
            "{{ patient.display_name }}, your visit: {{ appointment.date }} "
            "{{ appointment.time }}, {{ appointment.department }}, {{ appointment.doctor }}, "
            "{{ appointment.location }}.{% if appointment.bring_notes %} Please bring: "
            "{{ appointment.bring_notes }}.{% endif %} {{ clinic.name }} {{ clinic.phone }}",
        ),
    ),
    (
        "回診確認 Return-visit confirmation", "appointment", CARE, [-1], time(10), 15,
        {"asks_confirmation": True},
        ("明天回診，請確認", "Please confirm tomorrow's visit"),
        (
            "{{ patient.display_name }}您好，明天 {{ appointment.time }} {{ appointment.department }}"
            " {{ appointment.doctor }} 回診，請回覆 1 確認、2 更改時間，並記得攜帶健保卡。"
            "{{ clinic.name }}",
            "{{ patient.display_name }}, your visit is tomorrow at {{ appointment.time }} "
            "({{ appointment.department }}, {{ appointment.doctor }}). Reply 1 to confirm, 2 to "
            "change. Please bring your NHI card. {{ clinic.name }}",
        ),
    ),
    (
        "慢性病回診召回 Chronic-care recall", "recall", CARE, [90], time(10), 60, {},
        ("該回診了", "Time for a check-up"),
        (
            "{{ patient.display_name }}您好，距上次回診（{{ visit.last_date }}）已有一段時間，"
            "為了穩定控制病情，請來電 {{ clinic.phone }} 預約回診。{{ clinic.name }}",
            "{{ patient.display_name }}, your last visit was on {{ visit.last_date }}. To keep "
            "your condition in check, please call {{ clinic.phone }} to book a visit. "
            "{{ clinic.name }}",
        ),
    ),
]


def add_rules(apps, schema_editor):
    Rule = apps.get_model("campaigns", "Rule")
    MessageTemplate = apps.get_model("campaigns", "MessageTemplate")
    for name, kind, purpose, offsets, send_time, priority, extra, subjects, texts in RULES:
        channels = ["line", "sms"] if kind == "dose" else ALL
        rule = Rule.objects.create(
            name=name,
            kind=kind,
            purpose=purpose,
            offsets=offsets,
            send_time=send_time,
            priority=priority,
            channel_order=channels,
            **extra,
        )
        for channel in channels:
            for language, subject, body in zip(("zh-hant", "en"), subjects, texts, strict=True):
                MessageTemplate.objects.create(
                    rule=rule,
                    channel=channel,
                    language=language,
                    subject=subject if channel == "email" else "",
                    body=body,
                )


def remove_rules(apps, schema_editor):
    apps.get_model("campaigns", "Rule").objects.filter(
        name__in=[rule[0] for rule in RULES], messages__isnull=True
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0001_initial")]

    operations = [migrations.RunPython(add_rules, remove_rules)]
