import pytest

pytestmark = pytest.mark.django_db

FRONT_DESK_ONLY_NOT = [
    "patients.view_auditentry",
    "patients.erase_patient",
    "campaigns.change_rule",
    "reminders.change_outboxmessage",
    "patients.change_clinicprofile",
]


def test_front_desk_keeps_records_and_consent_but_not_rules_audit_or_erasure(front_desk_user):
    assert front_desk_user.has_perms(
        [
            "patients.add_patient",
            "patients.change_patient",
            "patients.add_visit",
            "patients.add_prescription",
            "patients.add_appointment",
            "consent.add_consententry",
            "reminders.view_outboxmessage",
            "reminders.change_stafftask",
        ]
    )
    assert not any(front_desk_user.has_perm(p) for p in FRONT_DESK_ONLY_NOT)
    assert not front_desk_user.has_perm("consent.change_consententry")
    assert not front_desk_user.has_perm("consent.delete_consententry")


def test_manager_also_runs_rules_reads_the_audit_log_and_settles_unknown_sends(manager_user):
    assert manager_user.has_perms(FRONT_DESK_ONLY_NOT)
    assert not manager_user.has_perm("consent.change_consententry")
    assert not manager_user.has_perm("patients.delete_auditentry")
