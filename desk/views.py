"""The front desk's pages. Thin: parse the request, call a selector or service, render."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def day(request: HttpRequest) -> HttpResponse:
    """The day view: today's appointments with their reminders (placeholder)."""
    return render(request, "desk/day.html", {})
