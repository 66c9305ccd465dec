from django.apps import AppConfig


class ClinicCrmConfig(AppConfig):
    name = "clinic_crm"
    verbose_name = "Clinic CRM"
