from django.urls import path

from consent import views

app_name = "consent"

urlpatterns = [
    path("<str:token>/", views.patient_settings_page, name="patient_settings"),
]
