"""The clinic manager's dashboard."""

from django.urls import path

from dashboard import views

app_name = "dashboard"
urlpatterns = [
    path("", views.index, name="index"),
    path("export/<slug:table>.<slug:fmt>", views.export, name="export"),
]
