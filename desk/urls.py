"""The front desk's own pages (not the admin): the day, the tasks."""

from django.urls import path

from desk import tasks, views

app_name = "desk"
urlpatterns = [
    path("", views.day, name="day"),
    path("calls/", views.calls, name="day_calls"),
    path("appointments/undo/", views.appointment_undo_view, name="appointment_undo"),
    path("appointments/<int:pk>/phone/", views.appointment_phone, name="appointment_phone"),
    path("appointments/<int:pk>/mark/", views.appointment_action, name="appointment_action"),
    path("tasks/", tasks.task_list, name="tasks"),
    path("tasks/<int:pk>/<slug:action>/", tasks.task_action, name="task_action"),
]
