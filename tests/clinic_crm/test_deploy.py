"""The deployment recipe in deploy/: gunicorn really serves the app with its config, and the
compose file and systemd units name files and commands that exist."""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.db import connection

from tests.helpers import free_port

DEPLOY = Path(settings.BASE_DIR) / "deploy"
TOKEN = "deploy-test-token"


def get(url: str, **headers: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310  # http://127.0.0.1
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def post(url: str, body: bytes, **headers: str) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="gunicorn's processes need a database they can share"
)
def test_gunicorn_with_the_deploy_config_serves_health_and_adds_up_metrics_of_its_workers(
    tmp_path,
):
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    env = {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{connection.settings_dict['USER']}@{connection.settings_dict['HOST']}:"
            f"{connection.settings_dict['PORT'] or 5432}/{connection.settings_dict['NAME']}"
        ),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "METRICS_TOKEN": TOKEN,
        "LINE_CHANNEL_SECRET": "line-secret",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "2",
        "DEBUG": "1",
    }
    server = subprocess.Popen(  # noqa: S603  # our own command line
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "clinic_crm.wsgi"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = get(f"{base}/healthz")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "gunicorn did not answer in 60 s"
                time.sleep(0.3)
        # The worker has never run here: unhealthy, and saying why.
        assert status == 503
        assert '"planner": {"ok": false, "detail": "never ran"}' in body

        # Forged LINE webhooks, spread over both gunicorn workers by the kernel.
        for _ in range(6):
            assert post(f"{base}/webhooks/line/", b"{}", **{"X-Line-Signature": "forged"}) == 403

        status, text = get(f"{base}/metrics", Authorization=f"Bearer {TOKEN}")
        assert status == 200
        refused = 'clinic_webhook_errors_total{endpoint="line-webhook",status="403"} 6.0'
        assert refused in text, "every worker's count, added up"
        assert get(f"{base}/metrics")[0] == 403
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_compose_file_starts_web_worker_postgresql_and_redis_from_files_that_exist():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"db", "redis", "migrate", "web", "worker", "proxy"} <= set(services)
    assert services["worker"]["command"] == ["python", "manage.py", "qcluster"]
    # The app runs as the row-only role; only the migration step has the owner's password.
    for name in ("web", "worker"):
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgres://crm_app:")
        assert "CRM_OWNER_PASSWORD" not in services[name]["environment"]
    assert "crm_owner" in " ".join(services["migrate"]["command"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    assert (DEPLOY / compose["x-app"]["build"]["dockerfile"].removeprefix("deploy/")).exists()


def test_no_key_or_local_database_goes_into_an_image():
    ignored = (Path(settings.BASE_DIR) / ".dockerignore").read_text().split()
    assert {".env", ".env.local", "deploy/.env", "db.sqlite3", ".venv"} <= set(ignored)


def test_the_systemd_units_run_the_projects_own_commands():
    units = {path.name: path.read_text() for path in (DEPLOY / "systemd").iterdir()}
    assert "-c deploy/gunicorn.conf.py clinic_crm.wsgi" in units["clinic-crm-web.service"]
    assert "manage.py qcluster" in units["clinic-crm-worker@.service"]
    migrate = units["clinic-crm-migrate.service"]
    assert 'DATABASE_URL="$OWNER_DATABASE_URL"' in migrate
    assert "manage.py setup_schedules" in migrate
    for unit in units.values():
        for line in unit.splitlines():
            if line.startswith(("Requires=", "Wants=")):
                for needed in line.split("=", 1)[1].split():
                    template = needed.split("@")[0] + "@.service" if "@" in needed else needed
                    assert template in units, needed
