# Indexes that only cost inserts (the planner writes thousands of rows a pass): the rule's and
# the patient's own indexes, which the unique key and message_patient_recent already start with;
# and the indexes of the records a message is about, now only where a message names one.
#
# By hand, not AlterField: on SQLite that would rebuild the table, which the dashboard's view
# over it forbids. Dropping an index is the same statement on both databases.

import django.db.models.deletion
from django.db import migrations, models


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
                    'DROP INDEX IF EXISTS "reminders_outboxmessage_appointment_id_9173bf67"',
                    reverse_sql='CREATE INDEX "reminders_outboxmessage_appointment_id_9173bf67" ON "reminders_outboxmessage" ("appointment_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "reminders_outboxmessage_patient_id_7c1097c8"',
                    reverse_sql='CREATE INDEX "reminders_outboxmessage_patient_id_7c1097c8" ON "reminders_outboxmessage" ("patient_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "reminders_outboxmessage_prescription_id_adaa199a"',
                    reverse_sql='CREATE INDEX "reminders_outboxmessage_prescription_id_adaa199a" ON "reminders_outboxmessage" ("prescription_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "reminders_outboxmessage_procedure_id_2d990175"',
                    reverse_sql='CREATE INDEX "reminders_outboxmessage_procedure_id_2d990175" ON "reminders_outboxmessage" ("procedure_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "reminders_outboxmessage_refill_window_id_78a72813"',
                    reverse_sql='CREATE INDEX "reminders_outboxmessage_refill_window_id_78a72813" ON "reminders_outboxmessage" ("refill_window_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "reminders_outboxmessage_rule_id_4d4a8f2e"',
                    reverse_sql='CREATE INDEX "reminders_outboxmessage_rule_id_4d4a8f2e" ON "reminders_outboxmessage" ("rule_id")',
                ),
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
