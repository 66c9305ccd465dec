"""The shipped rules' names without their English suffix ("生日祝福 Birthday greeting" →
"生日祝福"): staff read Chinese, and an English reader has the kind beside the name. A name the
clinic has changed is left as the clinic wrote it."""

from django.db import migrations

SHIPPED = [
    "生日祝福 Birthday greeting",
    "術後當日衛教 Post-op instructions",
    "術後關懷 Post-op check-in",
    "用藥提醒 Dose reminder",
    "慢箋可領藥 Refill window opens",
    "慢箋即將逾期 Refill window closing",
    "回診通知 Return-visit notice",
    "回診確認 Return-visit confirmation",
    "慢性病回診召回 Chronic-care recall",
]


def _zh(name):
    return name.split(" ", 1)[0]


def to_chinese(apps, schema_editor):
    Rule = apps.get_model("campaigns", "Rule")
    for name in SHIPPED:
        Rule.objects.filter(name=name).update(name=_zh(name))


def to_bilingual(apps, schema_editor):
    Rule = apps.get_model("campaigns", "Rule")
    for name in SHIPPED:
        Rule.objects.filter(name=_zh(name)).update(name=name)


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0004_relative_days")]

    operations = [migrations.RunPython(to_chinese, to_bilingual)]
