"""Staff groups and what each may do; applied by data migrations."""

FRONT_DESK = "Front desk"
CLINIC_MANAGER = "Clinic manager"

_RECORDS = ["patient", "visit", "prescription", "refillwindow", "procedure", "appointment"]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    FRONT_DESK: [
        *(f"patients.{verb}_{model}" for model in _RECORDS for verb in ("view", "add", "change")),
        "patients.export_patient",
        "patients.view_condition",
        "patients.view_clinicprofile",
        "patients.view_clinicday",
        "consent.view_consententry",
        "consent.add_consententry",
        "consent.view_consentstate",
        "campaigns.view_rule",
        "campaigns.view_skip",
        "reminders.view_outboxmessage",
        "reminders.view_attempt",
        "reminders.view_stafftask",
        "reminders.change_stafftask",
        # The inbox: read, assign, mark handled, link a sender; write to patients; snippets.
        "reminders.view_inboundmessage",
        "reminders.change_inboundmessage",
        "reminders.send_staff_message",
        "reminders.view_snippet",
        # Group messages: the front desk only to a doctor's patients of one day ("the doctor
        # is 30 minutes late"); a segment (age, condition, …) is the manager's.
        "reminders.view_groupsend",
        "reminders.send_day_group_message",
    ],
}
ROLE_PERMISSIONS[CLINIC_MANAGER] = [
    *ROLE_PERMISSIONS[FRONT_DESK],
    "patients.erase_patient",
    "patients.change_clinicprofile",
    *(f"patients.{verb}_clinicday" for verb in ("add", "change", "delete")),
    "patients.add_condition",
    "patients.change_condition",
    "patients.view_auditentry",
    *(
        f"campaigns.{verb}_{model}"
        for model in ("rule", "messagetemplate")
        for verb in ("view", "add", "change")
    ),
    "reminders.change_outboxmessage",  # settle messages whose outcome is unknown
    *(f"reminders.{verb}_snippet" for verb in ("add", "change", "delete")),
    "reminders.send_group_message",
]


def sync_roles(apps, schema_editor=None) -> None:
    """Create the groups and set their permissions to exactly ROLE_PERMISSIONS."""
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after all migrations; the groups need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, apps=apps)
        app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=name)
        wanted = {tuple(dotted.split(".")) for dotted in codenames}
        # Only models that exist at this point of the migration history; a later migration
        # of the app that adds a model calls this again.
        perms = [
            p
            for p in Permission.objects.select_related("content_type")
            if (p.content_type.app_label, p.codename) in wanted
        ]
        group.permissions.set(perms)
