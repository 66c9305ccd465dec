"""Models whose rows, once written, are never changed or deleted (consent ledger, audit log)."""

import re

from django.db import models

IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
PRIVILEGES = {"INSERT", "UPDATE", "DELETE", "TRUNCATE"}


class AppendOnlyError(Exception):
    """Raised on any attempt to change or delete an append-only row."""


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError(f"{self.model.__name__} rows can't be changed")

    def delete(self):
        raise AppendOnlyError(f"{self.model.__name__} rows can't be deleted")

    def bulk_update(self, objs, fields, batch_size=None):
        raise AppendOnlyError(f"{self.model.__name__} rows can't be changed")


class AppendOnlyModel(models.Model):
    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError(f"{type(self).__name__} rows can't be changed")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError(f"{type(self).__name__} rows can't be deleted")


def forbid_changes_sql(table: str) -> tuple[str, str]:
    """PostgreSQL SQL (forward, reverse) that refuses UPDATE, DELETE and TRUNCATE on `table`,
    whoever asks.

    The ORM guards stop honest mistakes; the triggers stop raw SQL and other clients too. Row
    triggers never fire on TRUNCATE, hence the statement trigger beside them. Only the table's
    owner can drop or disable a trigger: the app connects as another role (deploy/), whose
    UPDATE, DELETE and TRUNCATE rights on the table are also taken back here (the default
    privileges in deploy/ grant them on every new table). The forward SQL may be run again on a
    table that has older triggers: it brings them up to date.
    No percent sign in here: Django passes migration SQL through the driver's formatting.
    """
    fn = f"{table}_append_only"
    forward = f"""
        CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION USING
                MESSAGE = '{table} is append-only: ' || TG_OP || ' refused',
                ERRCODE = 'insufficient_privilege';
        END $$ LANGUAGE plpgsql;
        DROP TRIGGER IF EXISTS {fn} ON {table};
        CREATE TRIGGER {fn} BEFORE UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION {fn}();
        DROP TRIGGER IF EXISTS {truncate_trigger(table)} ON {table};
        CREATE TRIGGER {truncate_trigger(table)} BEFORE TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION {fn}();
        {revoke_sql(table, ["UPDATE", "DELETE", "TRUNCATE"])}
    """
    reverse = (
        f"DROP TRIGGER IF EXISTS {truncate_trigger(table)} ON {table}; "
        f"DROP TRIGGER IF EXISTS {fn} ON {table}; DROP FUNCTION IF EXISTS {fn}();"
    )
    return forward, reverse


def truncate_trigger(table: str) -> str:
    """Name of the statement trigger that refuses TRUNCATE on `table`."""
    return f"{table}_append_only_truncate"


def revoke_sql(table: str, privileges: list[str]) -> str:
    """PostgreSQL SQL that takes `privileges` on `table` back from every role but its owner.

    Raises ValueError for a table name or privilege that isn't a plain SQL word.
    """
    if not IDENTIFIER.fullmatch(table) or not set(privileges) <= PRIVILEGES:
        raise ValueError(f"not a table name and privileges: {table!r} {privileges!r}")
    listed = ", ".join(privileges)
    quoted = ", ".join(f"'{privilege}'" for privilege in privileges)
    # Built from names checked above, in migrations only: nothing here comes from a user.
    return f"""
        DO $revoke$
        DECLARE
            grantee oid;
        BEGIN
            FOR grantee IN
                SELECT DISTINCT acl.grantee
                FROM pg_catalog.pg_class rel, pg_catalog.aclexplode(rel.relacl) acl
                WHERE rel.oid = '{table}'::regclass
                  AND acl.grantee <> rel.relowner
                  AND acl.privilege_type IN ({quoted})
            LOOP
                EXECUTE 'REVOKE {listed} ON {table} FROM ' || CASE
                    WHEN grantee = 0 THEN 'PUBLIC'
                    ELSE quote_ident(pg_catalog.pg_get_userbyid(grantee))
                END;
            END LOOP;
        END $revoke$;
    """  # noqa: S608
