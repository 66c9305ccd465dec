"""Every table of the dashboard downloads as CSV (UTF-8 with BOM, would-be formulas
neutralised) and XLSX, with the page's filters."""

import io

import pytest
from django.urls import reverse
from openpyxl import load_workbook

from campaigns.models import Rule
from dashboard.tables import BUILDERS
from tests.dashboard.conftest import RANGE

pytestmark = pytest.mark.django_db


@pytest.fixture
def manager(client, manager_user):
    client.force_login(manager_user)
    return client


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_csv_has_a_bom_and_the_pages_numbers(manager, small_clinic):
    response = manager.get(reverse("dashboard:export", args=["funnel", "csv"]), RANGE)

    data = body(response)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert data.startswith(b"\xef\xbb\xbf")
    text = data.decode("utf-8-sig")
    assert text.splitlines()[0].startswith("規則,應發,已排入")
    row = next(line for line in text.splitlines() if line.startswith("測試回診提醒"))
    assert row.split(",")[1:4] == ["9", "6", "3"]


def test_a_rule_name_that_looks_like_a_formula_is_neutralised(manager, small_clinic):
    Rule.objects.filter(pk=small_clinic.visit_rule.pk).update(name="=HYPERLINK(1)")

    text = body(manager.get(reverse("dashboard:export", args=["funnel", "csv"]), RANGE)).decode()

    assert "'=HYPERLINK(1)" in text
    assert "\n=HYPERLINK" not in text


def test_every_table_opens_as_xlsx(manager, small_clinic):
    for table in BUILDERS:
        response = manager.get(reverse("dashboard:export", args=[table, "xlsx"]), RANGE)

        assert response.status_code == 200
        book = load_workbook(io.BytesIO(body(response)))
        rows = list(book.active.iter_rows(values_only=True))
        assert rows[0][0]  # a header


def test_xlsx_funnel_carries_the_counts(manager, small_clinic):
    response = manager.get(reverse("dashboard:export", args=["funnel", "xlsx"]), RANGE)

    rows = list(load_workbook(io.BytesIO(body(response))).active.iter_rows(values_only=True))
    visit = next(row for row in rows if row[0] == "測試回診提醒")
    assert visit[1:4] == (9, 6, 3)


def test_unknown_table_or_format_is_404(manager):
    assert manager.get(reverse("dashboard:export", args=["nothing", "csv"])).status_code == 404
    assert manager.get(reverse("dashboard:export", args=["funnel", "pdf"])).status_code == 404
