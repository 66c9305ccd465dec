"""Pasting or importing a year's closure dates in the admin."""

import datetime as dt

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from patients.closures import clinic_days_parse_csv, clinic_days_parse_lines
from patients.dates import day_parse
from patients.models import ClinicDay

pytestmark = pytest.mark.django_db
IMPORT = "admin:patients_clinicday_import"


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2027-01-01", dt.date(2027, 1, 1)),
        ("2027/1/1", dt.date(2027, 1, 1)),
        ("20270101", dt.date(2027, 1, 1)),
        ("116/01/01", dt.date(2027, 1, 1)),
        ("116-1-1", dt.date(2027, 1, 1)),
        ("1160101", dt.date(2027, 1, 1)),
        ("49/03/15", dt.date(1960, 3, 15)),
        ("０４９０３１５", dt.date(1960, 3, 15)),
        ("民國116年1月1日", dt.date(2027, 1, 1)),
        ("116/02/30", None),
        ("元旦", None),
    ],
)
def test_dates_are_read_in_gregorian_and_roc_spellings(written, expected):
    assert day_parse(written) == expected


def test_pasted_lines_take_their_kind_from_the_note():
    result = clinic_days_parse_lines(
        "# 2027\n2027-01-01 元旦\n116/02/20 補行上班\n\n2027-07-28 颱風假\n2027-08-02 院長請假\n",
        default_kind=ClinicDay.Kind.HOLIDAY,
    )

    assert result.errors == []
    assert [(d.date, d.kind, d.note) for d in result.days] == [
        (dt.date(2027, 1, 1), ClinicDay.Kind.HOLIDAY, "元旦"),
        (dt.date(2027, 2, 20), ClinicDay.Kind.WORKDAY, "補行上班"),
        (dt.date(2027, 7, 28), ClinicDay.Kind.TYPHOON, "颱風假"),
        (dt.date(2027, 8, 2), ClinicDay.Kind.LEAVE, "院長請假"),
    ]


def test_a_line_that_is_not_a_date_is_named_by_its_number(english):
    result = clinic_days_parse_lines("2027-01-01 元旦\n1/1 元旦", default_kind="holiday")

    assert result.errors == ["Line 2: 1/1 is not a date."]


def test_the_government_office_calendar_yields_weekday_holidays_and_makeup_workdays():
    csv = (
        "西元日期,星期,是否放假,備註\n"
        "20270101,五,2,開國紀念日\n"
        "20270102,六,2,\n"  # an ordinary Saturday: the clinic's weekly pattern decides
        "20270104,一,0,\n"
        "20270220,六,0,補行上班\n"
        "20270227,六,2,和平紀念日補假\n"
    ).encode("cp950")

    result = clinic_days_parse_csv(csv, default_kind="holiday")

    assert [(d.date, d.kind) for d in result.days] == [
        (dt.date(2027, 1, 1), ClinicDay.Kind.HOLIDAY),
        (dt.date(2027, 2, 20), ClinicDay.Kind.WORKDAY),
        (dt.date(2027, 2, 27), ClinicDay.Kind.HOLIDAY),
    ]


def test_the_manager_pastes_a_year_in_the_admin(admin_client):
    ClinicDay.objects.create(date=dt.date(2027, 1, 1), kind=ClinicDay.Kind.TYPHOON)

    response = admin_client.post(
        reverse(IMPORT),
        {"lines": "2027-01-01 元旦\n116/02/20 補班", "default_kind": "holiday"},
    )

    assert response.status_code == 302
    assert list(ClinicDay.objects.values_list("date", "kind", "open", "note")) == [
        (dt.date(2027, 1, 1), "holiday", False, "元旦"),
        (dt.date(2027, 2, 20), "workday", True, "補班"),
    ]


def test_a_csv_upload_is_imported_and_a_bad_line_imports_nothing(admin_client):
    upload = SimpleUploadedFile("2027.csv", "date,note\n2027-01-01,元旦\n2027-13-01,x\n".encode())

    response = admin_client.post(reverse(IMPORT), {"csv_file": upload, "default_kind": "holiday"})

    assert response.status_code == 200
    assert "2027-13-01" in response.content.decode()
    assert not ClinicDay.objects.exists()

    upload = SimpleUploadedFile("2027.csv", "\ufeffdate,note\n2027-01-01,元旦\n".encode())
    admin_client.post(reverse(IMPORT), {"csv_file": upload, "default_kind": "holiday"})

    assert ClinicDay.objects.get().date == dt.date(2027, 1, 1)


def test_the_front_desk_may_not_import_closure_dates(client, front_desk_user):
    client.force_login(front_desk_user)

    response = client.post(reverse(IMPORT), {"lines": "2027-01-01 元旦", "default_kind": "holiday"})

    assert response.status_code == 403
    assert not ClinicDay.objects.exists()


def test_the_import_page_and_the_list_render(admin_client):
    ClinicDay.objects.create(date=dt.date(2027, 1, 1), note="元旦")

    assert admin_client.get(reverse(IMPORT)).status_code == 200
    page = admin_client.get(reverse("admin:patients_clinicday_changelist"))
    assert page.status_code == 200
    assert reverse(IMPORT) in page.content.decode()


def test_the_manager_keeps_closure_dates_and_the_front_desk_reads_them(
    client, manager_user, front_desk_user
):
    client.force_login(manager_user)

    client.post(reverse(IMPORT), {"lines": "2027-01-01 元旦", "default_kind": "holiday"})

    assert ClinicDay.objects.get().date == dt.date(2027, 1, 1)
    client.force_login(front_desk_user)
    assert client.get(reverse("admin:patients_clinicday_changelist")).status_code == 200
