"""Refusing to start with keys that don't match the stored data, and a malformed key at load."""

import base64
import subprocess
import sys

import pytest

from tests.clinic_crm.test_settings import BASE_DIR, manage, new_key, production_env

NAME = "陳美玲"
PHONE = "0912-345-678"


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_web(env: dict[str, str]) -> subprocess.CompletedProcess:
    """What gunicorn does first: import the WSGI module."""
    return python("import clinic_crm.wsgi", env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A database migrated and holding one patient, written by the app as a separate process;
    returns the environment it was set up with (DEBUG off, its own keys). Shared: the tests
    only start processes against it, and those refuse before writing anything."""
    path = tmp_path_factory.mktemp("installed") / "crm.sqlite3"
    env = production_env(DATABASE_URL=f"sqlite:///{path}")
    migrated = manage("migrate", "--verbosity", "0", env=env)
    assert migrated.returncode == 0, migrated.stderr
    script = (
        "from patients.models import Patient\n"
        f"Patient.objects.create(chart_no='KEY-1', name={NAME!r}, phone={PHONE!r})\n"
    )
    created = manage("shell", "--command", script, env=env)
    assert created.returncode == 0, created.stderr
    return env


# --- malformed keys: refused when the app loads, whatever is started ---


@pytest.mark.parametrize(
    "variable", ["FIELD_ENCRYPTION_KEYS", "BLIND_INDEX_KEY", "BLIND_INDEX_KEY_PREVIOUS"]
)
@pytest.mark.parametrize("bad", ["not-a-key", base64.urlsafe_b64encode(b"too short").decode()])
def test_a_malformed_key_stops_the_web_app_from_starting_naming_it(variable, bad):
    # given: before, the server started and every page was a 500
    env = production_env(**{variable: bad})

    # when
    result = start_web(env)

    # then
    assert result.returncode != 0
    assert f"{variable} must hold url-safe base64 of 32 random bytes" in result.stderr


def test_a_malformed_old_encryption_key_also_stops_the_web_app():
    result = start_web(production_env(FIELD_ENCRYPTION_KEYS=f"{new_key()},oops"))

    assert result.returncode != 0
    assert "FIELD_ENCRYPTION_KEYS must hold url-safe base64" in result.stderr


# --- well-formed keys that don't match the data ---


def test_the_keys_the_data_was_written_with_start_the_web_app_and_pass_the_database_check(
    installed,
):
    web = start_web(installed)
    check = manage("check", "--database", "default", env=installed)

    assert web.returncode == 0, web.stderr
    assert check.returncode == 0, check.stderr


def test_a_wrong_blind_index_key_refuses_to_start_naming_it(installed):
    # given: a valid key, but not the one the stored indexes were made with; before, the
    # server started and every search and STOP reply quietly found nobody
    env = {**installed, "BLIND_INDEX_KEY": new_key()}

    # when
    web = start_web(env)
    check = manage("check", "--database", "default", env=env)
    migrate = manage("migrate", env=env)

    # then
    for result in (web, check, migrate):
        assert result.returncode != 0
        assert "BLIND_INDEX_KEY is not the key this database's search indexes" in result.stderr
        assert "manage.py reindex" in result.stderr


def test_the_worker_refuses_to_start_with_a_wrong_blind_index_key(installed):
    env = {**installed, "BLIND_INDEX_KEY": new_key()}

    # when: before, the worker started (and ran until the timeout below)
    worker = subprocess.run(  # noqa: S603 - our own manage.py, fixed arguments
        [sys.executable, "manage.py", "qcluster", "--run-once"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # then
    assert worker.returncode != 0
    assert "BLIND_INDEX_KEY is not the key" in worker.stderr


def test_encryption_keys_missing_the_one_the_data_was_written_with_refuse_naming_them(installed):
    # given: a fresh key set that lacks the data's key
    env = {**installed, "FIELD_ENCRYPTION_KEYS": new_key()}

    # when
    web = start_web(env)
    check = manage("check", "--database", "default", env=env)

    # then
    for result in (web, check):
        assert result.returncode != 0
        assert "FIELD_ENCRYPTION_KEYS does not hold the key this database's data" in result.stderr
        assert "rotate_keys" in result.stderr


def test_a_new_encryption_key_in_front_of_the_old_one_starts(installed):
    env = {
        **installed,
        "FIELD_ENCRYPTION_KEYS": f"{new_key()},{installed['FIELD_ENCRYPTION_KEYS']}",
    }

    result = start_web(env)

    assert result.returncode == 0, result.stderr


def test_the_first_migrate_refuses_to_record_keys_that_dont_match_existing_data(tmp_path):
    # given: an install older than the key check: data written, then the check values removed
    env = production_env(DATABASE_URL=f"sqlite:///{tmp_path / 'old.sqlite3'}")
    assert manage("migrate", "--verbosity", "0", env=env).returncode == 0
    script = (
        "from patients.models import Patient\n"
        "from clinic_crm.models import KeyCheck\n"
        f"Patient.objects.create(chart_no='OLD-1', name={NAME!r}, phone={PHONE!r})\n"
        "KeyCheck.objects.all().delete()\n"
    )
    assert manage("shell", "--command", script, env=env).returncode == 0

    # when: the upgrade's migrate runs with a wrong blind-index key
    wrong = {**env, "BLIND_INDEX_KEY": new_key()}
    result = manage("migrate", "--verbosity", "0", env=wrong)

    # then: nothing recorded, so the right key still starts afterwards
    assert result.returncode != 0
    assert "BLIND_INDEX_KEY is not the key this database's search indexes" in result.stderr
    assert manage("migrate", "--verbosity", "0", env=env).returncode == 0
    assert start_web(env).returncode == 0
    assert start_web(wrong).returncode != 0


def test_checks_without_a_database_never_query_it(tmp_path):
    # `check --deploy` in CI and `collectstatic` run with no database at all
    env = production_env(DATABASE_URL=f"sqlite:///{tmp_path / 'missing' / 'none.sqlite3'}")

    result = manage("check", env=env)

    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "missing").exists()


def test_an_unmigrated_database_starts_and_the_first_migrate_records_the_keys(tmp_path):
    env = production_env(DATABASE_URL=f"sqlite:///{tmp_path / 'new.sqlite3'}")
    assert manage("check", "--database", "default", env=env).returncode == 0

    assert manage("migrate", "--verbosity", "0", env=env).returncode == 0
    recorded = manage(
        "shell",
        "--command",
        "from clinic_crm.models import KeyCheck; "
        "print(sorted(KeyCheck.objects.values_list('purpose', flat=True)))",
        env=env,
    )

    assert recorded.stdout.split("\n")[-2] == "['blind_index', 'field_encryption']"
    assert start_web({**env, "BLIND_INDEX_KEY": new_key()}).returncode != 0


def test_the_asgi_app_refuses_a_wrong_blind_index_key_too(installed):
    env = {**installed, "BLIND_INDEX_KEY": new_key()}

    wrong = python("import clinic_crm.asgi", env)
    right = python("import clinic_crm.asgi", installed)

    assert wrong.returncode != 0
    assert "BLIND_INDEX_KEY is not the key" in wrong.stderr
    assert right.returncode == 0, right.stderr
