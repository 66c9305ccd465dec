from django.db import migrations

from clinic_crm.roles import sync_roles


class Migration(migrations.Migration):
    """The clinic manager keeps the closure dates; the front desk reads them."""

    dependencies = [("patients", "0006_clinic_days")]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
