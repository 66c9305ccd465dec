"""`field__any=[...]`: membership in a long list of values, sent as one array on PostgreSQL.

`__in` with thousands of values writes a placeholder per value into the SQL, and preparing that
text (Django's per-value preparation, then psycopg's scan of it for placeholders, not cached
past a few kB) cost an import's visits step more time than the database spent answering.
`__any` sends the same values as one parameter, `= ANY(%s::<column type>[])`, which also uses
the column's index; elsewhere (SQLite, a subquery) it is `__in`. `any_sql` is the same for raw
SQL.
"""

from collections.abc import Collection
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connection, models
from django.db.models.lookups import In


class AnyOf(In):
    lookup_name = "any"

    def as_sql(self, compiler, connection):  # type: ignore[no-untyped-def]
        if connection.vendor != "postgresql" or not self.rhs_is_direct_value():
            return super().as_sql(compiler, connection)
        field = self.lhs.output_field
        values = [
            field.get_db_prep_value(value, connection, prepared=True)
            for value in dict.fromkeys(self.rhs)
            if value is not None
        ]
        if not values:
            raise EmptyResultSet
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(%s::{field.db_type(connection)}[])", [*lhs_params, values]


# A relation takes its lookups from its own classes only.
models.Field.register_lookup(AnyOf)
models.ForeignObject.register_lookup(AnyOf)


def any_sql(column: str, values: Collection[Any], db_type: str | None) -> tuple[str, list[Any]]:
    """`column` among `values` for raw SQL: the condition and its parameters."""
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s::{db_type}[])", [list(values)]
    return f"{column} IN ({', '.join(['%s'] * len(values))})", list(values)
