"""How was your visit? on the manager's dashboard: the count and mean rating per department and
doctor, and per week and department, against a hand-computed fixture, narrowed by the page's
date range and department / doctor filters."""

import datetime as dt

import pytest
from django.http import QueryDict
from django.urls import reverse

from campaigns.models import Rule, RuleKind
from dashboard import selectors
from dashboard.filters import filters_parse
from reminders.models import OutboxMessage, Status
from surveys.models import VisitRating
from tests.factories import PatientFactory
from tests.helpers import taipei

pytestmark = pytest.mark.django_db
TODAY = dt.date(2026, 3, 20)
RANGE = {"range": "custom", "start": "2026-03-02", "end": "2026-03-15"}  # two weeks

# (department, doctor, rating, rated on): the hand count is in the test.
RATINGS = [
    ("家醫科", "王醫師", 5, taipei(2026, 3, 2, 10, 0)),  # week of 3/2
    ("家醫科", "王醫師", 4, taipei(2026, 3, 4, 10, 0)),  # week of 3/2
    ("家醫科", "王醫師", 2, taipei(2026, 3, 10, 10, 0)),  # week of 3/9
    ("家醫科", "李醫師", 3, taipei(2026, 3, 11, 23, 30)),  # week of 3/9
    ("眼科", "林醫師", 1, taipei(2026, 3, 15, 23, 59)),  # week of 3/9, the range's last minute
    ("眼科", "林醫師", 5, taipei(2026, 3, 16, 0, 0)),  # after the range
    ("眼科", "林醫師", 5, taipei(2026, 3, 1, 23, 59)),  # before it
]


@pytest.fixture
def ratings(clinic):
    rule = Rule.objects.get(kind=RuleKind.VISIT_SURVEY)
    for index, (department, doctor, rating, at) in enumerate(RATINGS):
        patient = PatientFactory()
        message = OutboxMessage.objects.create(
            rule=rule,
            patient=patient,
            occurrence_key=f"survey:visit:{index}",
            purpose=rule.purpose,
            channel="sms",
            due_at=at,
            next_attempt_at=at,
            expires_at=at,
            body="…",
            status=Status.SENT,
            sent_at=at,
        )
        VisitRating.objects.create(
            patient=patient,
            message=message,
            channel="sms",
            department=department,
            doctor=doctor,
            rating=rating,
            rated_at=at,
        )


def parsed(**extra):
    params = QueryDict(mutable=True)
    params.update({**RANGE, **extra})
    return filters_parse(params, today=TODAY)


def table(rows, with_week=False):
    return [
        ((r.week,) if with_week else ())
        + (r.department, r.doctor, r.count, round(r.average or 0, 2))
        for r in rows
    ]


def test_ratings_per_doctor_and_per_week_within_the_range(ratings):
    by_doctor, by_week = selectors.visit_ratings(parsed())

    assert table(by_doctor) == [
        ("家醫科", "李醫師", 1, 3.0),
        ("家醫科", "王醫師", 3, 3.67),  # (5 + 4 + 2) / 3
        ("眼科", "林醫師", 1, 1.0),
    ]
    assert table(by_week, with_week=True) == [
        (dt.date(2026, 3, 2), "家醫科", "", 2, 4.5),
        (dt.date(2026, 3, 9), "家醫科", "", 2, 2.5),  # (2 + 3) / 2
        (dt.date(2026, 3, 9), "眼科", "", 1, 1.0),
    ]


def test_department_and_doctor_filters_narrow_the_ratings(ratings):
    by_doctor, _ = selectors.visit_ratings(parsed(department="眼科"))
    assert table(by_doctor) == [("眼科", "林醫師", 1, 1.0)]

    by_doctor, by_week = selectors.visit_ratings(parsed(doctor="王醫師"))
    assert table(by_doctor) == [("家醫科", "王醫師", 3, 3.67)]
    assert [(r.week, r.count) for r in by_week] == [
        (dt.date(2026, 3, 2), 2),
        (dt.date(2026, 3, 9), 1),
    ]


def test_the_dashboard_shows_the_ratings_and_exports_them(client, manager_user, ratings):
    client.force_login(manager_user)

    html = client.get(reverse("dashboard:index"), RANGE).content.decode()
    csv = b"".join(
        client.get(reverse("dashboard:export", args=["ratings", "csv"]), RANGE).streaming_content
    ).decode("utf-8-sig")

    assert 'id="table-ratings"' in html and 'id="table-ratings_weekly"' in html
    assert "3.67" in html and "3.67" in csv and "王醫師" in csv
