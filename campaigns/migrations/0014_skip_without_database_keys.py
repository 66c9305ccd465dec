# A skip's rule and patient lose their database foreign keys (db_constraint=False): a planning
# pass writes a skip for every due patient it does not message, and the keys' checks at commit
# locked each patient row. The ORM's on_delete stays (campaigns.models.Skip).

import django.db.models.deletion
from django.db import migrations, models

from clinic_crm.foreign_keys import drop_foreign_keys


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0013_outbox_indexes_where_used"),
        ("patients", "0015_plain_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[drop_foreign_keys("campaigns", "skip", ["rule", "patient"])],
            state_operations=[
                migrations.AlterField(
                    model_name="skip",
                    name="patient",
                    field=models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="rule_skips",
                        to="patients.patient",
                        verbose_name="patient",
                    ),
                ),
                migrations.AlterField(
                    model_name="skip",
                    name="rule",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="skips",
                        to="campaigns.rule",
                        verbose_name="rule",
                    ),
                ),
            ],
        )
    ]
