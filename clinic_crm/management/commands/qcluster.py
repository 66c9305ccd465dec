from django.core.management.base import CommandError
from django_q.management.commands import qcluster

from clinic_crm.keycheck import KeyMismatch, keys_verify


class Command(qcluster.Command):
    """django-q2's qcluster, refusing to start with keys that don't match the stored data."""

    def handle(self, *args, **options):
        try:
            keys_verify()
        except KeyMismatch as exc:
            raise CommandError(str(exc)) from exc
        super().handle(*args, **options)
