"""Settings: every value comes from the environment (see .env.example)."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import dj_database_url
import django_stubs_ext

from clinic_crm.env import (
    ensure_dev_secrets,
    env_bool,
    env_list,
    env_str,
    load_dotenv,
    require,
)

# The admin and form classes are subscripted for django-stubs (admin.ModelAdmin[Rule]); Django's
# own classes can't be subscripted at runtime until this adds __class_getitem__ to them.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", True)
if DEBUG:
    # Development only: a production box must never pick up these generated keys.
    ensure_dev_secrets(BASE_DIR / ".env.local")
    load_dotenv(BASE_DIR / ".env.local")

SECRET_KEY = require("SECRET_KEY")
FIELD_ENCRYPTION_KEYS = env_list("FIELD_ENCRYPTION_KEYS") or [require("FIELD_ENCRYPTION_KEYS")]
BLIND_INDEX_KEY = require("BLIND_INDEX_KEY")
BLIND_INDEX_KEY_PREVIOUS = env_str("BLIND_INDEX_KEY_PREVIOUS")  # only while `reindex` runs

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "clinic_crm",  # before django_q: its qcluster checks the keys first
    "axes",
    "django_q",
    "patients",
    "consent",
    "campaigns",
    "reminders",
    "desk",
    "dashboard",
    "surveys",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "clinic_crm.middleware.RejectNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
    "clinic_crm.health.WebhookErrorsMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "clinic_crm.urls"
WSGI_APPLICATION = "clinic_crm.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=60,
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Login lockout (django-axes): five wrong passwords lock that username from that address.
AXES_FAILURE_LIMIT = int(env_str("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = float(env_str("AXES_COOLOFF_HOURS", "0.25"))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

LANGUAGE_CODE = "zh-hant"
LANGUAGES = [("zh-hant", "繁體中文"), ("en", "English")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env_str("TIME_ZONE", "Asia/Taipei")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# Where phone numbers without a country code are from.
PHONE_DEFAULT_REGION = env_str("PHONE_DEFAULT_REGION", "TW")

Q_CLUSTER = {
    "name": "clinic_crm",
    "workers": int(env_str("Q_WORKERS", "2")),
    "timeout": 120,
    "retry": 180,
    "max_attempts": 1,
    "catch_up": False,
    "orm": "default",
}
# Several clusters (hosts) need Redis: the broker, and the send-rate slots they share
# (reminders/ratelimit.py). Without it, run one cluster.
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    Q_CLUSTER.pop("orm")
    Q_CLUSTER["redis"] = REDIS_URL
    # Counters every web process must share (the patient link's wrong-token limit,
    # consent/patient_link.py): without Redis each process keeps its own.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "crm",
        }
    }

# Messaging providers. A channel whose credentials are set sends for real. One without them is
# off: the planner and the gate skip it ("channel not configured") and `check --deploy` warns.
# The console channel, which only logs, stands in for a channel only where CONSOLE_CHANNELS
# names it; development (DEBUG on) names every channel that has no credentials.
# The clinic's public address: Twilio's delivery reports and the tracked links patients open
# in messages (<PUBLIC_BASE_URL>/r/<token>/) lead here. In production it must be set, https and
# not a local address (campaigns/links.py checks; `check --deploy` says when it is missing).
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL", "http://127.0.0.1:8000" if DEBUG else "").rstrip("/")
TWILIO_ACCOUNT_SID = env_str("TWILIO_ACCOUNT_SID")
TWILIO_AUTH_TOKEN = env_str("TWILIO_AUTH_TOKEN")
TWILIO_FROM_NUMBER = env_str("TWILIO_FROM_NUMBER")
TWILIO_MESSAGING_SERVICE_SID = env_str("TWILIO_MESSAGING_SERVICE_SID")
TWILIO_API_BASE_URL = env_str("TWILIO_API_BASE_URL")  # empty: the real service
LINE_CHANNEL_ACCESS_TOKEN = env_str("LINE_CHANNEL_ACCESS_TOKEN")
LINE_CHANNEL_SECRET = env_str("LINE_CHANNEL_SECRET")
LINE_API_BASE_URL = env_str("LINE_API_BASE_URL")  # empty: the real service
_PROVIDERS = {
    "sms": (
        "reminders.channels.sms_twilio.TwilioSMSChannel",
        bool(TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN),
    ),
    "line": ("reminders.channels.line.LineChannel", bool(LINE_CHANNEL_ACCESS_TOKEN)),
    "email": ("reminders.channels.email.EmailChannel", bool(env_str("EMAIL_HOST"))),
}
CONSOLE_CHANNELS = env_list(
    "CONSOLE_CHANNELS",
    ",".join(name for name, (_path, ready) in _PROVIDERS.items() if not ready) if DEBUG else "",
)
REMINDER_CHANNELS = {
    name: "reminders.channels.console.ConsoleChannel" if name in CONSOLE_CHANNELS else path
    for name, (path, ready) in _PROVIDERS.items()
    if ready or name in CONSOLE_CHANNELS
}

# Care rules: at most this many birthday / health-news messages per patient in 30 days, and
# at least this many minutes between two messages to one patient.
RELATIONSHIP_MESSAGES_PER_30_DAYS = int(env_str("RELATIONSHIP_MESSAGES_PER_30_DAYS", "2"))
MESSAGE_GAP_MINUTES = int(env_str("MESSAGE_GAP_MINUTES", "30"))
SMS_MAX_SEGMENTS = int(env_str("SMS_MAX_SEGMENTS", "6"))

# What messages cost, for the dashboard (campaigns/costs.py), in NT$. SMS per segment by the
# recipient's country ("TW=1.5,US=0.3"; Taiwan gateways ask about NT$0.7-1.5 per 70-character
# segment, Twilio about US$0.08: set your contract's), SMS_PRICE_DEFAULT for other countries.
SMS_PRICE_PER_SEGMENT = {
    code.strip().upper(): Decimal(price)
    for code, _, price in (
        item.partition("=") for item in env_list("SMS_PRICE_PER_SEGMENT", "TW=1.5")
    )
}
SMS_PRICE_DEFAULT = Decimal(env_str("SMS_PRICE_DEFAULT", "3"))
# LINE official accounts in Taiwan (tw.linebiz.com, rates since September 2023): the free plan
# sends 200 push messages a month and can't buy more; the NT$1,200 plan has 6,000 and extra
# messages from NT$0.2 each, cheaper by volume.
LINE_MONTHLY_ALLOWANCE = int(env_str("LINE_MONTHLY_ALLOWANCE", "200"))
LINE_PRICE_PER_MESSAGE = Decimal(env_str("LINE_PRICE_PER_MESSAGE", "0.2"))
EMAIL_PRICE = Decimal(env_str("EMAIL_PRICE", "0"))
# Monday 08:00 (the clinic's zone) the worker e-mails each clinic manager last week's figures
# and the week ahead (dashboard/weekly.py), through EMAIL_* above. Off unless set.
DASHBOARD_WEEKLY_EMAIL = env_bool("DASHBOARD_WEEKLY_EMAIL", False)
# A claimed message whose sender has been silent this long is settled by recovery. Longer
# than any one send can take (provider timeouts are 15-20 s).
DISPATCH_CLAIM_LEASE_SECONDS = int(env_str("DISPATCH_CLAIM_LEASE_SECONDS", "300"))
WEBHOOK_DEDUPE_DAYS = int(env_str("WEBHOOK_DEDUPE_DAYS", "30"))  # replays within it act once
# A LINE link code made at the desk works this many hours, once (reminders/linking.py).
LINE_LINK_CODE_HOURS = int(env_str("LINE_LINK_CODE_HOURS", "24"))
# The settings link in a message ({% settings_link %}) works this many days after the message
# was planned (consent/patient_link.py).
PATIENT_LINK_DAYS = int(env_str("PATIENT_LINK_DAYS", "30"))
# How was your visit? (campaigns.kinds VISIT_SURVEY): a patient is asked at most once in this
# many days, and a rating at or below SURVEY_LOW_RATING (1-5) lands in the inbox as feedback.
SURVEY_MIN_DAYS = int(env_str("SURVEY_MIN_DAYS", "90"))
SURVEY_LOW_RATING = int(env_str("SURVEY_LOW_RATING", "2"))
# Sends per second per channel, all workers together ("sms=30,line=200,email=20").
CHANNEL_RATE_LIMITS = {
    name.strip(): float(rate)
    for name, _, rate in (
        item.partition("=") for item in env_list("CHANNEL_RATE_LIMITS", "sms=30,line=200,email=20")
    )
}

# Retention (reminders/retention.py, daily): days after which a final message's text, the log of
# delivery attempts and the record of skipped messages are erased; 0 keeps them. The audit log
# and the consent ledger are kept (seven years at least) and never erased by it.
RETAIN_MESSAGE_TEXT_DAYS = int(env_str("RETAIN_MESSAGE_TEXT_DAYS", "180"))
RETAIN_ATTEMPTS_DAYS = int(env_str("RETAIN_ATTEMPTS_DAYS", "400"))
RETAIN_SKIPS_DAYS = int(env_str("RETAIN_SKIPS_DAYS", "400"))
# The words patients wrote to the clinic (the staff inbox) are blanked this many days after they
# came; the row stays (who wrote when, on which channel). 0 keeps them.
RETAIN_INBOX_TEXT_DAYS = int(env_str("RETAIN_INBOX_TEXT_DAYS", "180"))
# Group messages (reminders.groups, the desk's group page): a bigger group is refused; the
# confirm step's signed token is good this many minutes.
GROUP_MESSAGE_MAX = int(env_str("GROUP_MESSAGE_MAX", "2000"))
GROUP_CONFIRM_MINUTES = int(env_str("GROUP_CONFIRM_MINUTES", "30"))
# An urgent group message goes outside the clinic's send window, but never at night: only
# between these hours (clinic time, HH:MM), else it waits for the morning or is refused.
URGENT_SEND_FROM = env_str("URGENT_SEND_FROM", "07:00")
URGENT_SEND_UNTIL = env_str("URGENT_SEND_UNTIL", "22:00")
# /healthz answers 503 when the worker has not planned or dispatched for this long, or a
# message due has waited this long (clinic_crm/health.py). In minutes.
HEALTH_MAX_PLANNER_AGE = timedelta(minutes=int(env_str("HEALTH_MAX_PLANNER_MINUTES", "30")))
HEALTH_MAX_DISPATCH_AGE = timedelta(minutes=int(env_str("HEALTH_MAX_DISPATCH_MINUTES", "10")))
HEALTH_MAX_QUEUE_AGE = timedelta(minutes=int(env_str("HEALTH_MAX_QUEUE_MINUTES", "15")))
# /metrics needs "Authorization: Bearer <METRICS_TOKEN>"; unset, there is no /metrics (404).
METRICS_TOKEN = env_str("METRICS_TOKEN")
# Where gunicorn's processes keep their counters for /metrics to add up (deploy/gunicorn.conf.py).
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR")

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = int(env_str("EMAIL_PORT", "587"))
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "clinic@localhost")
EMAIL_TIMEOUT = 20  # Django's SMTP backend otherwise waits forever on a dead server

# FHIR (manage.py import_fhir / export_fhir): the namespace of our chart numbers. TW Core gives a
# medical record number (type MR) the system of the organisation that assigns it, e.g.
# https://www.tph.mohw.gov.tw for 衛生福利部臺北醫院: set the clinic's own URL here.
FHIR_CHART_NO_SYSTEM = env_str("FHIR_CHART_NO_SYSTEM", "urn:clinic-crm:chart-no")
# A full-day appointment feed (import_records appointments --full-day) cancels bookings of the
# days it covers that are no longer in it, so no reminder goes out for a visit the HIS dropped.
IMPORT_CANCEL_VANISHED_APPOINTMENTS = env_bool("IMPORT_CANCEL_VANISHED_APPOINTMENTS", True)
# The admin's import page keeps uploaded files here (never under a served URL) until the run
# ends; uploads nobody imported and files of rejected rows are deleted after IMPORT_KEEP_HOURS.
IMPORT_DIR = Path(env_str("IMPORT_DIR") or BASE_DIR / "var" / "imports")
IMPORT_MAX_UPLOAD_MB = int(env_str("IMPORT_MAX_UPLOAD_MB", "50"))
IMPORT_KEEP_HOURS = int(env_str("IMPORT_KEEP_HOURS", "72"))
# The daily feed (patients/imports/feed.py): a folder with one sub-folder per saved mapping,
# watched by the worker every IMPORT_FEED_MINUTES (empty: no feed). A file with more than
# IMPORT_FEED_MAX_REJECT_SHARE bad rows is refused whole. A file touched in the last
# IMPORT_FEED_SETTLE_SECONDS may still be being written and waits for the next scan.
IMPORT_FEED_DIR = env_str("IMPORT_FEED_DIR")
IMPORT_FEED_MINUTES = int(env_str("IMPORT_FEED_MINUTES", "10"))
IMPORT_FEED_MAX_REJECT_SHARE = float(env_str("IMPORT_FEED_MAX_REJECT_SHARE", "0.05"))
IMPORT_FEED_SETTLE_SECONDS = int(env_str("IMPORT_FEED_SETTLE_SECONDS", "60"))
# An appointments feed file is the HIS's whole list for the days it covers (see above).
IMPORT_FEED_FULL_DAY = env_bool("IMPORT_FEED_FULL_DAY", True)

if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # A load balancer's or monitor's probe may ask the app directly, without TLS.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = int(env_str("SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # The Twilio SDK logs every request's URL and headers at INFO.
    "loggers": {"twilio.http_client": {"level": "WARNING"}},
}
