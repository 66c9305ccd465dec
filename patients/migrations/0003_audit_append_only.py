"""The audit entry ↔ patient link becomes an append-only model of its own, and TRUNCATE is
refused on the audit tables as UPDATE and DELETE already were (issue 7, points 10 and 11).

Django can't add `through=` to an existing many-to-many field, so the link rows move from the
old auto-created table to patients_auditlink (with each patient's uuid beside its id) and the
field is declared again over the new table.
"""

import django.db.models.deletion
from django.db import migrations, models

from clinic_crm.append_only import forbid_changes_sql, truncate_trigger

COPY_FORWARD = """
    INSERT INTO patients_auditlink (entry_id, patient_id, patient_uuid)
    SELECT old.auditentry_id, old.patient_id, patient.uuid
    FROM patients_auditentry_patients old
    JOIN patients_patient patient ON patient.id = old.patient_id
    ORDER BY old.id
"""
COPY_BACK = """
    INSERT INTO patients_auditentry_patients (auditentry_id, patient_id)
    SELECT entry_id, patient_id FROM patients_auditlink ORDER BY id
"""


def triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        # Again on the audit log: the same SQL now adds the TRUNCATE trigger to 0002's.
        schema_editor.execute(forbid_changes_sql("patients_auditentry")[0])
        schema_editor.execute(forbid_changes_sql("patients_auditlink")[0])


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(forbid_changes_sql("patients_auditlink")[1])
        schema_editor.execute(
            f"DROP TRIGGER IF EXISTS {truncate_trigger('patients_auditentry')} "
            "ON patients_auditentry"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("patients", "0002_conditions_and_roles"),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditLink",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "patient_uuid",
                    models.UUIDField(editable=False, verbose_name="patient reference"),
                ),
                (
                    "entry",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="links",
                        to="patients.auditentry",
                        verbose_name="audit entry",
                    ),
                ),
                (
                    "patient",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="audit_links",
                        to="patients.patient",
                        verbose_name="patient",
                    ),
                ),
            ],
            options={
                "verbose_name": "audited patient",
                "verbose_name_plural": "audited patients",
                "constraints": [
                    models.UniqueConstraint(fields=("entry", "patient"), name="audit_link_once")
                ],
            },
        ),
        migrations.RunSQL(COPY_FORWARD, COPY_BACK),
        migrations.RemoveField(model_name="auditentry", name="patients"),
        migrations.AddField(
            model_name="auditentry",
            name="patients",
            field=models.ManyToManyField(
                related_name="audit_entries",
                through="patients.AuditLink",
                to="patients.patient",
                verbose_name="patients",
            ),
        ),
        migrations.RunPython(triggers, drop_triggers),
    ]
