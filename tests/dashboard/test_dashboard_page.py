"""The dashboard page: a fixed number of queries, filters in the query string, charts drawn
as SVG with the figures, links into filtered admin lists that the admin accepts, and the week
ahead loaded on its own."""

import re
import uuid

import pytest
from django.urls import reverse

from reminders.models import OutboxMessage, Status
from tests.dashboard.conftest import RANGE

pytestmark = pytest.mark.django_db


@pytest.fixture
def manager(client, manager_user):
    client.force_login(manager_user)
    return client


def test_page_takes_a_fixed_number_of_queries(manager, small_clinic, django_assert_max_num_queries):
    # session + user + group check 3, rules 1, funnel 5 (the steps: which days are summarised
    # and one live count of the rest, or the summary), effect 3, trends 3, cost 2, attention 3,
    # filter lists 2, when the summary was counted 1, visit ratings 2: 26, whatever the number
    # of rows, with or without the summary; on PostgreSQL four more (SET LOCAL jit and
    # work_mem, in a savepoint inside the test's transaction).
    from django.db import connection

    from dashboard.summary import refresh_since

    budget = 26 + (4 if connection.vendor == "postgresql" else 0)
    with django_assert_max_num_queries(budget):
        response = manager.get(reverse("dashboard:index"), RANGE)
    assert response.status_code == 200
    refresh_since()
    with django_assert_max_num_queries(budget):
        response = manager.get(reverse("dashboard:index"), RANGE)
    assert response.status_code == 200


def test_query_count_does_not_grow_with_rows(manager, small_clinic, django_assert_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as before:
        manager.get(reverse("dashboard:index"), RANGE)
    message = OutboxMessage.objects.first()
    for n in range(20):
        message.pk, message.uuid, message.occurrence_key = None, uuid.uuid4(), f"more:{n}"
        message.save()
    with django_assert_num_queries(len(before.captured_queries)):
        manager.get(reverse("dashboard:index"), RANGE)


def test_charts_are_inline_svg_with_the_figures(manager, small_clinic):
    page = manager.get(reverse("dashboard:index"), RANGE).content.decode()

    assert page.count("<svg") >= 3
    # The funnel chart's bar for "due" of the return-visit rule is 9 high in data terms.
    assert 'data-value="9"' in page
    # No-show rate 2/5 in the week of 2 March.
    assert 'data-value="0.4000"' in page
    assert "cdn" not in page.lower()


def test_filters_round_trip_through_the_form(manager, small_clinic):
    rule = small_clinic.visit_rule
    params = {
        **RANGE,
        "rule": rule.pk,
        "channel": "sms",
        "department": "家醫科",
        "doctor": "王醫師",
    }

    page = manager.get(reverse("dashboard:index"), params).content.decode()

    assert f'<option value="{rule.pk}" selected>' in page
    assert '<option value="sms" selected>' in page
    assert "<option selected>家醫科</option>" in page
    assert 'value="2026-03-01"' in page and 'value="2026-03-09"' in page
    # The export links carry the same filters.
    assert re.search(r'export/funnel\.csv\?[^"]*channel=sms', page)


def test_bad_filter_values_fall_back_to_the_defaults(manager, small_clinic):
    response = manager.get(
        reverse("dashboard:index"), {"range": "custom", "start": "x", "rule": "y", "channel": "z"}
    )

    assert response.status_code == 200
    assert 'value="30d" checked' in response.content.decode()


def test_attention_links_open_filtered_admin_lists(manager, small_clinic):
    OutboxMessage.objects.filter(status=Status.UNKNOWN).update(status=Status.FAILED)
    page = manager.get(reverse("dashboard:index"), RANGE).content.decode()
    links = re.findall(r'<li class="(some|none)"><a href="([^"]+)"><strong>(\d+)</strong>', page)

    assert len(links) >= 6
    for _state, href, count in links:
        href = href.replace("&amp;", "&")
        response = manager.get(href)
        assert response.status_code == 200, href  # the admin accepts every filter (no ?e=1)
        if "outboxmessage" in href and "status__exact=failed" in href:
            assert count == "2"
            assert response.context["cl"].result_count == 2


def test_week_ahead_loads_on_its_own(manager, small_clinic):
    page = manager.get(reverse("dashboard:index"), RANGE).content.decode()
    assert 'id="week-ahead-panel"' in page

    fragment = manager.get(reverse("dashboard:week_ahead"), RANGE)

    assert fragment.status_code == 200
    assert "table-week-ahead" in fragment.content.decode()
