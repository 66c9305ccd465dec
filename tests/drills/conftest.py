# The drills use the same fake providers as the channel tests.
from tests.reminders.conftest import fake_line, fake_twilio  # noqa: F401
