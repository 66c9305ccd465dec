"""What the front desk adds to the patient page: how the patient's LINE stands, and the way to
the LINE link page (desk.line_link)."""

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


PatientPage.panels = [*PatientPage.panels, line_panel]
