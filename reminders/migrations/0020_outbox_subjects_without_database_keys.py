# The records a message is about lose their database foreign keys (db_constraint=False): at
# each commit the keys' checks locked the row every new message names, a fifth of a planning
# pass. The ORM's on_delete and the send gate's re-check stay (reminders.models.OutboxMessage).

import django.db.models.deletion
from django.db import migrations, models

from clinic_crm.foreign_keys import drop_foreign_keys

SUBJECTS = {
    "appointment": ("patients.appointment", django.db.models.deletion.PROTECT),
    "prescription": ("patients.prescription", django.db.models.deletion.PROTECT),
    "procedure": ("patients.procedure", django.db.models.deletion.PROTECT),
    "refill_window": ("patients.refillwindow", django.db.models.deletion.SET_NULL),
}


class Migration(migrations.Migration):
    dependencies = [
        ("patients", "0015_plain_indexes"),
        ("reminders", "0019_outbox_indexes_where_used"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[drop_foreign_keys("reminders", "outboxmessage", list(SUBJECTS))],
            state_operations=[
                migrations.AlterField(
                    model_name="outboxmessage",
                    name=name,
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=on_delete,
                        to=to,
                    ),
                )
                for name, (to, on_delete) in SUBJECTS.items()
            ],
        )
    ]
