"""When the clinic lets messages go out: its daily window, the weekdays it is closed, and its
closure dates and make-up workdays (patients.models.ClinicDay).

The planner and the send gate both ask `fit`: the one definition of "when may this go out".
"""

from datetime import date, datetime, time, timedelta
from typing import Any

from django.utils import timezone

from patients.models import ClinicProfile
from patients.selectors import clinic_days_in_year

# How far ahead an open day is looked for. Taiwan's Lunar New Year closes a clinic for up to
# nine days in a row, and a doctor's leave may be longer; a clinic closed for two months has
# stopped sending on purpose (or by a mistake someone must see).
LONGEST_CLOSURE_DAYS = 62
# Where the closure dates loaded for a profile are kept, on that profile object: loaded once
# per year per planning pass or dispatch batch (each loads its own profile), never per call.
_CALENDAR = "_clinic_days_by_year"
# Where next_send_time keeps its answers on a profile object, and how many at most.
_ANSWERS = "_next_send_times"
_MAX_ANSWERS = 10_000


def at_local(day: date, clock: time) -> datetime:
    """`day` at `clock` in the clinic's time zone."""
    return timezone.make_aware(datetime.combine(day, clock))


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The start of `day` and of the day after, in the clinic's time zone."""
    return at_local(day, time.min), at_local(day + timedelta(days=1), time.min)


def _clinic_day(day: date, profile: ClinicProfile) -> bool | None:
    """True on a make-up workday, False on a closure date, None when the weekday decides."""
    years: dict[int, dict[date, bool]] = profile.__dict__.setdefault(_CALENDAR, {})
    if day.year not in years:
        years[day.year] = clinic_days_in_year(day.year)
    return years[day.year].get(day)


def is_open_day(day: date, profile: ClinicProfile) -> bool:
    """Whether the clinic sends messages on `day` at all: its weekly pattern, unless a closure
    date closes it or a make-up workday opens it."""
    recorded = _clinic_day(day, profile)
    if recorded is not None:
        return recorded
    return day.weekday() not in profile.closed_weekdays


def next_send_time(moment: datetime, profile: ClinicProfile) -> datetime:
    """`moment` itself if the clinic may send then, else the next opening of its window.

    Raises ValueError when the clinic is closed every day of the next LONGEST_CLOSURE_DAYS."""
    # The planner asks about the same few moments for thousands of rows (a rule's send time
    # today, a dose time): the answer is kept on the profile, like its closure dates, keyed
    # with everything it depends on that a caller may change on the same object.
    zone = timezone.get_current_timezone()
    key = (
        moment,
        zone,
        profile.send_window_start,
        profile.send_window_end,
        tuple(profile.closed_weekdays or ()),
    )
    answers: dict[tuple[Any, ...], datetime] = profile.__dict__.setdefault(_ANSWERS, {})
    if (known := answers.get(key)) is not None:
        return known
    if len(answers) >= _MAX_ANSWERS:  # a long-lived profile asked about ever new moments
        answers.clear()
    answers[key] = answer = _next_send_time(timezone.localtime(moment, zone), profile)
    return answer


def _next_send_time(local: datetime, profile: ClinicProfile) -> datetime:
    day = local.date()
    for _ in range(LONGEST_CLOSURE_DAYS + 1):
        if is_open_day(day, profile):
            opens = at_local(day, profile.send_window_start)
            closes = at_local(day, profile.send_window_end)
            if local < opens:
                return opens
            if local < closes:
                return local
        day += timedelta(days=1)
        local = at_local(day, time.min)
    raise ValueError(
        f"the clinic is closed every day of the next {LONGEST_CLOSURE_DAYS} days "
        "(closed weekdays and closure dates)"
    )


def fit(due: datetime, expires: datetime, profile: ClinicProfile) -> datetime | None:
    """The first time at or after `due` inside the window, or None if that is not before
    `expires` (a dose already taken, an appointment already over): such a message is stale."""
    send = next_send_time(due, profile)
    return send if send < expires else None
