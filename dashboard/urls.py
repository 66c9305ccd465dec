"""The clinic manager's dashboard."""

from django.urls import path

from dashboard import views

app_name = "dashboard"
urlpatterns = [
    path("", views.index, name="index"),
    path("week-ahead/", views.week_ahead, name="week_ahead"),
    path("export/<slug:table>.<slug:fmt>", views.export, name="export"),
]
