# Status reports look a message up by its provider id; planned messages have none yet, so the
# index holds only messages that have one and the planner's inserts skip it.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0014_skip_without_database_keys"),
        ("patients", "0015_plain_indexes"),
        ("reminders", "0020_outbox_subjects_without_database_keys"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="outboxmessage",
            name="message_provider_id",
        ),
        migrations.AddIndex(
            model_name="outboxmessage",
            index=models.Index(
                condition=models.Q(("provider_id", ""), _negated=True),
                fields=["provider_id"],
                name="message_provider_id_set",
            ),
        ),
    ]
