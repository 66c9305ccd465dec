"""When the clinic lets messages go out: its daily window and the days it is closed.

The planner and the send gate both ask `fit`: the one definition of "when may this go out".
"""

from datetime import date, datetime, time, timedelta

from django.utils import timezone

from patients.models import ClinicProfile


def at_local(day: date, clock: time) -> datetime:
    """`day` at `clock` in the clinic's time zone."""
    return timezone.make_aware(datetime.combine(day, clock))


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The start of `day` and of the day after, in the clinic's time zone."""
    return at_local(day, time.min), at_local(day + timedelta(days=1), time.min)


def is_open_day(day: date, profile: ClinicProfile) -> bool:
    """Whether the clinic sends messages on `day` at all."""
    return day.weekday() not in profile.closed_weekdays


def next_send_time(moment: datetime, profile: ClinicProfile) -> datetime:
    """`moment` itself if the clinic may send then, else the next opening of its window.

    Raises ValueError when the profile closes every day of the week."""
    local = timezone.localtime(moment)
    day = local.date()
    for _ in range(8):  # a week always has an open day unless all seven are closed
        if is_open_day(day, profile):
            opens = at_local(day, profile.send_window_start)
            closes = at_local(day, profile.send_window_end)
            if local < opens:
                return opens
            if local < closes:
                return local
        day += timedelta(days=1)
        local = at_local(day, time.min)
    raise ValueError("the clinic profile closes every day of the week")


def fit(due: datetime, expires: datetime, profile: ClinicProfile) -> datetime | None:
    """The first time at or after `due` inside the window, or None if that is not before
    `expires` (a dose already taken, an appointment already over): such a message is stale."""
    send = next_send_time(due, profile)
    return send if send < expires else None
