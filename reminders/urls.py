from django.urls import path

from reminders import views

urlpatterns = [
    # Our message's uuid is in the status callback URL Twilio calls (see sms_twilio).
    path("twilio/status/<uuid:message_uuid>/", views.twilio_status, name="twilio-status"),
    # Reports for SMS sent before that: found by their MessageSid.
    path("twilio/status/", views.twilio_status, name="twilio-status-by-sid"),
    path("twilio/sms/", views.twilio_sms, name="twilio-sms"),
    path("line/", views.line_webhook, name="line-webhook"),
]

# Mounted at /r/ (clinic_crm/urls.py): the tracked links patients open from a message.
link_urlpatterns = [
    path("<str:token>/", views.tracked_link_open, name="tracked-link"),
]
