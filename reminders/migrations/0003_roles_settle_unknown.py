from django.db import migrations

from clinic_crm.roles import sync_roles


class Migration(migrations.Migration):
    """The clinic manager settles messages whose outcome is unknown; the front desk sees
    delivery attempts."""

    dependencies = [("reminders", "0002_roles")]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
