from django.urls import path

from reminders import views

urlpatterns = [
    path("twilio/status/", views.twilio_status, name="twilio-status"),
]
