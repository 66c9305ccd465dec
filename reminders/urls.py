from django.urls import path

from reminders import views

urlpatterns = [
    path("twilio/status/", views.twilio_status, name="twilio-status"),
    path("twilio/sms/", views.twilio_sms, name="twilio-sms"),
    path("line/", views.line_webhook, name="line-webhook"),
]
