import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from clinic_crm import crypto
from clinic_crm.env import ensure_dev_secrets, load_dotenv

BASE_DIR = Path(django_settings.BASE_DIR)
SECRETS = ("SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "BLIND_INDEX_KEY")


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def production_env(**values: str) -> dict[str, str]:
    # The test process itself loaded .env.local into os.environ; a production box has none of it.
    env = {k: v for k, v in os.environ.items() if k not in SECRETS and k != "DEBUG"}
    return {
        **env,
        "DEBUG": "0",
        "SECRET_KEY": "test-only-" + "s" * 40,
        "FIELD_ENCRYPTION_KEYS": new_key(),
        "BLIND_INDEX_KEY": new_key(),
        **values,
    }


def manage(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - our own manage.py, fixed arguments
        [sys.executable, "manage.py", *argv],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_with_every_secret_set_pass_check():
    result = manage("check", env=production_env())

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("variable", SECRETS)
def test_production_refuses_to_start_without_a_secret_and_says_how_to_make_one(variable):
    # given: DEBUG off and one secret missing, while .env.local exists in the project directory
    env = production_env()
    del env[variable]

    # when
    result = manage("check", env=env)

    # then: the dev file was not used to fill the gap
    assert result.returncode != 0
    assert f"{variable} is not set and DEBUG is off" in result.stderr
    assert "Make one with: python3 -c" in result.stderr


@pytest.mark.parametrize("variable", ["FIELD_ENCRYPTION_KEYS", "BLIND_INDEX_KEY"])
@pytest.mark.parametrize("bad", ["not-a-key", base64.urlsafe_b64encode(b"too short").decode()])
def test_malformed_key_fails_check_naming_the_variable(variable, bad):
    result = manage("check", env=production_env(**{variable: bad}))

    assert result.returncode != 0
    assert f"{variable} must hold url-safe base64 of 32 random bytes" in result.stderr


def test_a_malformed_old_key_behind_a_good_one_also_fails_check():
    result = manage("check", env=production_env(FIELD_ENCRYPTION_KEYS=f"{new_key()},oops"))

    assert result.returncode != 0
    assert "FIELD_ENCRYPTION_KEYS" in result.stderr


def test_debug_mode_takes_missing_secrets_from_the_dev_file():
    # given: DEBUG on and no secrets in the environment
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env["DEBUG"] = "1"

    # when: print the id of the key in use, never the key
    result = manage(
        "shell",
        "--command",
        "from clinic_crm import crypto; print(crypto.keyring().current_id)",
        env=env,
    )

    # then: it is the key in .env.local (read only now: that run creates the file if missing)
    assert result.returncode == 0, result.stderr
    dev_file = (BASE_DIR / ".env.local").read_text()
    dev_keys = dict(line.split("=", 1) for line in dev_file.splitlines() if "=" in line)
    expected = crypto.Keyring(tuple(dev_keys["FIELD_ENCRYPTION_KEYS"].split(","))).current_id
    assert result.stdout.split()[-1] == expected


def test_dev_secrets_file_is_written_once_private_and_valid(tmp_path):
    # given
    path = tmp_path / ".env.local"

    # when
    ensure_dev_secrets(path)
    first = path.read_text()
    ensure_dev_secrets(path)

    # then
    assert path.read_text() == first
    assert path.stat().st_mode & 0o777 == 0o600
    values = dict(line.split("=", 1) for line in first.splitlines() if "=" in line)
    assert set(values) == set(SECRETS)
    crypto.Keyring((values["FIELD_ENCRYPTION_KEYS"],))
    crypto._decode_key(values["BLIND_INDEX_KEY"], "BLIND_INDEX_KEY")


def test_dev_file_never_overrides_the_environment(tmp_path, monkeypatch):
    # given
    path = tmp_path / ".env.local"
    path.write_text("CRM_TEST_SET=from-file\nCRM_TEST_UNSET='from-file'\n# CRM_TEST_COMMENT=1\n")
    monkeypatch.setenv("CRM_TEST_SET", "from-environment")
    for name in ("CRM_TEST_UNSET", "CRM_TEST_COMMENT"):
        # set, then delete: monkeypatch only restores (here: removes) what it has seen
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)

    # when
    load_dotenv(path)

    # then
    assert os.environ["CRM_TEST_SET"] == "from-environment"
    assert os.environ["CRM_TEST_UNSET"] == "from-file"
    assert "CRM_TEST_COMMENT" not in os.environ


@pytest.mark.parametrize(
    ("redis_url", "broker"),
    [("", "ORM"), ("redis://127.0.0.1:6379/15", "Redis")],
)
def test_worker_uses_the_database_broker_unless_redis_url_is_set(redis_url, broker, tmp_path):
    probe = (
        "from django_q.brokers import get_broker; b = get_broker(); "
        "print(type(b).__name__, b.ping())"
    )

    assert _probe(probe, redis_url=redis_url, tmp_path=tmp_path) == f"{broker} True"


@pytest.mark.parametrize(
    ("redis_url", "backend"),
    [("", "LocMemCache"), ("redis://127.0.0.1:6379/15", "RedisCache")],
)
def test_the_cache_every_process_shares_is_redis_when_redis_url_is_set(
    redis_url, backend, tmp_path
):
    # The patient link's wrong-token limit counts in the cache: one count for all web processes.
    probe = (
        "from django.core.cache import caches; cache = caches['default']; "
        "cache.set('probe', 1, 5); print(type(cache).__name__, cache.get('probe'))"
    )

    assert _probe(probe, redis_url=redis_url, tmp_path=tmp_path) == f"{backend} 1"


def _probe(code, *, redis_url, tmp_path):
    """The last line `code` prints in `manage.py shell` with REDIS_URL as given, on a database
    of its own (the test database may not be reachable by name from a subprocess)."""
    database = f"sqlite:///{tmp_path / 'probe.sqlite3'}"
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database}
    result = manage("shell", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]
