"""Is the system doing its job? `/healthz` for a load balancer or a monitor, `/metrics` for
Prometheus.

/healthz answers 200 when every check passes and 503 when one fails, with JSON saying which:
the database and the task broker answer, the configured keys match the stored data, the worker
has planned and dispatched lately (django-q2 keeps each finished task, with its start and stop),
and no message has waited to go out for longer than it should. A fresh install whose worker has
never run is not healthy: nothing would be sent.

/metrics is prometheus-client's text format, read from the database at scrape time (so every web
process answers the same, however many gunicorn workers there are), plus the webhook error
counter, which the web processes count themselves (prometheus-client's multiprocess mode, set by
PROMETHEUS_MULTIPROC_DIR, adds up their counts; deploy/gunicorn.conf.py). It needs
`Authorization: Bearer <METRICS_TOKEN>`; without METRICS_TOKEN set it does not exist (404).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Max, Min
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_q.brokers import get_broker
from django_q.models import Task
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from clinic_crm.keycheck import keys_verify
from reminders.models import Attempt, OutboxMessage, Status

logger = logging.getLogger(__name__)

PLAN_TASK = "reminders.tasks.plan_task"
DISPATCH_TASK = "reminders.tasks.dispatch_task"

WEBHOOK_ERRORS = Counter(
    "clinic_webhook_errors",
    "Webhook requests refused (bad signature 403, malformed 400, other 4xx/5xx), by endpoint.",
    ["endpoint", "status"],
)


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str = ""
    at: str | None = None
    age_seconds: int | None = None
    value: int | None = None


def _last_run(func: str) -> datetime | None:
    stopped: datetime | None = Task.objects.filter(func=func, success=True).aggregate(
        last=Max("stopped")
    )["last"]
    return stopped


def _recent(func: str, *, now: datetime, within: timedelta) -> Check:
    last = _last_run(func)
    if last is None:
        return Check(ok=False, detail="never ran")
    age = int((now - last).total_seconds())
    return Check(ok=age <= within.total_seconds(), at=last.isoformat(), age_seconds=age)


def _database() -> Check:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return Check(ok=True)


def _broker() -> Check:
    broker = get_broker()
    return Check(ok=bool(broker.ping()), detail=str(broker.info()), value=broker.queue_size())


def _keys() -> Check:
    keys_verify()
    return Check(ok=True)


def _queue(now: datetime) -> Check:
    waiting = OutboxMessage.objects.filter(status=Status.QUEUED, next_attempt_at__lte=now)
    row = waiting.aggregate(depth=Count("id"), oldest=Min("next_attempt_at"))
    if row["oldest"] is None:
        return Check(ok=True, value=0)
    age = int((now - row["oldest"]).total_seconds())
    return Check(
        ok=age <= settings.HEALTH_MAX_QUEUE_AGE.total_seconds(),
        at=row["oldest"].isoformat(),
        age_seconds=age,
        value=row["depth"],
    )


def _safely(name: str, check: Any) -> Check:
    # A check that raises (database down, Redis refused, a key mismatch) is a failed check with
    # its reason, never a 500: the monitor must read which part is down.
    try:
        result: Check = check()
    except Exception as error:  # noqa: BLE001  # any failure is the answer
        logger.warning("health check %s failed: %s", name, type(error).__name__)
        return Check(ok=False, detail=f"{type(error).__name__}: {error}"[:200])
    return result


def health_checks(*, now: datetime) -> dict[str, Check]:
    """Every check, by name; none raises."""
    return {
        "database": _safely("database", _database),
        "broker": _safely("broker", _broker),
        "keys": _safely("keys", _keys),
        "planner": _safely(
            "planner", lambda: _recent(PLAN_TASK, now=now, within=settings.HEALTH_MAX_PLANNER_AGE)
        ),
        "dispatch": _safely(
            "dispatch",
            lambda: _recent(DISPATCH_TASK, now=now, within=settings.HEALTH_MAX_DISPATCH_AGE),
        ),
        "queue": _safely("queue", lambda: _queue(now)),
    }


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks = health_checks(now=timezone.now())
    healthy = all(check.ok for check in checks.values())
    body = {
        "status": "ok" if healthy else "failing",
        "checks": {
            name: {key: value for key, value in asdict(check).items() if value not in (None, "")}
            for name, check in checks.items()
        },
    }
    return JsonResponse(body, status=200 if healthy else 503)


class DatabaseCollector(Collector):
    """What the database knows, read at scrape time: messages by status and channel, provider
    latency over the last hour, the last planner and dispatch runs."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = timezone.now()
        messages = GaugeMetricFamily(
            "clinic_messages",
            "Outbox messages by status and channel.",
            labels=["status", "channel"],
        )
        rows = OutboxMessage.objects.values("status", "channel").annotate(n=Count("id"))
        for row in rows.order_by():
            messages.add_metric([row["status"], row["channel"]], row["n"])
        yield messages

        queue = _queue(now)
        yield GaugeMetricFamily(
            "clinic_queue_depth", "Messages due now and not yet sent.", value=queue.value or 0
        )
        yield GaugeMetricFamily(
            "clinic_queue_oldest_seconds",
            "How long the oldest message due has waited.",
            value=queue.age_seconds or 0,
        )

        took = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
        latency = GaugeMetricFamily(
            "clinic_provider_latency_seconds",
            "Mean and longest time the provider took to answer, over the last hour.",
            labels=["channel", "stat"],
        )
        recent = Attempt.objects.filter(
            started_at__gte=now - timedelta(hours=1), finished_at__isnull=False
        )
        timings = recent.values("channel").annotate(mean=Avg(took), longest=Max(took)).order_by()
        for timing in timings:
            latency.add_metric([timing["channel"], "mean"], timing["mean"].total_seconds())
            latency.add_metric([timing["channel"], "max"], timing["longest"].total_seconds())
        yield latency

        for name, func in (("planner", PLAN_TASK), ("dispatch", DISPATCH_TASK)):
            last = (
                Task.objects.filter(func=func, success=True)
                .order_by("-stopped")
                .values("started", "stopped")
                .first()
            )
            if last is None:
                continue
            yield GaugeMetricFamily(
                f"clinic_{name}_duration_seconds",
                f"How long the last {name} run took.",
                value=(last["stopped"] - last["started"]).total_seconds(),
            )
            yield GaugeMetricFamily(
                f"clinic_{name}_last_run_timestamp_seconds",
                f"When the last {name} run ended (Unix time).",
                value=last["stopped"].timestamp(),
            )


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(DatabaseCollector())
    if settings.PROMETHEUS_MULTIPROC_DIR:
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(WEBHOOK_ERRORS)
    return registry


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)


class WebhookErrorsMiddleware:
    """Counts refused webhook requests (any 4xx or 5xx under /webhooks/) for /metrics."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response: HttpResponse = self.get_response(request)
        if request.path.startswith("/webhooks/") and response.status_code >= 400:
            # The view's name, not the path: delivery-report paths carry a message's uuid.
            match = request.resolver_match
            endpoint = match.view_name if match else "unknown"
            WEBHOOK_ERRORS.labels(endpoint, str(response.status_code)).inc()
        return response
