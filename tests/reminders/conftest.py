import pytest

from reminders.channels.base import _load

from .contract import require_specs
from .fake_providers import FakeLine, FakeTwilio


@pytest.fixture
def fake_twilio(settings):
    """A fake Twilio on 127.0.0.1, with the real SMS adapter pointed at it."""
    require_specs()  # the fake checks every request against Twilio's own spec
    fake = FakeTwilio().start()
    settings.TWILIO_ACCOUNT_SID = fake.account_sid
    settings.TWILIO_AUTH_TOKEN = fake.auth_token
    settings.TWILIO_FROM_NUMBER = "+15017122661"
    settings.TWILIO_MESSAGING_SERVICE_SID = ""
    settings.TWILIO_API_BASE_URL = fake.url
    settings.PUBLIC_BASE_URL = "https://clinic.example"
    settings.REMINDER_CHANNELS = {
        **settings.REMINDER_CHANNELS,
        "sms": "reminders.channels.sms_twilio.TwilioSMSChannel",
    }
    _load.cache_clear()
    yield fake
    fake.stop()
    _load.cache_clear()
    assert fake.violations == [], "a request the real Twilio would refuse"


@pytest.fixture
def fake_line(settings):
    """A fake LINE Messaging API on 127.0.0.1, with the real LINE adapter pointed at it."""
    require_specs()
    fake = FakeLine().start()
    settings.LINE_CHANNEL_ACCESS_TOKEN = fake.access_token
    settings.LINE_API_BASE_URL = fake.url
    settings.REMINDER_CHANNELS = {
        **settings.REMINDER_CHANNELS,
        "line": "reminders.channels.line.LineChannel",
    }
    _load.cache_clear()
    yield fake
    fake.stop()
    _load.cache_clear()
    assert fake.violations == [], "a request the real LINE would refuse"
