from django.db import migrations

from clinic_crm.roles import sync_roles


class Migration(migrations.Migration):
    dependencies = [
        ("reminders", "0001_initial"),
        ("campaigns", "0002_default_rules"),
        ("patients", "0002_conditions_and_roles"),
    ]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
