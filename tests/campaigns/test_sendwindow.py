import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from campaigns.sendwindow import fit, next_send_time
from patients.models import ClinicProfile

TPE = ZoneInfo("Asia/Taipei")

pytestmark = pytest.mark.django_db


def taipei(*args):
    return dt.datetime(*args, tzinfo=TPE)


@pytest.fixture
def profile():
    return ClinicProfile(send_window_start=dt.time(9), send_window_end=dt.time(21))


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (taipei(2026, 11, 24, 8, 59), taipei(2026, 11, 24, 9, 0)),  # just before opening
        (taipei(2026, 11, 24, 9, 0), taipei(2026, 11, 24, 9, 0)),  # the opening minute
        (taipei(2026, 11, 24, 20, 59), taipei(2026, 11, 24, 20, 59)),  # last minute
        (taipei(2026, 11, 24, 21, 0), taipei(2026, 11, 25, 9, 0)),  # closing: next morning
        (taipei(2026, 11, 24, 23, 30), taipei(2026, 11, 25, 9, 0)),
        (taipei(2026, 11, 25, 2, 0), taipei(2026, 11, 25, 9, 0)),  # after midnight
    ],
)
def test_send_window_edges(profile, moment, expected):
    assert next_send_time(moment, profile) == expected


def test_utc_moments_are_judged_in_the_clinics_time_zone(profile):
    # 13:30 UTC is 21:30 in Taipei: after the window.
    moment = dt.datetime(2026, 11, 24, 13, 30, tzinfo=dt.UTC)

    assert next_send_time(moment, profile) == taipei(2026, 11, 25, 9, 0)


def test_closed_days_are_skipped(profile):
    profile.closed_weekdays = [5, 6]  # weekend

    friday_night = taipei(2026, 11, 27, 22, 0)

    assert next_send_time(friday_night, profile) == taipei(2026, 11, 30, 9, 0)


def test_a_message_that_would_arrive_after_it_is_useful_is_stale(profile):
    dose_at = taipei(2026, 11, 24, 7, 0)

    assert fit(taipei(2026, 11, 24, 6, 45), dose_at, profile) is None
    assert fit(taipei(2026, 11, 24, 6, 45), taipei(2026, 11, 24, 12), profile) == taipei(
        2026, 11, 24, 9, 0
    )


def test_a_clinic_closed_every_day_is_refused_not_looped(profile):
    profile.closed_weekdays = list(range(7))

    with pytest.raises(ValueError, match="every day"):
        next_send_time(taipei(2026, 11, 24, 10), profile)


def test_a_closure_date_is_skipped_like_a_closed_weekday(profile):
    from patients.models import ClinicDay

    ClinicDay.objects.create(date=dt.date(2026, 11, 25), kind=ClinicDay.Kind.TYPHOON)

    assert next_send_time(taipei(2026, 11, 24, 21, 30), profile) == taipei(2026, 11, 26, 9, 0)


def test_a_makeup_workday_opens_a_closed_weekday(profile):
    from patients.models import ClinicDay

    profile.closed_weekdays = [5, 6]
    ClinicDay.objects.create(date=dt.date(2026, 11, 28), kind=ClinicDay.Kind.WORKDAY)

    assert next_send_time(taipei(2026, 11, 27, 22, 0), profile) == taipei(2026, 11, 28, 9, 0)


def test_closures_longer_than_a_week_are_waited_out(profile):
    from patients.models import ClinicDay

    for offset in range(11):  # 春節 2027: Feb 4-14
        day = dt.date(2027, 2, 4) + dt.timedelta(days=offset)
        ClinicDay.objects.create(date=day, kind=ClinicDay.Kind.HOLIDAY)

    assert next_send_time(taipei(2027, 2, 3, 22, 0), profile) == taipei(2027, 2, 15, 9, 0)


def test_the_calendar_is_read_once_per_profile_and_year(profile, django_assert_num_queries):
    with django_assert_num_queries(2):  # this year and the next, once each
        for hour in range(24):
            next_send_time(taipei(2026, 12, 31, hour), profile)
        next_send_time(taipei(2027, 1, 2, 22), profile)


def test_a_changed_window_or_closed_weekday_is_answered_anew_on_the_same_profile(profile):
    # next_send_time keeps its answers on the profile (the planner asks about one moment for
    # thousands of rows): a profile edited in place must not get the old answer back.
    friday_night = taipei(2026, 11, 27, 22, 0)
    assert next_send_time(friday_night, profile) == taipei(2026, 11, 28, 9, 0)

    profile.closed_weekdays = [5, 6]
    assert next_send_time(friday_night, profile) == taipei(2026, 11, 30, 9, 0)

    profile.send_window_start = dt.time(10)
    assert next_send_time(friday_night, profile) == taipei(2026, 11, 30, 10, 0)


def test_the_same_moment_is_answered_in_the_active_time_zone(profile):
    from django.utils import timezone

    moment = taipei(2026, 11, 24, 10, 0)
    assert next_send_time(moment, profile) == moment  # inside 09:00–21:00 Taipei

    with timezone.override(dt.UTC):  # 02:00 UTC: before the window in that zone
        assert next_send_time(moment, profile) == dt.datetime(2026, 11, 24, 9, tzinfo=dt.UTC)
