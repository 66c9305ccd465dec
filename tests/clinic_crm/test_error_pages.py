"""The error pages speak the staff's language (zh-Hant, English on request) and stand alone:
the 500 page renders without a request, a user or static files."""

import pytest
from django.contrib.auth.models import User
from django.template.loader import render_to_string
from django.test import Client, RequestFactory
from django.utils import translation
from django.views.defaults import server_error

pytestmark = pytest.mark.django_db


def test_a_missing_page_says_so_in_chinese(client):
    response = client.get("/no-such-page/")

    assert response.status_code == 404
    html = response.content.decode()
    assert "找不到頁面" in html and "錯誤代碼 404" in html
    assert "Not Found" not in html


def test_a_missing_page_is_in_english_for_a_user_who_chose_it(client):
    response = client.get("/no-such-page/", HTTP_ACCEPT_LANGUAGE="en")

    assert response.status_code == 404
    assert "Page not found" in response.content.decode()


def test_a_page_the_role_may_not_open_says_so_in_chinese(client, front_desk_user):
    client.force_login(front_desk_user)

    response = client.get("/admin/auth/user/1/password/")

    assert response.status_code == 403
    html = response.content.decode()
    assert "沒有權限" in html and "錯誤代碼 403" in html
    assert "Forbidden" not in html


def test_a_form_sent_without_its_csrf_token_says_what_to_do_in_chinese():
    User.objects.create_user("desk2", password="correct horse 42", is_staff=True)
    client = Client(enforce_csrf_checks=True)

    response = client.post("/admin/login/", {"username": "desk2", "password": "x"})

    assert response.status_code == 403
    html = response.content.decode()
    assert "表單已失效" in html and "重新整理" in html
    assert "CSRF verification failed" not in html


def test_the_server_error_page_is_in_chinese_and_needs_no_request_context():
    request = RequestFactory().get("/")

    with translation.override("zh-hant"):
        response = server_error(request)
        alone = render_to_string("500.html")  # as Django renders it: no request, no context

    assert response.status_code == 500
    assert "系統發生錯誤" in response.content.decode()
    assert "系統發生錯誤" in alone and "錯誤代碼 500" in alone
    assert "<link" not in alone  # no static file to fail on
