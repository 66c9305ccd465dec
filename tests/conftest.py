import pytest


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def clinic(db):
    from patients.models import ClinicProfile

    profile = ClinicProfile.load()
    profile.name = "安心診所"
    profile.phone = "02-2345-6789"
    profile.save()
    return profile


@pytest.fixture
def front_desk_user(db):
    return _staff("desk", "Front desk")


@pytest.fixture
def manager_user(db):
    return _staff("manager", "Clinic manager")


def _staff(username, group_name):
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user(username, password="correct horse 42", is_staff=True)
    user.groups.add(Group.objects.get(name=group_name))
    return user


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """On SQLite the test database is a file, not Django's in-memory default: in memory, the
    end-to-end tests' live server shares the test's one connection across two threads, and a
    page request still running while the test reads or flushes the database fails one of them
    ("cannot release savepoint - SQL statements in progress"). With a file each thread has its
    own connection, as on PostgreSQL; in WAL mode a page's read never holds up the test's write
    or the other way round."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        path = tmp_path_factory.mktemp("database") / "test.sqlite3"
        database.setdefault("TEST", {})["NAME"] = str(path)
        database.setdefault("OPTIONS", {})["init_command"] = "PRAGMA journal_mode=WAL;"


@pytest.fixture(autouse=True, scope="session")
def _flush_past_append_only_triggers():
    """A transactional test ends by truncating every table, which the append-only tables refuse
    on PostgreSQL (clinic_crm/append_only.py). Tests connect as a superuser, who may switch
    triggers off for that one transaction; the app's own roles can't (deploy/)."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    flush = DatabaseOperations.sql_flush

    def sql_flush(self, *args, **kwargs):
        statements = flush(self, *args, **kwargs)
        return ["SET LOCAL session_replication_role = replica", *statements] if statements else []

    DatabaseOperations.sql_flush = sql_flush
    yield
    DatabaseOperations.sql_flush = flush


@pytest.fixture
def memory_channels(settings):
    """Every channel is the in-memory one: yields the list of what was sent."""
    from reminders.channels import memory
    from reminders.channels.base import _load
    from reminders.channels.memory import MemoryChannel

    path = "reminders.channels.memory.MemoryChannel"
    settings.REMINDER_CHANNELS = {"sms": path, "line": path, "email": path}
    settings.CHANNEL_RATE_LIMITS = {}
    _load.cache_clear()
    MemoryChannel.reset()
    yield memory.outbox
    MemoryChannel.reset()
    _load.cache_clear()


@pytest.fixture
def english():
    """Reasons are written in the worker's language; tests that read them do so in English."""
    from django.utils import translation

    with translation.override("en"):
        yield
