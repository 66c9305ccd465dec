"""What the front desk adds to the patient page: how the patient's LINE stands, the way to
the LINE link page (desk.line_link), and to the patient's conversation (desk.inbox)."""

from django.http import HttpRequest
from django.urls import reverse

from patients.admin import PagePanel, PatientPage
from patients.models import Patient
from reminders.linking import line_status


def line_panel(request: HttpRequest, patient: Patient) -> PagePanel | None:
    """Linked, blocked, or not linked yet though LINE consent is given; shown on the patient
    page, so covered by its audit entry."""
    if patient.erased_at is not None:
        return None
    url = reverse("desk:line_link", args=[patient.pk])
    return PagePanel("desk/line_panel.html", status=line_status(patient=patient), url=url)


def conversation_panel(request: HttpRequest, patient: Patient) -> PagePanel | None:
    """The way to the patient's conversation, to read it and write to the patient."""
    if patient.erased_at is not None or not request.user.has_perm("reminders.view_inboundmessage"):
        return None
    unread = patient.inbound_messages.filter(read_at__isnull=True).count()
    url = reverse("desk:conversation", args=[patient.pk])
    return PagePanel("desk/conversation_panel.html", url=url, unread=unread)


PatientPage.panels = [*PatientPage.panels, line_panel, conversation_panel]
