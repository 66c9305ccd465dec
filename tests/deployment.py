"""A real two-role PostgreSQL deployment made with deploy/postgres-roles.sql, as an operator
would: scratch roles and database, manage.py run as either role. Shared by the role tests and
the backup drill."""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from django.conf import settings
from django.db import connection

PSQL = shutil.which("psql") or "psql"
ROLES_SQL = Path(settings.BASE_DIR) / "deploy" / "postgres-roles.sql"
APPEND_ONLY = ["consent_consententry", "patients_auditentry", "patients_auditlink"]


@dataclass(frozen=True)
class Deployment:
    db: str
    owner: str
    app: str
    passwords: dict[str, str]

    def connect(self, role: str) -> psycopg.Connection:
        admin = connection.settings_dict
        return psycopg.connect(
            host=admin.get("HOST") or "localhost",
            port=admin.get("PORT") or 5432,
            user=role,
            password=self.passwords[role],
            dbname=self.db,
            autocommit=True,
        )

    def url(self, role: str) -> str:
        admin = connection.settings_dict
        host = admin.get("HOST") or "localhost"
        port = admin.get("PORT") or 5432
        return f"postgres://{role}:{quote(self.passwords[role], safe='')}@{host}:{port}/{self.db}"


def superuser_env() -> dict[str, str]:
    admin = connection.settings_dict
    env = {**os.environ, "PGPASSWORD": admin.get("PASSWORD") or ""}
    for variable, key in (("PGHOST", "HOST"), ("PGPORT", "PORT"), ("PGUSER", "USER")):
        if admin.get(key):
            env[variable] = str(admin[key])
    return env


def manage(
    deployment: Deployment, role: str, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "DATABASE_URL": deployment.url(role)}
    return subprocess.run(  # noqa: S603 - our own interpreter and manage.py
        [sys.executable, "manage.py", *argv],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def apply_roles_sql(deployment: Deployment) -> None:
    result = subprocess.run(  # noqa: S603 - psql with our own script
        [
            PSQL,
            "--no-psqlrc",
            "--quiet",
            "--dbname=postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            f"db={deployment.db}",
            "-v",
            f"owner={deployment.owner}",
            "-v",
            f"app={deployment.app}",
            "-v",
            f"owner_password={deployment.passwords[deployment.owner]}",
            "-v",
            f"app_password={deployment.passwords[deployment.app]}",
            "-f",
            str(ROLES_SQL),
        ],
        env=superuser_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def drop(deployment: Deployment) -> None:
    admin = connection.settings_dict
    with psycopg.connect(
        host=admin.get("HOST") or "localhost",
        port=admin.get("PORT") or 5432,
        user=admin.get("USER") or None,
        password=admin.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{deployment.db}" WITH (FORCE)')
        for role in (deployment.app, deployment.owner):
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')
