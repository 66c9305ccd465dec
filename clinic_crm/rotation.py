"""Re-encrypting stored values under the newest key in FIELD_ENCRYPTION_KEYS.

Rotation order: put the new key first in FIELD_ENCRYPTION_KEYS and keep the old ones after it,
restart every process (so new writes use the new key), run `manage.py rotate_keys`, and only
then remove the old keys. The walk goes by primary key in batches, each committed on its own,
and skips rows already under the newest key, so an interrupted run is finished by running it
again.
"""

from collections.abc import Callable
from dataclasses import dataclass

from django.apps import apps
from django.db import models, router, transaction

from clinic_crm import crypto
from clinic_crm.fields import EncryptedTextField


@dataclass(frozen=True)
class RotationProgress:
    """Where a rotation stands after one batch of one model."""

    model: str
    scanned: int
    total: int
    changed: int


def encrypted_models() -> list[tuple[type[models.Model], list[EncryptedTextField]]]:
    """Every model with encrypted columns of its own, with those fields."""
    found = []
    for model in apps.get_models():
        # A proxy shares its concrete model's table; walking it too would do the work twice.
        if model._meta.proxy:
            continue
        fields = [f for f in model._meta.local_concrete_fields if isinstance(f, EncryptedTextField)]
        if fields:
            found.append((model, fields))
    return found


def encryption_rotate(
    *,
    batch_size: int = 500,
    progress: Callable[[RotationProgress], None] | None = None,
    dry_run: bool = False,
) -> int:
    """Re-encrypt every value not under the newest key; returns how many rows were rewritten.

    With `dry_run`, nothing is written or decrypted and the count is of rows still under an older
    key. Raises crypto.DecryptionError, naming the row, when a value can't be decrypted (its key
    is no longer in FIELD_ENCRYPTION_KEYS, or the data was tampered with); batches before it stay
    committed.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    current = crypto.keyring().current_id
    changed = 0
    for model, fields in encrypted_models():
        changed += _rotate_model(
            model=model,
            fields=fields,
            current=current,
            batch_size=batch_size,
            progress=progress,
            dry_run=dry_run,
        )
    return changed


def _rotate_model(
    *,
    model: type[models.Model],
    fields: list[EncryptedTextField],
    current: str,
    batch_size: int,
    progress: Callable[[RotationProgress], None] | None,
    dry_run: bool,
) -> int:
    using = router.db_for_write(model)
    # _base_manager: a default manager that hides rows (archived, soft-deleted) must not
    # leave them under a key that is about to be removed.
    rows = model._base_manager.db_manager(using).order_by("pk")
    # Only the primary key, the uuid the tokens are bound to, and the encrypted columns: a
    # batch holds batch_size small rows whatever else the table carries.
    load = ["pk", *(["uuid"] if _has_field(model, "uuid") else []), *(f.name for f in fields)]
    total = rows.count()
    scanned = changed = 0
    last_pk = None
    while True:
        with transaction.atomic(using=using):
            batch = rows.only(*load)
            if last_pk is not None:
                batch = batch.filter(pk__gt=last_pk)
            if not dry_run:
                # Locked until the batch commits, so a concurrent save can't be overwritten
                # with the value read here.
                batch = batch.select_for_update()
            batch = list(batch[:batch_size])
            for row in batch:
                # Key ids are read from the still-sealed values: nothing is decrypted for rows
                # that are already done.
                stale = [f for f in fields if f.stored_key_id(row) not in (None, current)]
                if not stale:
                    continue
                changed += 1
                if not dry_run:
                    _reseal(model=model, row=row, fields=stale, using=using)
        if not batch:
            break
        last_pk = batch[-1].pk
        scanned += len(batch)
        if progress is not None:
            progress(
                RotationProgress(
                    model=model.__name__, scanned=scanned, total=total, changed=changed
                )
            )
    return changed


def _reseal(
    *, model: type[models.Model], row: models.Model, fields: list[EncryptedTextField], using: str
) -> None:
    values = {}
    for field in fields:
        try:
            values[field.attname] = field.seal(row)
        except crypto.DecryptionError as exc:
            raise crypto.DecryptionError(
                f"{model.__name__} id {row.pk}, field {field.name}: {exc}"
            ) from exc
    # update(), not save(): save() would also bump auto_now columns such as updated_at, and a
    # rotation is not a change anyone made to the record.
    model._base_manager.db_manager(using).filter(pk=row.pk).update(**values)


def _has_field(model: type[models.Model], name: str) -> bool:
    return any(f.name == name for f in model._meta.concrete_fields)
