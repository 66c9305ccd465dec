"""The answers a patient can tap on LINE (buttons and quick replies), in one vocabulary shared by
the LINE channel that offers them and reminders.replies that acts on them.

A postback carries `<answer>:<message uuid>` and nothing else: no patient data, and the message
it answers found again by our own id (the sender must be that message's patient). SMS and e-mail
keep their reply codes (reminders.replies, reminders.inbox).
"""

import re
import uuid
from enum import StrEnum


class Answer(StrEnum):
    # A confirmation request (an appointment rule that asks to confirm).
    CONFIRM = "confirm"
    CHANGE = "change"
    CALL_ME = "callme"
    # A post-op check-in.
    FINE = "fine"
    PAIN = "pain"
    NEED_CALL = "needcall"
    # How was your visit? (campaigns.kinds VISIT_SURVEY), 1 to 5.
    RATE_1 = "rate1"
    RATE_2 = "rate2"
    RATE_3 = "rate3"
    RATE_4 = "rate4"
    RATE_5 = "rate5"


CONFIRMATION_ANSWERS = (Answer.CONFIRM, Answer.CHANGE, Answer.CALL_ME)
POSTOP_ANSWERS = (Answer.FINE, Answer.PAIN, Answer.NEED_CALL)
RATING_ANSWERS = (Answer.RATE_1, Answer.RATE_2, Answer.RATE_3, Answer.RATE_4, Answer.RATE_5)

# What the patient sees on the button, and what LINE shows in the chat as their answer. Kept
# here (not in the .po file) because it follows the patient's language, not the staff's.
LABELS: dict[Answer, tuple[str, str]] = {
    Answer.CONFIRM: ("確認會到", "I'll be there"),
    Answer.CHANGE: ("需要改期", "I need to change"),
    Answer.CALL_ME: ("請來電", "Please call me"),
    Answer.FINE: ("一切都好", "I'm fine"),
    Answer.PAIN: ("有點痛", "Some pain"),
    Answer.NEED_CALL: ("需要來電", "I need a call"),
    Answer.RATE_1: ("1 ★", "1 ★"),
    Answer.RATE_2: ("2 ★★", "2 ★★"),
    Answer.RATE_3: ("3 ★★★", "3 ★★★"),
    Answer.RATE_4: ("4 ★★★★", "4 ★★★★"),
    Answer.RATE_5: ("5 ★★★★★", "5 ★★★★★"),
}

# LINE allows 300 characters of postback data; ours is one word and a UUID. Anything longer or
# differently shaped is not ours.
MAX_DATA_CHARS = 60
_DATA = re.compile(r"^([a-z0-9]{1,10}):([0-9a-f-]{36})$")


def label(answer: Answer, language: str) -> str:
    zh, en = LABELS[answer]
    return en if language == "en" else zh


def postback_data(answer: Answer, message_id: uuid.UUID) -> str:
    """What a button sends back for `answer` to the message `message_id`."""
    return f"{answer.value}:{message_id}"


def postback_parse(data: str) -> tuple[Answer, uuid.UUID] | None:
    """The answer and message id in a postback's data; None when it is not ours."""
    if len(data) > MAX_DATA_CHARS:
        return None
    found = _DATA.match(data)
    if found is None:
        return None
    try:
        return Answer(found.group(1)), uuid.UUID(found.group(2))
    except ValueError:
        return None


def rating_of(answer: Answer) -> int | None:
    """1–5 for a rating answer, None for any other."""
    return RATING_ANSWERS.index(answer) + 1 if answer in RATING_ANSWERS else None
