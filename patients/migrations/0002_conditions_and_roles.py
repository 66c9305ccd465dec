from django.db import migrations

from clinic_crm.append_only import forbid_changes_sql
from clinic_crm.roles import sync_roles

CONDITIONS = [
    ("hypertension", "高血壓", "Hypertension"),
    ("diabetes", "糖尿病", "Diabetes"),
    ("hyperlipidemia", "高血脂", "Hyperlipidemia"),
    ("ckd", "慢性腎臟病", "Chronic kidney disease"),
    ("heart-disease", "心臟病", "Heart disease"),
    ("asthma", "氣喘", "Asthma"),
    ("copd", "慢性阻塞性肺病", "COPD"),
    ("gout", "痛風", "Gout"),
]


def add_conditions(apps, schema_editor):
    Condition = apps.get_model("patients", "Condition")
    for code, zh, en in CONDITIONS:
        Condition.objects.get_or_create(code=code, defaults={"label_zh": zh, "label_en": en})


def append_only_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(forbid_changes_sql("patients_auditentry")[0])
        schema_editor.execute(forbid_changes_sql("consent_consententry")[0])


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(forbid_changes_sql("patients_auditentry")[1])
        schema_editor.execute(forbid_changes_sql("consent_consententry")[1])


class Migration(migrations.Migration):
    dependencies = [
        ("patients", "0001_initial"),
        ("consent", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(add_conditions, migrations.RunPython.noop),
        migrations.RunPython(sync_roles, migrations.RunPython.noop),
        migrations.RunPython(append_only_triggers, drop_triggers),
    ]
