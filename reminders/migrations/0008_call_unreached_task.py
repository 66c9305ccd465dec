from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("reminders", "0007_webhook_events")]

    operations = [
        migrations.AlterField(
            model_name="stafftask",
            name="kind",
            field=models.CharField(
                choices=[
                    ("postop_call", "post-op phone call"),
                    ("review_unknown", "check a message whose outcome is unknown"),
                    ("reschedule", "call back: the patient asked to change the appointment"),
                    ("call_unreached", "call: no channel could deliver a reminder"),
                ],
                max_length=20,
                verbose_name="task",
            ),
        ),
    ]
