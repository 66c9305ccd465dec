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
        ("campaigns", "0012_rule_kind_visit_survey"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "campaigns_skip_rule_id_cf501ee6"',
                    reverse_sql='CREATE INDEX "campaigns_skip_rule_id_cf501ee6" ON "campaigns_skip" ("rule_id")',
                ),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="skip",
                    name="rule",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="skips",
                        to="campaigns.rule",
                        verbose_name="rule",
                    ),
                ),
            ],
        ),
    ]
