"""Insert many new rows at once: PostgreSQL COPY there, bulk_create elsewhere (SQLite).

Profiling a 20,000-patient import put a third of its time in building Django's bulk INSERT
(its compiler, then psycopg rewriting a statement with hundreds of thousands of parameters) and
the database's parsing of it. COPY streams the same values instead. The values are the ones
bulk_create would store, computed by the same code: each field's own `pre_save` (encryption
bound to the row's uuid, blind indexes, E.164 phones, the SMS flag, created_at) and
`get_db_prep_save`. The ids are taken from the table's sequence first, so the objects come back
with their pk set, as from bulk_create, for the audit links, consents and refill windows that
point at them.

`insert_select` writes rows that a query makes (INSERT … SELECT): the planner's call tasks.

The planner writes its outbox rows and skips the same way (on SQLite; on PostgreSQL it plans
in one statement, campaigns.plan_sql), where a row already stored (planned
by another worker at the same moment, or a skip recorded on an earlier pass) is skipped or
updated as bulk_create's ignore_conflicts / update_conflicts would: COPY into a temporary
table, then one INSERT … SELECT … ON CONFLICT.
"""

import uuid
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

from django.db import connection, models, transaction

from clinic_crm.fields import EncryptedTextField, Sealed

BATCH = 2000


def insert_new(
    model: type[models.Model],
    objs: Sequence[models.Model],
    *,
    unique_fields: Sequence[str] = (),
    update_fields: Sequence[str] = (),
) -> None:
    """Save `objs` (new, unsaved, pk unset) as bulk_create would, and set their pks.

    With `unique_fields`, an object whose key is stored already is not inserted (its pk is set
    all the same, to an id nothing uses) or, with `update_fields`, updates those fields of the
    stored row."""
    if not objs:
        return
    for obj in objs:
        # As bulk_create: a relation set to an object saved since takes its id (an unsaved
        # one raises ValueError).
        obj._prepare_related_fields_for_save(operation_name="insert_new")  # type: ignore[attr-defined]
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(
            objs,
            batch_size=BATCH,
            ignore_conflicts=bool(unique_fields) and not update_fields,
            update_conflicts=bool(update_fields),
            unique_fields=list(unique_fields) if update_fields else None,
            update_fields=list(update_fields) or None,
        )
        return
    meta = model._meta
    pk_column = meta.pk.column  # type: ignore[union-attr]
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    names = ", ".join(quote(str(c)) for c in [pk_column, *(f.column for f in fields)])
    # psycopg's own errors (a unique value a concurrent writer took) become Django's, which
    # the importer catches to find and refuse the row.
    with connection.wrap_database_errors, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            # The sequence looked up once (a subquery), not once per id: a tenth of the time.
            "SELECT nextval((SELECT pg_get_serial_sequence(%s, %s))::regclass)"
            " FROM generate_series(1, %s)",
            [meta.db_table, pk_column, len(objs)],
        )
        ids = [row[0] for row in cursor.fetchall()]
        target = table
        if unique_fields:
            target = quote(f"copy_{meta.db_table}")
            cursor.execute(f"CREATE TEMPORARY TABLE {target} (LIKE {table}) ON COMMIT DROP")
        # Field order matters as in bulk_create: a phone's pre_save stores its E.164 form,
        # which the blind index and the SMS flag after it read.
        prepare = [(f.pre_save, _converter(f)) for f in fields]
        with cursor.copy(f"COPY {target} ({names}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for pk, obj in zip(ids, objs, strict=True):
                copy.write_row(
                    [pk, *(convert(pre_save(obj, True)) for pre_save, convert in prepare)]
                )
        if unique_fields:
            key = ", ".join(quote(_column(model, name)) for name in unique_fields)
            action = "DO NOTHING"
            if update_fields:
                columns = [quote(_column(model, name)) for name in update_fields]
                action = "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)
            cursor.execute(
                f"INSERT INTO {table} ({names}) SELECT {names} FROM {target} "  # noqa: S608
                f"ON CONFLICT ({key}) {action}"
            )
            cursor.execute(f"DROP TABLE {target}")
    for pk, obj in zip(ids, objs, strict=True):
        obj.pk = pk
        obj._state.adding = False
        obj._state.db = connection.alias


def default_values(model: type[models.Model], given: Sequence[str]) -> dict[str, Any]:
    """Each concrete column of `model` but the pk and those `given`, with the value a new row
    gets when nothing sets it: the field's default, or the time now for auto_now(_add)."""
    values = {}
    for field in model._meta.concrete_fields:
        if field.primary_key or field.column in given:
            continue
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            value = field.pre_save(model(), add=True)
        else:
            value = field.get_default()
        values[str(field.column)] = field.get_db_prep_save(value, connection=connection)
    return values


def insert_select(model: type[models.Model], rows: models.QuerySet[Any]) -> int:
    """INSERT INTO `model`'s table SELECT `rows`, skipping a row whose unique key is stored
    already: one statement, on both databases. `rows` is a values() query whose names are
    the table's column names; every other column gets its default. Returns how many were
    inserted."""
    given = [*rows.query.values_select, *rows.query.annotation_select]
    defaults = default_values(model, given)
    quote = connection.ops.quote_name
    sql, params = rows.order_by().query.sql_with_params()
    columns = ", ".join(quote(column) for column in [*given, *defaults])
    select = ", ".join([*(f"s.{quote(column)}" for column in given), *(["%s"] * len(defaults))])
    with connection.cursor() as cursor:
        # WHERE true: SQLite would read ON CONFLICT as the join's ON otherwise.
        cursor.execute(
            f"INSERT INTO {quote(model._meta.db_table)} ({columns})"  # noqa: S608
            f" SELECT {select} FROM ({sql}) AS s WHERE true ON CONFLICT DO NOTHING",
            [*defaults.values(), *params],
        )
        return int(cursor.rowcount)


def _column(model: type[models.Model], name: str) -> str:
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field)  # noqa: S101 - a concrete field, not a relation
    return str(field.column)


# Django's own conversions that leave a value of these exact types as it is on PostgreSQL; a
# field class that overrides any of them (a chart number's to_python, an encrypted field's
# get_db_prep_value) is always converted.
_IDENTITY: tuple[tuple[type[models.Field], tuple[type, ...]], ...] = (
    (models.CharField, (str,)),
    (models.TextField, (str,)),
    (models.BooleanField, (bool,)),
    (models.IntegerField, (int,)),
    (models.UUIDField, (uuid.UUID,)),
)
_CONVERSIONS = ("get_db_prep_save", "get_db_prep_value", "get_prep_value", "to_python")


def _converter(field: models.Field) -> Callable[[Any], Any]:
    """`field.get_db_prep_save`, skipped for values it would return unchanged: profiling
    showed the calls (one per cell) cost a fifth of the COPY's time."""

    def convert(value: Any) -> Any:
        return field.get_db_prep_save(value, connection=connection)

    if isinstance(field, EncryptedTextField):
        # Its get_db_prep_value: the sealed token, an empty value as it is, plaintext refused.
        def unseal_token(value: Any) -> Any:
            return value.token if isinstance(value, Sealed) else convert(value)

        return unseal_token
    if any(
        not getattr(type(field), name).__module__.startswith("django.") for name in _CONVERSIONS
    ):
        return convert
    plain: tuple[type, ...] = ()
    if type(field) is models.DateField:  # not DateTimeField: naive datetimes get a zone
        plain = (date,)
    for base, types in _IDENTITY:
        if isinstance(field, base):
            plain = types
    if isinstance(field, models.UUIDField) and not connection.features.has_native_uuid_field:
        plain = ()
    if isinstance(field, models.ForeignKey) and isinstance(
        field.target_field, (models.AutoField, models.BigAutoField)
    ):
        plain = (int,)

    def convert_unless_plain(value: Any) -> Any:
        if value is None or type(value) in plain:
            return value
        return field.get_db_prep_save(value, connection=connection)

    if type(field) is models.DateTimeField:
        # An aware datetime is stored as it is; a naive one gets Django's warning and zone.
        def convert_unless_aware(value: Any) -> Any:
            if value is None or (type(value) is datetime and value.tzinfo is not None):
                return value
            return field.get_db_prep_save(value, connection=connection)

        return convert_unless_aware
    return convert_unless_plain
