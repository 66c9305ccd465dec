# The fake LINE and Twilio servers of the reminders tests: the survey's answers come back
# through the same signed webhooks.
from tests.reminders.conftest import fake_line, fake_twilio  # noqa: F401
