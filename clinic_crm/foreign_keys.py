"""A migration's way to take the database's foreign key off a ForeignKey (db_constraint=False)
without rebuilding the table.

AlterField would do it, but on SQLite by copying the whole table into a new one. On PostgreSQL
the key is dropped (and put back when the migration is reversed); SQLite, a development
database, keeps its key.
"""

from collections.abc import Sequence

from django.db import migrations


def drop_foreign_keys(
    app_label: str, model_name: str, fields: Sequence[str]
) -> migrations.RunPython:
    def keys(apps, schema_editor):
        model = apps.get_model(app_label, model_name)
        for name in fields:
            field = model._meta.get_field(name)
            yield (
                model,
                field,
                schema_editor._constraint_names(model, [field.column], foreign_key=True),
            )

    def drop(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for model, _field, names in keys(apps, schema_editor):
            for constraint in names:
                schema_editor.execute(schema_editor._delete_fk_sql(model, constraint))

    def restore(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for model, field, names in keys(apps, schema_editor):
            if not names:
                schema_editor.execute(
                    schema_editor._create_fk_sql(model, field, "_fk_%(to_table)s_%(to_column)s")
                )

    return migrations.RunPython(drop, restore)
