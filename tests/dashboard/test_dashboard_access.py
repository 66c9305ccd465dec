"""Who may open the dashboard: the clinic manager; the front desk gets the zh-Hant 403 page;
anyone not logged in goes to the login page. The admin links to it for managers only."""

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_anonymous_goes_to_the_login_page(client):
    response = client.get(reverse("dashboard:index"))

    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_front_desk_gets_the_zh_hant_403_page(client, front_desk_user):
    client.force_login(front_desk_user)

    for url in (
        reverse("dashboard:index"),
        reverse("dashboard:export", args=["funnel", "csv"]),
        reverse("dashboard:week_ahead"),
    ):
        response = client.get(url)
        assert response.status_code == 403
        assert "沒有權限" in response.content.decode()


def test_manager_sees_the_dashboard_in_zh_hant(client, manager_user):
    client.force_login(manager_user)

    response = client.get(reverse("dashboard:index"))

    page = response.content.decode()
    assert response.status_code == 200
    assert "關懷成效儀表板" in page
    assert "各規則漏斗" in page and "需要處理" in page


def test_english_when_the_browser_asks(client, manager_user):
    client.force_login(manager_user)

    page = client.get(reverse("dashboard:index"), HTTP_ACCEPT_LANGUAGE="en").content.decode()

    assert "Campaign dashboard" in page and "Funnel per rule" in page


def test_admin_links_to_the_dashboard_for_managers_only(client, manager_user, front_desk_user):
    client.force_login(manager_user)
    assert reverse("dashboard:index") in client.get(reverse("admin:index")).content.decode()

    client.force_login(front_desk_user)
    assert reverse("dashboard:index") not in client.get(reverse("admin:index")).content.decode()
