-- Two PostgreSQL roles for the clinic CRM: one that owns the schema, one the app runs as.
--
-- OWNER owns the database, its public schema, every table, sequence and trigger. It runs
--   `manage.py migrate` and nothing else.
-- APP is what the web app, the django-q2 worker and the other manage.py commands connect as.
--   It may SELECT, INSERT, UPDATE and DELETE rows and use sequences, and that is all: it owns
--   nothing, so it can't ALTER or DROP a table, DISABLE or DROP a trigger, or TRUNCATE. On the
--   append-only tables (audit log, audit links, consent ledger) it may only SELECT and INSERT,
--   and the consent current-state table takes a row only together with the ledger entry it
--   follows (triggers the migrations install, which only the owner could remove).
--
-- Run it as a superuser (or a role with CREATEROLE and CREATEDB) before the first migrate;
-- it may be run again at any time (to change a password, or after restoring a dump):
--
--   psql "postgres://postgres@DBHOST/postgres" -v ON_ERROR_STOP=1 \
--        -v db=crm -v owner=crm_owner -v app=crm_app \
--        -v owner_password="$CRM_OWNER_PASSWORD" -v app_password="$CRM_APP_PASSWORD" \
--        -f deploy/postgres-roles.sql
--
-- The passwords are optional (leave them out with peer or certificate authentication). Then:
--
--   DATABASE_URL=postgres://crm_owner:…@DBHOST/crm  python manage.py migrate
--   DATABASE_URL=postgres://crm_app:…@DBHOST/crm    gunicorn / qcluster / setup_schedules / …
--
-- Tables later migrations create are granted to APP by the default privileges below, so an
-- upgrade is just `migrate` as OWNER again. Moving an install that ran as one role: name that
-- role as OWNER here (it already owns everything) and point the app at the new APP role.
--
-- A superuser can switch any trigger off; neither role here is one, and the app's must never be.

\set ON_ERROR_STOP on
SET crm.owner_role = :'owner';
SET crm.app_role = :'app';

DO $$
DECLARE
    owner_role text := current_setting('crm.owner_role');
    app_role text := current_setting('crm.app_role');
BEGIN
    IF owner_role = app_role THEN
        RAISE EXCEPTION 'the owner and the app must be two different roles';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = owner_role) THEN
        EXECUTE format('CREATE ROLE %I LOGIN', owner_role);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = app_role) THEN
        EXECUTE format('CREATE ROLE %I LOGIN', app_role);
    END IF;
    -- Refuse rather than quietly strip rights from a role that may serve something else.
    IF EXISTS (
        SELECT FROM pg_roles
        WHERE rolname = app_role
          AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls OR rolreplication)
    ) THEN
        RAISE EXCEPTION 'role % may create roles or databases or bypass checks: '
            'the app needs a plain role', app_role;
    END IF;
    IF pg_has_role(app_role, owner_role, 'MEMBER') THEN
        RAISE EXCEPTION 'role % is a member of %, so it could act as the owner', app_role,
            owner_role;
    END IF;
END $$;

\if :{?owner_password}
ALTER ROLE :"owner" PASSWORD :'owner_password';
\endif
\if :{?app_password}
ALTER ROLE :"app" PASSWORD :'app_password';
\endif

SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
ALTER DATABASE :"db" OWNER TO :"owner";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
-- TEMPORARY: the planner writes its rows by COPY into a temporary table, then INSERT … ON
-- CONFLICT (clinic_crm/copy_insert.py); a temporary table is private to its session.
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"app";

\connect :"db"
SET crm.owner_role = :'owner';
SET crm.app_role = :'app';

-- Only the owner creates anything in the schema.
ALTER SCHEMA public OWNER TO :"owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app";

DO $$
BEGIN
    IF EXISTS (
        SELECT FROM pg_class
        WHERE relnamespace = 'public'::regnamespace
          AND relowner = (SELECT oid FROM pg_roles WHERE rolname = current_setting('crm.app_role'))
    ) THEN
        RAISE EXCEPTION 'role % owns tables in this database: make it the owner role instead',
            current_setting('crm.app_role');
    END IF;
END $$;

-- Rows, not structure, on every table the owner creates from now on (each later migrate),
-- including django-q2's queue and task tables and Django's sessions, users and admin log.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app";

-- The same on what exists already (a re-run, or an install moving to two roles) ...
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app";

-- ... but rows of the append-only tables are never changed or removed, and current consent and
-- patients are never removed (a patient is erased: the row stays). (The migrations take the
-- same rights back.)
SELECT format('REVOKE UPDATE, DELETE, TRUNCATE ON %I FROM %I', name, :'app')
FROM unnest(ARRAY['patients_auditentry', 'patients_auditlink', 'consent_consententry']) AS name
WHERE to_regclass(name) IS NOT NULL \gexec
SELECT format('REVOKE DELETE, TRUNCATE ON %I FROM %I', name, :'app')
FROM unnest(ARRAY['consent_consentstate', 'patients_patient']) AS name
WHERE to_regclass(name) IS NOT NULL \gexec
