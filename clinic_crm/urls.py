from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from clinic_crm import health
from desk import views as desk_views
from reminders.urls import link_urlpatterns

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # Before the admin's own: the front desk lands on its day view after logging in.
    path("admin/login/", desk_views.staff_login, name="staff_login"),
    path("admin/", admin.site.urls),
    path("webhooks/", include("reminders.urls")),
    # Tracked links patients open from a message (short: they count in an SMS's length).
    path("r/", include(link_urlpatterns)),
    # The patient's own settings page, from {% settings_link %} in a message (short too).
    path("p/", include("consent.urls")),
    path("desk/", include("desk.urls")),
    path("dashboard/", include("dashboard.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", health.metrics, name="metrics"),
]
