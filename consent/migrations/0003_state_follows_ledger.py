"""On PostgreSQL: TRUNCATE is refused on the consent ledger, and the current-state table can
only say what the newest ledger entry says (issue 7, point 11).

consent.services writes a ledger entry and then points the state at it, in one transaction;
the trigger below checks that every state row written is exactly that: its entry exists, is
for the same patient, purpose and channel, grants when the state says granted, carries the
state's time, and no newer entry for that patient × purpose × channel exists. So a state can
change only together with a ledger row that says so. States are never deleted (a patient with
consent history can't be deleted either: the ledger PROTECTs it).
No percent sign in the SQL: Django passes it through the driver's formatting.
"""

from django.db import migrations

from clinic_crm.append_only import forbid_changes_sql, revoke_sql, truncate_trigger

STATE_FOLLOWS_LEDGER = """
    CREATE OR REPLACE FUNCTION consent_consentstate_follows_ledger() RETURNS trigger AS $$
    DECLARE
        entry RECORD;
    BEGIN
        IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
            RAISE EXCEPTION USING
                MESSAGE = 'consent_consentstate rows are never removed: ' || TG_OP || ' refused',
                ERRCODE = 'insufficient_privilege';
        END IF;
        IF TG_OP = 'UPDATE' AND (NEW.id, NEW.patient_id, NEW.purpose, NEW.channel)
                IS DISTINCT FROM (OLD.id, OLD.patient_id, OLD.purpose, OLD.channel) THEN
            RAISE EXCEPTION USING
                MESSAGE = 'a consent state keeps its patient, purpose and channel',
                ERRCODE = 'check_violation';
        END IF;
        SELECT id, patient_id, purpose, channel, action, recorded_at INTO entry
            FROM consent_consententry WHERE id = NEW.entry_id;
        IF NOT FOUND
                OR entry.patient_id <> NEW.patient_id
                OR entry.purpose <> NEW.purpose
                OR entry.channel <> NEW.channel
                OR NEW.granted IS DISTINCT FROM (entry.action = 'grant')
                OR NEW.changed_at IS DISTINCT FROM entry.recorded_at THEN
            RAISE EXCEPTION USING
                MESSAGE = 'a consent state must say what its ledger entry says',
                ERRCODE = 'check_violation';
        END IF;
        -- Newest by time, then by id: consent_record and consent_bulk_record let the later
        -- of two entries recorded at the same instant win.
        IF EXISTS (
            SELECT 1 FROM consent_consententry newer
            WHERE newer.patient_id = NEW.patient_id
              AND newer.purpose = NEW.purpose
              AND newer.channel = NEW.channel
              AND (newer.recorded_at > entry.recorded_at
                   OR (newer.recorded_at = entry.recorded_at AND newer.id > entry.id))
        ) THEN
            RAISE EXCEPTION USING
                MESSAGE = 'a consent state must follow the newest ledger entry',
                ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$ LANGUAGE plpgsql;
    CREATE TRIGGER consent_consentstate_follows_ledger
        BEFORE INSERT OR UPDATE OR DELETE ON consent_consentstate
        FOR EACH ROW EXECUTE FUNCTION consent_consentstate_follows_ledger();
    CREATE TRIGGER consent_consentstate_no_truncate
        BEFORE TRUNCATE ON consent_consentstate
        FOR EACH STATEMENT EXECUTE FUNCTION consent_consentstate_follows_ledger();
"""
# Before the trigger: a state row that doesn't say what the newest entry says (written by hand,
# or by an older bug) is brought in line with the ledger, which is the record. Without this the
# next consent_record for that patient × purpose × channel would be refused.
STATES_FOLLOW_LEDGER_NOW = """
    UPDATE consent_consentstate state
    SET granted = (newest.action = 'grant'), entry_id = newest.id,
        changed_at = newest.recorded_at
    FROM (
        SELECT DISTINCT ON (patient_id, purpose, channel)
            id, patient_id, purpose, channel, action, recorded_at
        FROM consent_consententry
        ORDER BY patient_id, purpose, channel, recorded_at DESC, id DESC
    ) newest
    WHERE state.patient_id = newest.patient_id
      AND state.purpose = newest.purpose
      AND state.channel = newest.channel
      AND (state.entry_id, state.granted, state.changed_at)
          IS DISTINCT FROM (newest.id, newest.action = 'grant', newest.recorded_at)
"""
DROP_STATE_TRIGGERS = """
    DROP TRIGGER IF EXISTS consent_consentstate_no_truncate ON consent_consentstate;
    DROP TRIGGER IF EXISTS consent_consentstate_follows_ledger ON consent_consentstate;
    DROP FUNCTION IF EXISTS consent_consentstate_follows_ledger();
"""


def triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        # Again on the ledger: the same SQL now adds the TRUNCATE trigger to patients/0002's.
        schema_editor.execute(forbid_changes_sql("consent_consententry")[0])
        schema_editor.execute(STATES_FOLLOW_LEDGER_NOW)
        schema_editor.execute(STATE_FOLLOWS_LEDGER)
        # The app role keeps INSERT and UPDATE (consent_record needs them), nothing more.
        schema_editor.execute(revoke_sql("consent_consentstate", ["DELETE", "TRUNCATE"]))


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_STATE_TRIGGERS)
        schema_editor.execute(
            f"DROP TRIGGER IF EXISTS {truncate_trigger('consent_consententry')} "
            "ON consent_consententry"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("consent", "0002_verbose_names"),
        # Which created the ledger's first trigger.
        ("patients", "0002_conditions_and_roles"),
    ]

    operations = [
        migrations.RunPython(triggers, drop_triggers),
    ]
