# Indexes that only cost inserts: each blind index loses PostgreSQL's LIKE-pattern twin (db_index
# on a CharField makes both; a digest is only matched whole) and keeps one plain index, now
# declared in Meta.indexes; a visit's patient loses the index that visit_patient_latest, which
# starts with the patient, already gives.
#
# By hand, not AlterField: on SQLite that would rebuild both tables, which the dashboard's view
# over them forbids. Dropping and creating indexes is the same statement on both databases.

import clinic_crm.fields
import django.db.models.deletion
from django.db import migrations, models

BLIND_INDEXES = {
    "name_bidx": "9ff47de4",
    "phone_bidx": "4a24b35c",
    "phone4_birth_bidx": "3c85634e",
    "email_bidx": "5bc862fb",
    "line_user_id_bidx": "f271cada",
    "national_id_bidx": "12dd66ca",
}
VISIT_PATIENT = "patients_visit_patient_id_91d9f43d"


def _drop(name):
    return f'DROP INDEX IF EXISTS "{name}"'


def _old(field, suffix):
    return f"patients_patient_{field}_{suffix}"


class Migration(migrations.Migration):
    dependencies = [
        ("patients", "0014_department_doctor_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                *(
                    migrations.RunSQL(
                        [_drop(_old(field, suffix) + "_like"), _drop(_old(field, suffix))],
                        reverse_sql=(
                            f'CREATE INDEX "{_old(field, suffix)}" ON "patients_patient" ("{field}")'
                        ),
                    )
                    for field, suffix in BLIND_INDEXES.items()
                ),
                migrations.RunSQL(
                    _drop(VISIT_PATIENT),
                    reverse_sql=f'CREATE INDEX "{VISIT_PATIENT}" ON "patients_visit" ("patient_id")',
                ),
            ],
            state_operations=[
                *(
                    migrations.AlterField(
                        model_name="patient",
                        name=field,
                        field=clinic_crm.fields.BlindIndexField(
                            blank=True, editable=False, max_length=64, null=True
                        ),
                    )
                    for field in BLIND_INDEXES
                ),
                migrations.AlterField(
                    model_name="visit",
                    name="patient",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="visits",
                        to="patients.patient",
                        verbose_name="patient",
                    ),
                ),
            ],
        ),
        *(
            migrations.AddIndex(
                model_name="patient",
                index=models.Index(fields=[field], name=f"patient_{field}"),
            )
            for field in BLIND_INDEXES
        ),
    ]
