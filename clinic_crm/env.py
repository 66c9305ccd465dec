"""Reading configuration from the environment, and the development defaults file."""

import base64
import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

HOW_TO_MAKE = {
    "SECRET_KEY": 'python3 -c "import secrets; print(secrets.token_urlsafe(50))"',
    "FIELD_ENCRYPTION_KEYS": (
        'python3 -c "import os, base64; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"'
    ),
    "BLIND_INDEX_KEY": (
        'python3 -c "import os, base64; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"'
    ),
}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def env_bool(name: str, default: bool) -> bool:
    """A yes/no variable; unset or empty is `default`. Raises ImproperlyConfigured, naming the
    variable, for any other word: a typo such as DEBUG=ture must not quietly mean "off"."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(
        f"{name}={raw.strip()!r} is not a yes/no value; use 1, true, yes or on for yes, "
        "0, false, no or off for no."
    )


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def require(name: str) -> str:
    """The value of a variable production cannot run without; raises naming it if unset."""
    value = env_str(name)
    if not value:
        hint = HOW_TO_MAKE.get(name)
        how = f" Make one with: {hint}" if hint else ""
        raise ImproperlyConfigured(f"{name} is not set and DEBUG is off.{how}")
    return value


def load_dotenv(path: Path) -> None:
    """Put KEY=VALUE lines of `path` into os.environ, never overriding what is already set."""
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.split(" #", 1)[0]  # a comment after the value, as in .env.example
        os.environ.setdefault(key.strip(), value.strip().strip("'\""))


def ensure_dev_secrets(path: Path) -> None:
    """Write random development keys to `path` (git-ignored) the first time the app starts."""
    if path.exists():
        return
    new_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    path.write_text(
        "# Development keys, generated on first run. Never use these in production.\n"
        f"SECRET_KEY={secrets.token_urlsafe(50)}\n"
        f"FIELD_ENCRYPTION_KEYS={new_key}\n"
        f"BLIND_INDEX_KEY={base64.urlsafe_b64encode(os.urandom(32)).decode()}\n",
        encoding="utf-8",
    )
    path.chmod(0o600)
