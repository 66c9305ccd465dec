from django.db import models


class KeyCheck(models.Model):
    """A value made with each key when the database was first set up.

    A different key can't reproduce it, so a process started with the wrong key refuses to run
    instead of finding nobody (blind index) or failing on every page (encryption). Written by
    clinic_crm.keycheck; never shown in the admin.
    """

    class Purpose(models.TextChoices):
        BLIND_INDEX = "blind_index", "BLIND_INDEX_KEY"
        FIELD_ENCRYPTION = "field_encryption", "FIELD_ENCRYPTION_KEYS"

    purpose = models.CharField(max_length=32, choices=Purpose.choices, primary_key=True)
    # blind_index: HMAC of a fixed label; field_encryption: a token of that label under the key
    # the oldest data may still be under (re-sealed when rotate_keys finishes).
    value = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        default_permissions = ()

    def __str__(self):
        return self.purpose
