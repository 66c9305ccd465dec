"""The front desk's own pages (not the admin): the day, the tasks, a patient's LINE link."""

from django.urls import path

from desk import line_link, tasks, views

app_name = "desk"
urlpatterns = [
    path("", views.day, name="day"),
    path("calls/", views.calls, name="day_calls"),
    path("appointments/undo/", views.appointment_undo_view, name="appointment_undo"),
    path("appointments/<int:pk>/phone/", views.appointment_phone, name="appointment_phone"),
    path("appointments/<int:pk>/mark/", views.appointment_action, name="appointment_action"),
    path("patients/<int:pk>/line/", line_link.line_link, name="line_link"),
    path("tasks/", tasks.task_list, name="tasks"),
    path("tasks/<int:pk>/<slug:action>/", tasks.task_action, name="task_action"),
]
