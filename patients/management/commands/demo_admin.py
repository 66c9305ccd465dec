"""Demo accounts with a known password: `manage.py demo_admin` (development only)."""

import os

from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.urls import reverse

from clinic_crm.roles import CLINIC_MANAGER, FRONT_DESK

DEFAULT_PASSWORD = "clinic-demo-2026"  # noqa: S105 - a published demo password, DEBUG only
# Username -> staff group; None makes the superuser.
DEMO_USERS: dict[str, str | None] = {"admin": None, "desk": FRONT_DESK, "manager": CLINIC_MANAGER}


def site_base_url(*, host: str, port: int) -> str:
    """The address a browser on this machine opens for a server bound to `host`:`port`."""
    # A server on every interface is reached from here through the loopback address.
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding to it
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host.strip('[]')}]"
    return f"http://{host}:{port}"


@transaction.atomic
def demo_users_ensure(*, password: str) -> list[str]:
    """Create or reset the demo accounts to `password` and their roles; returns their names.

    Raises CommandError when the staff groups are missing (migrations not run).
    """
    User = get_user_model()
    for username, group_name in DEMO_USERS.items():
        user = User.objects.filter(username=username).first() or User(username=username)
        user.is_active = True
        user.is_staff = True
        user.is_superuser = group_name is None
        # Reset on every run, so the password printed below is always the one that works.
        user.set_password(password)
        user.save()
        if group_name is not None:
            group = Group.objects.filter(name=group_name).first()
            if group is None:
                raise CommandError(f"Group {group_name!r} is missing: run migrate first.")
            user.groups.set([group])
    # A demo login mistyped five times would otherwise stay locked out for a quarter hour.
    AccessAttempt.objects.filter(username__in=DEMO_USERS).delete()
    return list(DEMO_USERS)


class Command(BaseCommand):
    help = "Create the demo accounts admin, desk and manager (refused unless DEBUG is on)."

    def add_arguments(self, parser):
        # `make run HOST=... PORT=...` passes what runserver will listen on, so that the
        # addresses printed are the ones that answer.
        parser.add_argument("--host", default="127.0.0.1", help="Address the web server binds.")
        parser.add_argument("--port", type=int, default=8000, help="Port the web server binds.")

    def handle(self, *args, **options):
        # A well-known password on a production box would be an open door.
        if not settings.DEBUG:
            raise CommandError("demo_admin sets a well-known password: it only runs with DEBUG on.")
        password = os.environ.get("DEMO_ADMIN_PASSWORD", "").strip() or DEFAULT_PASSWORD
        demo_users_ensure(password=password)
        base = site_base_url(host=options["host"], port=options["port"])
        self.stdout.write(
            f"Front desk: {base}{reverse('desk:day')}  user: desk  password: {password}\n"
            f"Admin: {base}{reverse('admin:index')}  users: admin (all rights), "
            f"manager (clinic manager); same password."
        )
