"""Rules already on get a switch-on time: when their first message was made, else now."""

from django.db import migrations
from django.db.models import Min, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone


def backfill(apps, schema_editor):
    Rule = apps.get_model("campaigns", "Rule")
    OutboxMessage = apps.get_model("reminders", "OutboxMessage")
    first_message = (
        OutboxMessage.objects.filter(rule_id=OuterRef("pk"))
        .order_by()
        .values("rule_id")
        .annotate(first=Min("created_at"))
        .values("first")
    )
    Rule.objects.filter(enabled=True, enabled_since__isnull=True).update(
        enabled_since=Coalesce(Subquery(first_message), Value(timezone.now()))
    )


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0006_dashboard_schema"),
        ("reminders", "0010_dashboard_schema"),
    ]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
