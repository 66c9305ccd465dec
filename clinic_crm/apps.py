from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ClinicCrmConfig(AppConfig):
    name = "clinic_crm"
    verbose_name = "Clinic CRM"

    def ready(self):
        from clinic_crm import crypto, keycheck, lookups  # noqa: F401 - lookups registers __any

        # A malformed key stops every process here, naming the variable, instead of starting
        # a server whose every page is a 500.
        crypto.keys_validate()
        # Setup, not business logic: the first migrate of a database records its keys.
        post_migrate.connect(
            keycheck.record_on_migrate, sender=self, dispatch_uid="clinic_crm.keycheck"
        )
