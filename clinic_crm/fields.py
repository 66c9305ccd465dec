"""Model fields that keep patient data encrypted at rest and searchable by exact match.

An encrypted field stores a token from `clinic_crm.crypto`; what a row loads stays sealed until
the attribute is read, so listing ids or counting rows never decrypts anything. Writes are
encrypted in `pre_save`, where the row (and so its uuid) is known: that makes plain `save()` and
`bulk_create()` work, while `update()`/`bulk_update()`/`filter()` with a plaintext value raise
rather than store or compare plaintext. Search by equality goes through a `BlindIndexField`.
"""

from collections.abc import Callable

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.lookups import Exact
from django.db.models.query_utils import DeferredAttribute
from django.utils.translation import gettext_lazy as _

from clinic_crm import crypto
from clinic_crm.normalise import (
    SOURCE_SEPARATOR,
    phone_e164,
    phone_has_extension,
    phone_is_mobile,
)
from clinic_crm.validators import validate_multiline, validate_single_line


class Sealed:
    """A token as stored in the database, not yet decrypted."""

    __slots__ = ("token",)

    def __init__(self, token: str):
        self.token = token

    def __repr__(self) -> str:
        return "<Sealed>"


class _DecryptingAttribute(DeferredAttribute):
    # A data descriptor (it has __set__), so reads come here even once the value is loaded.
    def __set__(self, instance, value):
        instance.__dict__[self.field.attname] = value

    def __get__(self, instance, cls=None):
        if instance is None:
            return self
        value = super().__get__(instance, cls)
        if isinstance(value, Sealed):
            value = self.field.unseal(instance, value)
            instance.__dict__[self.field.attname] = value
        return value


class EncryptedTextField(models.TextField):
    """Text encrypted with AES-GCM, bound to table, column and the row's `uuid`.

    `erase_with_patient` marks text about a patient that isn't a medical record the law makes
    us keep (a message we sent): patients.services.patient_erase blanks it.
    """

    descriptor_class = _DecryptingAttribute
    form_widget: type[forms.Widget] = forms.Textarea
    default_validators = [validate_multiline]

    def __init__(self, *args, erase_with_patient: bool = False, **kwargs):
        self.erase_with_patient = erase_with_patient
        super().__init__(*args, **kwargs)

    def context(self, instance) -> str:
        return f"{self.model._meta.db_table}.{self.column}.{instance.uuid}"

    def unseal(self, instance, sealed: Sealed) -> str:
        return crypto.keyring().decrypt(sealed.token, self.context(instance))

    def seal(self, instance) -> Sealed | str | None:
        """The value to store for `instance`: a fresh token under the newest key."""
        value = self.value_from_object(instance)
        if value in (None, ""):
            return value
        return Sealed(crypto.keyring().encrypt(str(value), self.context(instance)))

    def stored_key_id(self, instance) -> str | None:
        """Key id of the loaded, still-sealed value; None when empty or already read."""
        raw = instance.__dict__.get(self.attname)
        return crypto.token_key_id(raw.token) if isinstance(raw, Sealed) else None

    def from_db_value(self, value, expression, connection):
        return Sealed(value) if value else value

    def pre_save(self, model_instance, add):
        raw = model_instance.__dict__.get(self.attname)
        if isinstance(raw, Sealed):
            return raw
        return self.seal(model_instance)

    def get_db_prep_value(self, value, connection, prepared=False):
        if value is None or value == "":
            return value
        if isinstance(value, Sealed):
            return value.token
        raise TypeError(
            f"{self.model.__name__}.{self.name} is encrypted: write it with save() or "
            "bulk_create(), and search it through its blind index"
        )

    # Lookups that take no value, or pass it through get_db_prep_value (which refuses
    # plaintext). The pattern lookups (iexact, contains, startswith, regex, ...) skip that step:
    # they would send the plaintext to the database as a query parameter, where it can end up in
    # statement logs, and quietly match nothing.
    safe_lookups = frozenset({"exact", "in", "isnull"})

    def get_lookup(self, lookup_name):
        if lookup_name not in self.safe_lookups:
            raise TypeError(
                f"{self.model.__name__}.{self.name} is encrypted: it can't be searched with "
                f"__{lookup_name}; search it through its blind index"
            )
        return super().get_lookup(lookup_name)

    def formfield(self, **kwargs):
        return super().formfield(**{"widget": self.form_widget, **kwargs})


class EncryptedCharField(EncryptedTextField):
    """An encrypted single-line value; `max_length` limits the plaintext in forms."""

    form_widget = forms.TextInput
    default_validators = [validate_single_line]

    def formfield(self, **kwargs):
        # The admin gives every TextField a textarea; a name or a phone is one line.
        widget = kwargs.get("widget")
        widget_class = widget if isinstance(widget, type) else type(widget)
        if widget is None or issubclass(widget_class, forms.Textarea):
            kwargs["widget"] = forms.TextInput(attrs={"class": "vTextField"})
        return super().formfield(**kwargs)


class EncryptedPhoneField(EncryptedCharField):
    """A phone number, validated and stored as E.164 (+886912345678)."""

    def to_python(self, value):
        value = super().to_python(value)
        if not value:
            return value
        # Before parsing, which would quietly drop a line break along with the spaces.
        validate_single_line(value)
        if phone_has_extension(value):
            raise ValidationError(
                # A number is stored as E.164, which has no room for an extension.
                _("Enter the number without an extension; write the extension in the notes."),
                code="phone_extension",
            )
        e164 = phone_e164(value)
        if e164 is None:
            raise ValidationError(
                _("Enter a valid phone number, for example 0912 345 678 or +886 912 345 678."),
                code="invalid_phone",
            )
        return e164

    def pre_save(self, model_instance, add):
        # Code paths without full_clean (imports, bulk_create) still store E.164 when valid.
        raw = model_instance.__dict__.get(self.attname)
        if isinstance(raw, str) and raw:
            setattr(model_instance, self.attname, phone_e164(raw) or raw)
        return super().pre_save(model_instance, add)


class BlindDigest(str):
    """A blind-index value to search for, plus the same value under BLIND_INDEX_KEY_PREVIOUS
    while a re-index is under way: `filter(x_bidx=digest)` then matches either, so rows not yet
    re-indexed are still found."""

    previous: str | None

    def __new__(cls, value: str, previous: str | None = None):
        digest = super().__new__(cls, value)
        digest.previous = previous
        return digest


class BlindIndexField(models.CharField):
    """Keyed HMAC of another field's normalised value, kept in step on every save.

    `source` may name several fields (a tuple): their values are joined with SOURCE_SEPARATOR
    before the normaliser sees them, so one index can answer "these two facts together" (the
    phone's last four digits and the birth date) without either being searchable alone.

    A digest is only ever matched whole, so index it with a plain index in the model's
    Meta.indexes, not db_index: on PostgreSQL db_index on a CharField also makes a second,
    LIKE-pattern index (varchar_pattern_ops) that no search of a digest can use and every
    insert pays for.
    """

    SOURCE_SEPARATOR = SOURCE_SEPARATOR

    def __init__(
        self,
        *args,
        source: str | tuple[str, ...] = "",
        normaliser: Callable[[str], str] = str,
        **kw,
    ):
        self.source_fields = (source,) if isinstance(source, str) else tuple(source)
        # Also the HMAC's domain: equal values in two indexes give unrelated digests.
        self.source = "+".join(self.source_fields)
        self.normaliser = normaliser
        kw.setdefault("max_length", 64)
        kw.setdefault("null", True)
        kw.setdefault("blank", True)
        kw.setdefault("editable", False)
        super().__init__(*args, **kw)

    def deconstruct(self):
        # source and normaliser are Python behaviour, not schema: keep them out of migrations.
        name, path, args, kwargs = super().deconstruct()
        return name, path, args, kwargs

    def digest(self, raw: str | None) -> str | None:
        """The index value a search for `raw` must match (a BlindDigest during a re-index)."""
        if not raw:
            return None
        key = self.normaliser(str(raw))
        if not key:
            return None
        previous = crypto.blind_index_previous(self.source, key)
        current = crypto.blind_index(self.source, key)
        return BlindDigest(current, previous) if previous else current

    def source_value(self, instance) -> str | None:
        """What `digest` indexes for `instance`: its source field, or its sources joined."""
        if len(self.source_fields) == 1:
            return getattr(instance, self.source_fields[0])
        values = [getattr(instance, name) for name in self.source_fields]
        if not all(values):
            return None
        return self.SOURCE_SEPARATOR.join(str(value) for value in values)

    def pre_save(self, model_instance, add):
        value = self.digest(self.source_value(model_instance))
        # Stored under the current key only; a plain str for the database driver.
        value = str(value) if value is not None else None
        setattr(model_instance, self.attname, value)
        return value


@BlindIndexField.register_lookup
class BlindIndexExact(Exact):
    """`=` that also matches the previous key's digest while a re-index is under way."""

    lookup_name = "exact"

    def as_sql(self, compiler, connection):
        previous = getattr(self.rhs, "previous", None)
        if not previous:
            return super().as_sql(compiler, connection)
        lhs_sql, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs_sql} IN (%s, %s)", (*lhs_params, str(self.rhs), previous)


class MobileFlagField(models.BooleanField):
    """Whether the phone in `source` can receive SMS, kept in step on every save.

    A landline or a 0800 number stays on the record as a phone to call; consent.selectors asks
    this flag before SMS, since the number itself is encrypted and can't be read in a query.
    """

    def __init__(self, *args, source: str = "", **kwargs):
        self.source = source
        kwargs.setdefault("default", False)
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def pre_save(self, model_instance, add):
        value = phone_is_mobile(getattr(model_instance, self.source) or "")
        setattr(model_instance, self.attname, value)
        return value
