# A patient is erased, never deleted (patients.services.patient_erase): the app's database role
# loses DELETE and TRUNCATE on the patients, as on current consent. The outbox and the skips
# then need no foreign key to guard against a patient row going away (reminders/0022,
# campaigns/0014). PostgreSQL only; deploy/postgres-roles.sql takes the same rights back.

from django.db import migrations

from clinic_crm.append_only import revoke_sql


def revoke(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(revoke_sql("patients_patient", ["DELETE", "TRUNCATE"]))


class Migration(migrations.Migration):
    dependencies = [("patients", "0015_plain_indexes")]

    operations = [migrations.RunPython(revoke, migrations.RunPython.noop)]
