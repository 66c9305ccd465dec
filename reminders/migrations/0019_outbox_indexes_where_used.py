# Indexes that only cost inserts (the planner writes thousands of rows a pass): the rule's and
# the patient's own indexes, which the unique key and message_patient_recent already start with;
# and the indexes of the records a message is about, now only where a message names one.
#
# By hand, not AlterField: on SQLite that would rebuild the table, which the dashboard's view
# over it forbids. Dropping an index is the same statement on both databases.

import django.db.models.deletion
from django.db import migrations, models


# Django's names of the indexes db_index made, the same on both databases.
DROPPED = {
    "appointment_id": "reminders_outboxmessage_appointment_id_9173bf67",
    "patient_id": "reminders_outboxmessage_patient_id_7c1097c8",
    "prescription_id": "reminders_outboxmessage_prescription_id_adaa199a",
    "procedure_id": "reminders_outboxmessage_procedure_id_2d990175",
    "refill_window_id": "reminders_outboxmessage_refill_window_id_78a72813",
    "rule_id": "reminders_outboxmessage_rule_id_4d4a8f2e",
}


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0013_outbox_indexes_where_used"),
        ("patients", "0015_plain_indexes"),
        ("reminders", "0018_outbox_fallbacks_made_when_needed"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{name}"',
                    reverse_sql=f'CREATE INDEX "{name}" ON "reminders_outboxmessage" ("{column}")',
                )
                for column, name in DROPPED.items()
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="outboxmessage",
                    name="appointment",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        to="patients.appointment",
                    ),
                ),
                migrations.AlterField(
                    model_name="outboxmessage",
                    name="patient",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="messages",
                        to="patients.patient",
                        verbose_name="patient",
                    ),
                ),
                migrations.AlterField(
                    model_name="outboxmessage",
                    name="prescription",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        to="patients.prescription",
                    ),
                ),
                migrations.AlterField(
                    model_name="outboxmessage",
                    name="procedure",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        to="patients.procedure",
                    ),
                ),
                migrations.AlterField(
                    model_name="outboxmessage",
                    name="refill_window",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        to="patients.refillwindow",
                    ),
                ),
                migrations.AlterField(
                    model_name="outboxmessage",
                    name="rule",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="messages",
                        to="campaigns.rule",
                        verbose_name="rule",
                    ),
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="outboxmessage",
            index=models.Index(
                condition=models.Q(("appointment__isnull", False)),
                fields=["appointment"],
                name="message_appointment",
            ),
        ),
        migrations.AddIndex(
            model_name="outboxmessage",
            index=models.Index(
                condition=models.Q(("procedure__isnull", False)),
                fields=["procedure"],
                name="message_procedure",
            ),
        ),
        migrations.AddIndex(
            model_name="outboxmessage",
            index=models.Index(
                condition=models.Q(("prescription__isnull", False)),
                fields=["prescription"],
                name="message_prescription",
            ),
        ),
        migrations.AddIndex(
            model_name="outboxmessage",
            index=models.Index(
                condition=models.Q(("refill_window__isnull", False)),
                fields=["refill_window"],
                name="message_refill_window_id",
            ),
        ),
    ]
