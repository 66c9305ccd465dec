"""Key check values: refuse to run with keys that don't match the data already stored.

A malformed key is caught when the app loads (clinic_crm.apps). A well-formed but wrong key
can only be caught against the database: at the first migrate a check value is stored for each
key (an HMAC of a fixed label for BLIND_INDEX_KEY; a token sealed with the newest
FIELD_ENCRYPTION_KEYS key), and every server, the worker, `check --database default` and
`migrate` compare the configured keys with it before doing anything. A wrong BLIND_INDEX_KEY
would otherwise make every search and every STOP reply find nobody, silently.
"""

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction

from clinic_crm import crypto

# Sealed by the encryption check value; bound to this context like any other token.
ENCRYPTION_CONTEXT = "clinic_crm_keycheck.value.field_encryption"

REINDEX_HOW = (
    "To change the key on purpose, put the old key in BLIND_INDEX_KEY_PREVIOUS and run "
    "`manage.py reindex`; if the old key is lost, run `manage.py reindex` to rebuild every "
    "index with the new one."
)


class KeyMismatch(ImproperlyConfigured):
    """A configured key is well formed but is not the key the stored data was written with."""


def _table_ready(using: str) -> bool:
    from clinic_crm.models import KeyCheck

    if not router.allow_migrate_model(using, KeyCheck):
        return False
    with connections[using].cursor() as cursor:
        tables = connections[using].introspection.table_names(cursor)
    return KeyCheck._meta.db_table in tables


def keys_verify(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Compare the configured keys with the check values stored at the first migrate.

    Raises KeyMismatch naming the variable and how to fix it. Before the first migrate there is
    nothing to compare with, and it returns.
    """
    from clinic_crm.models import KeyCheck

    if not _table_ready(using):
        return
    stored = dict(KeyCheck.objects.using(using).values_list("purpose", "value"))
    if KeyCheck.Purpose.BLIND_INDEX in stored:
        _verify_blind_index(stored[KeyCheck.Purpose.BLIND_INDEX])
    if KeyCheck.Purpose.FIELD_ENCRYPTION in stored:
        _verify_encryption(stored[KeyCheck.Purpose.FIELD_ENCRYPTION])


def _blind_index_checks() -> list[str]:
    from django.conf import settings

    accepted = [crypto.blind_index_check(settings.BLIND_INDEX_KEY)]
    previous = getattr(settings, "BLIND_INDEX_KEY_PREVIOUS", "")
    if previous:
        # A re-index is under way: the stored value moves to the new key when it finishes.
        accepted.append(crypto.blind_index_check(previous, "BLIND_INDEX_KEY_PREVIOUS"))
    return accepted


def _verify_blind_index(stored: str) -> None:
    from django.conf import settings

    if stored in _blind_index_checks():
        return
    which = (
        "Neither BLIND_INDEX_KEY nor BLIND_INDEX_KEY_PREVIOUS is"
        if getattr(settings, "BLIND_INDEX_KEY_PREVIOUS", "")
        else "BLIND_INDEX_KEY is not"
    )
    raise KeyMismatch(
        f"{which} the key this database's search indexes were made with, so searches and "
        "STOP replies would find nobody. Refusing to start. Set BLIND_INDEX_KEY back to the "
        f"key in use. {REINDEX_HOW}"
    )


def _verify_encryption(token: str) -> None:
    try:
        crypto.keyring().decrypt(token, ENCRYPTION_CONTEXT)
    except crypto.DecryptionError:
        try:
            kid = crypto.token_key_id(token)
        except crypto.DecryptionError:
            kid = "?"
        raise KeyMismatch(
            f"FIELD_ENCRYPTION_KEYS does not hold the key this database's data was encrypted "
            f"with (key id {kid}), so patient data could not be read. Refusing to start. Put "
            "that key back in FIELD_ENCRYPTION_KEYS (newest key first, older keys after it); "
            "remove an old key only after `manage.py rotate_keys` has finished."
        ) from None


def keycheck_record(*, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Store the check value of each key that has none yet; returns the purposes written.

    On a database that already holds patients (an install older than the check), one stored
    blind index is first recomputed from its decrypted value: raises KeyMismatch instead of
    recording keys that don't match the data.
    """
    from clinic_crm.models import KeyCheck

    if not _table_ready(using):
        return []
    with transaction.atomic(using=using):
        have = set(
            KeyCheck.objects.using(using).select_for_update().values_list("purpose", flat=True)
        )
        missing = [purpose for purpose in KeyCheck.Purpose if purpose not in have]
        if not missing:
            return []
        _sample_verify(using=using)
        values = {
            KeyCheck.Purpose.BLIND_INDEX: _current_blind_index_check,
            KeyCheck.Purpose.FIELD_ENCRYPTION: _current_encryption_check,
        }
        KeyCheck.objects.using(using).bulk_create(
            [KeyCheck(purpose=purpose, value=values[purpose]()) for purpose in missing]
        )
    return [str(purpose) for purpose in missing]


def _current_blind_index_check() -> str:
    from django.conf import settings

    return crypto.blind_index_check(settings.BLIND_INDEX_KEY)


def _current_encryption_check() -> str:
    return crypto.keyring().encrypt(crypto.KEY_CHECK_LABEL, ENCRYPTION_CONTEXT)


def keycheck_blind_index_update(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Make BLIND_INDEX_KEY the key on record; called when a re-index has finished."""
    from clinic_crm.models import KeyCheck

    KeyCheck.objects.using(using).update_or_create(
        purpose=KeyCheck.Purpose.BLIND_INDEX, defaults={"value": _current_blind_index_check()}
    )


def keycheck_encryption_update(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Seal the encryption check value with the newest key; called when rotate_keys finished."""
    from clinic_crm.models import KeyCheck

    KeyCheck.objects.using(using).update_or_create(
        purpose=KeyCheck.Purpose.FIELD_ENCRYPTION,
        defaults={"value": _current_encryption_check()},
    )


def _sample_verify(*, using: str) -> None:
    """Recompute one stored blind index from its decrypted source; raise KeyMismatch if off."""
    from clinic_crm.rotation import indexed_models

    for model, fields in indexed_models():
        with connections[using].cursor() as cursor:
            if model._meta.db_table not in connections[using].introspection.table_names(cursor):
                continue
        for field in fields:
            load = ["pk", *field.source_fields, field.attname]
            if any(f.name == "uuid" for f in model._meta.concrete_fields):
                load.append("uuid")
            row = (
                model._base_manager.db_manager(using)
                .filter(**{f"{field.attname}__isnull": False})
                .only(*load)
                .order_by("pk")
                .first()
            )
            if row is None:
                continue
            try:
                source = field.source_value(row)
            except crypto.DecryptionError as exc:
                raise KeyMismatch(
                    f"FIELD_ENCRYPTION_KEYS can't decrypt the stored data ({exc}). Refusing "
                    "to record it as the key in use. Put the key the data was encrypted with "
                    "in FIELD_ENCRYPTION_KEYS."
                ) from None
            expected = field.digest(source)
            if expected is None:
                continue
            if getattr(row, field.attname) not in (expected, getattr(expected, "previous", "")):
                raise KeyMismatch(
                    "BLIND_INDEX_KEY is not the key this database's search indexes were made "
                    "with. Refusing to record it as the key in use. Set BLIND_INDEX_KEY back to "
                    f"the key in use. {REINDEX_HOW}"
                )
            return


def record_on_migrate(*, using: str = DEFAULT_DB_ALIAS, **kwargs) -> None:
    """post_migrate receiver: the first migrate of a database records its keys."""
    keycheck_record(using=using)


@checks.register(checks.Tags.database)
def check_keys_match_data(app_configs=None, databases=None, **kwargs) -> list[checks.Error]:
    """`check --database default` and `migrate` refuse keys that don't match the stored data."""
    errors = []
    for alias in databases or []:
        try:
            keys_verify(using=alias)
        except KeyMismatch as exc:
            errors.append(checks.Error(str(exc), id="clinic_crm.E003"))
    return errors
