"""Models whose rows, once written, are never changed or deleted (consent ledger, audit log)."""

from django.db import models


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
    """PostgreSQL trigger SQL (forward, reverse) that refuses UPDATE and DELETE on `table`.

    The ORM guards stop honest mistakes; the trigger stops raw SQL and other clients too.
    """
    fn = f"{table}_append_only"
    forward = f"""
        CREATE FUNCTION {fn}() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION '{table} is append-only';
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER {fn} BEFORE UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION {fn}();
    """
    reverse = f"DROP TRIGGER IF EXISTS {fn} ON {table}; DROP FUNCTION IF EXISTS {fn}();"
    return forward, reverse
