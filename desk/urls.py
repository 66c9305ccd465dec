"""The front desk's own pages (not the admin): the day, the tasks, a patient's LINE link, the
inbox, group messages."""

from django.urls import path

from desk import groups, inbox, line_link, tasks, views

app_name = "desk"
urlpatterns = [
    path("", views.day, name="day"),
    path("calls/", views.calls, name="day_calls"),
    path("appointments/undo/", views.appointment_undo_view, name="appointment_undo"),
    path("appointments/<int:pk>/phone/", views.appointment_phone, name="appointment_phone"),
    path("appointments/<int:pk>/mark/", views.appointment_action, name="appointment_action"),
    path("patients/<int:pk>/line/", line_link.line_link, name="line_link"),
    path("inbox/", inbox.inbox, name="inbox"),
    path("inbox/patients/<int:pk>/", inbox.conversation_view, name="conversation"),
    path("inbox/patients/<int:pk>/reply/", inbox.reply, name="conversation_reply"),
    path("inbox/patients/<int:pk>/assign/", inbox.assign, name="conversation_assign"),
    path("inbox/patients/<int:pk>/handled/", inbox.handled, name="conversation_handled"),
    path(
        "inbox/senders/<str:channel>/<str:sender>/",
        inbox.unknown_sender,
        name="inbox_unknown",
    ),
    path("groups/", groups.groups, name="groups"),
    path("groups/preview/", groups.preview, name="group_preview"),
    path("groups/send/", groups.send, name="group_send"),
    path("groups/<int:pk>/", groups.sent, name="group_sent"),
    path("tasks/", tasks.task_list, name="tasks"),
    path("tasks/<int:pk>/<slug:action>/", tasks.task_action, name="task_action"),
]
