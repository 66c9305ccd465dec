"""The front desk's own pages (not the admin): the day, the tasks."""

from django.urls import path

from desk import views

app_name = "desk"
urlpatterns = [
    path("", views.day, name="day"),
]
