"""Re-encrypting stored values under the newest key in FIELD_ENCRYPTION_KEYS, and rebuilding
blind indexes under a new BLIND_INDEX_KEY.

Encryption: put the new key first in FIELD_ENCRYPTION_KEYS and keep the old ones after it,
restart every process (so new writes use the new key), run `manage.py rotate_keys`, and only
then remove the old keys. The walk goes by primary key in batches, each committed on its own,
and skips rows already under the newest key, so an interrupted run is finished by running it
again. When a run finishes, the stored key check is sealed with the newest key: from then on
the old key may go, and a process started without a key the data still needs refuses to start.

Blind index: set BLIND_INDEX_KEY to the new key and BLIND_INDEX_KEY_PREVIOUS to the old one,
restart every process (new writes index under the new key; searches match either), run
`manage.py reindex`, then remove BLIND_INDEX_KEY_PREVIOUS and restart. Same batches, same
resumption; the stored key check moves to the new key when a run finishes.
"""

from collections.abc import Callable
from dataclasses import dataclass

from django.apps import apps
from django.db import IntegrityError, models, router, transaction

from clinic_crm import crypto, keycheck
from clinic_crm.fields import BlindIndexField, EncryptedTextField


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
    if not dry_run:
        # Only now may an older key go: the check value under it kept it required until here.
        keycheck.keycheck_encryption_update()
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
            query = rows.only(*load)
            if last_pk is not None:
                query = query.filter(pk__gt=last_pk)
            if not dry_run:
                # Locked until the batch commits, so a concurrent save can't be overwritten
                # with the value read here.
                query = query.select_for_update()
            batch = list(query[:batch_size])
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


def indexed_models() -> list[tuple[type[models.Model], list[BlindIndexField]]]:
    """Every model with blind-index columns of its own, with those fields."""
    found = []
    for model in apps.get_models():
        if model._meta.proxy:
            continue
        fields = [f for f in model._meta.local_concrete_fields if isinstance(f, BlindIndexField)]
        if fields:
            found.append((model, fields))
    return found


class ReindexError(Exception):
    """A row's blind index could not be rebuilt; the message names the row, never its data."""


def blind_index_rebuild(
    *,
    batch_size: int = 500,
    progress: Callable[[RotationProgress], None] | None = None,
    dry_run: bool = False,
) -> int:
    """Recompute every blind index under BLIND_INDEX_KEY from its decrypted source; returns how
    many rows changed (with `dry_run`, would change; nothing is written).

    A finished run records BLIND_INDEX_KEY as the key in use. Raises ReindexError naming the row
    when a value can't be decrypted or its new index collides with a unique one; batches before
    it stay committed.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    changed = 0
    for model, fields in indexed_models():
        changed += _reindex_model(
            model=model, fields=fields, batch_size=batch_size, progress=progress, dry_run=dry_run
        )
    if not dry_run:
        keycheck.keycheck_blind_index_update()
    return changed


def _reindex_model(
    *,
    model: type[models.Model],
    fields: list[BlindIndexField],
    batch_size: int,
    progress: Callable[[RotationProgress], None] | None,
    dry_run: bool,
) -> int:
    using = router.db_for_write(model)
    rows = model._base_manager.db_manager(using).order_by("pk")
    load = ["pk", *(["uuid"] if _has_field(model, "uuid") else [])]
    load += [name for f in fields for name in (*f.source_fields, f.attname)]
    total = rows.count()
    scanned = changed = 0
    last_pk = None
    while True:
        with transaction.atomic(using=using):
            query = rows.only(*load)
            if last_pk is not None:
                query = query.filter(pk__gt=last_pk)
            if not dry_run:
                query = query.select_for_update()
            batch = list(query[:batch_size])
            for row in batch:
                values = _fresh_digests(model=model, row=row, fields=fields)
                if not values:
                    continue
                changed += 1
                if not dry_run:
                    _write_digests(model=model, row=row, values=values, using=using)
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


def _fresh_digests(
    *, model: type[models.Model], row: models.Model, fields: list[BlindIndexField]
) -> dict[str, str | None]:
    values = {}
    for field in fields:
        try:
            digest = field.digest(field.source_value(row))
        except crypto.DecryptionError as exc:
            raise ReindexError(
                f"{model.__name__} id {row.pk}, field {field.source}: {exc}"
            ) from exc
        fresh = str(digest) if digest is not None else None
        if fresh != getattr(row, field.attname):
            values[field.attname] = fresh
    return values


def _write_digests(
    *, model: type[models.Model], row: models.Model, values: dict[str, str | None], using: str
) -> None:
    try:
        # update(), not save(): a re-index is not a change anyone made to the record.
        model._base_manager.db_manager(using).filter(pk=row.pk).update(**values)
    except IntegrityError as exc:
        raise ReindexError(
            f"{model.__name__} id {row.pk}: its rebuilt index ({', '.join(values)}) equals another "
            "row's; two records hold the same value. Merge or correct them, then run again."
        ) from exc
