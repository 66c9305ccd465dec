"""/healthz says whether the system is doing its job (200 or 503, with the failing part named);
/metrics gives Prometheus the figures, behind a token."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import Task

from clinic_crm import keycheck
from clinic_crm.models import KeyCheck
from consent.models import Purpose
from reminders.models import Attempt, OutboxMessage, Status
from tests.clinic_crm.test_settings import new_key
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db

TOKEN = "s3cret-metrics-token"


def finished(func: str, *, ago: timedelta, took: timedelta = timedelta(seconds=2)) -> None:
    """A django-q2 task of `func` that ended `ago` and ran for `took`, as the worker records it."""
    stopped = timezone.now() - ago
    Task.objects.create(
        id=uuid.uuid4().hex,
        name=f"{func} run",
        func=func,
        started=stopped - took,
        stopped=stopped,
        success=True,
    )


def worker_ran_lately() -> None:
    finished("reminders.tasks.plan_task", ago=timedelta(minutes=3), took=timedelta(seconds=9))
    finished("reminders.tasks.dispatch_task", ago=timedelta(seconds=40))


def queued(*, due_ago: timedelta, channel: str = "sms", status: str = Status.QUEUED, n: int = 0):
    due = timezone.now() - due_ago
    return OutboxMessage.objects.create(
        rule_id=1,
        patient=PatientFactory(),
        occurrence_key=f"health-{n}",
        purpose=Purpose.CARE,
        channel=channel,
        status=status,
        due_at=due,
        next_attempt_at=due,
        expires_at=due + timedelta(days=1),
        body="x",
    )


def test_a_worker_that_ran_lately_with_nothing_waiting_is_healthy(client):
    worker_ran_lately()

    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "keys", "planner", "dispatch", "queue"}
    assert body["checks"]["planner"]["ok"] is True
    # three minutes, give or take a busy machine
    assert body["checks"]["planner"]["age_seconds"] == pytest.approx(180, abs=60)
    assert body["checks"]["queue"] == {"ok": True, "value": 0}


def test_a_worker_that_never_ran_is_unhealthy_and_says_so(client):
    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "failing"
    assert body["checks"]["planner"] == {"ok": False, "detail": "never ran"}
    assert body["checks"]["dispatch"] == {"ok": False, "detail": "never ran"}
    assert body["checks"]["database"] == {"ok": True}


def test_a_stalled_dispatch_is_unhealthy(client):
    finished("reminders.tasks.plan_task", ago=timedelta(minutes=3))
    finished("reminders.tasks.dispatch_task", ago=timedelta(minutes=11))  # the limit is 10

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["checks"]["dispatch"]["ok"] is False
    assert response.json()["checks"]["planner"]["ok"] is True


def test_a_message_waiting_too_long_is_unhealthy_with_the_queue_depth(client):
    worker_ran_lately()
    queued(due_ago=timedelta(minutes=20), n=1)  # the limit is 15 minutes
    queued(due_ago=timedelta(minutes=1), n=2)
    queued(due_ago=-timedelta(hours=1), n=3)  # not due yet: not waiting
    queued(due_ago=timedelta(hours=5), status=Status.SENT, n=4)  # gone out

    response = client.get("/healthz")

    assert response.status_code == 503
    queue = response.json()["checks"]["queue"]
    assert queue["ok"] is False
    assert queue["value"] == 2
    assert queue["age_seconds"] == pytest.approx(20 * 60, abs=60)


def test_keys_that_do_not_match_the_stored_data_are_unhealthy(client, settings):
    worker_ran_lately()
    settings.BLIND_INDEX_KEY = new_key()
    KeyCheck.objects.all().delete()
    keycheck.keycheck_record()
    settings.BLIND_INDEX_KEY = new_key()  # not the key the data was written with

    response = client.get("/healthz")

    assert response.status_code == 503
    keys = response.json()["checks"]["keys"]
    assert keys["ok"] is False
    assert "BLIND_INDEX_KEY" in keys["detail"]


def test_the_redis_broker_is_checked_when_it_is_the_broker(client, monkeypatch):
    worker_ran_lately()
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", "redis://127.0.0.1:6379/15")

    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json()["checks"]["broker"]["detail"].startswith("Redis")


def test_a_redis_broker_that_does_not_answer_is_unhealthy_not_an_error(client, monkeypatch):
    worker_ran_lately()
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", "redis://127.0.0.1:1/0")  # nothing listens there

    response = client.get("/healthz")

    assert response.status_code == 503
    broker = response.json()["checks"]["broker"]
    assert broker["ok"] is False
    assert "ConnectionError" in broker["detail"]


# --- /metrics ---


def test_metrics_do_not_exist_without_a_token_configured(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


def test_metrics_refuse_a_wrong_token(client, settings):
    settings.METRICS_TOKEN = TOKEN
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 403


def test_metrics_count_messages_by_status_and_channel_and_time_the_worker(client, settings):
    settings.METRICS_TOKEN = TOKEN
    worker_ran_lately()
    queued(due_ago=timedelta(minutes=1), n=1)
    queued(due_ago=timedelta(minutes=2), n=2)
    sent = queued(due_ago=timedelta(hours=1), status=Status.SENT, channel="line", n=3)
    start = timezone.now() - timedelta(minutes=30)
    Attempt.objects.create(
        message=sent,
        channel="line",
        started_at=start,
        finished_at=start + timedelta(milliseconds=250),
        outcome=Attempt.Outcome.SENT,
    )

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'clinic_messages{channel="sms",status="queued"} 2.0' in text
    assert 'clinic_messages{channel="line",status="sent"} 1.0' in text
    assert "clinic_queue_depth 2.0" in text
    assert 'clinic_provider_latency_seconds{channel="line",stat="mean"} 0.25' in text
    assert "clinic_planner_duration_seconds 9.0" in text
    assert "clinic_dispatch_last_run_timestamp_seconds" in text


def test_refused_webhooks_are_counted_by_endpoint_and_status(client, settings):
    settings.METRICS_TOKEN = TOKEN
    settings.LINE_CHANNEL_SECRET = "line-secret"

    def count() -> float:
        text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode()
        for line in text.splitlines():
            if line.startswith('clinic_webhook_errors_total{endpoint="line-webhook",status="403"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count()
    response = client.post(
        "/webhooks/line/",
        data=b'{"events": []}',
        content_type="application/json",
        HTTP_X_LINE_SIGNATURE="forged",
    )

    assert response.status_code == 403
    assert count() == before + 1
