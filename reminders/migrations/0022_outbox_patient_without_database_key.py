# A message's patient loses its database foreign key (db_constraint=False): at each commit its
# check locked the patient row of every new message, a tenth of a planning pass at a million
# patients. A patient row is never deleted: the app's role may not (patients/0016).

import django.db.models.deletion
from django.db import migrations, models

from clinic_crm.foreign_keys import drop_foreign_keys


class Migration(migrations.Migration):
    dependencies = [
        ("patients", "0016_patients_never_deleted"),
        ("reminders", "0021_outbox_provider_index_where_set"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[drop_foreign_keys("reminders", "outboxmessage", ["patient"])],
            state_operations=[
                migrations.AlterField(
                    model_name="outboxmessage",
                    name="patient",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="messages",
                        to="patients.patient",
                        verbose_name="patient",
                    ),
                ),
            ],
        )
    ]
