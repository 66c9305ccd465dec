"""The staff inbox (/desk/inbox/): one conversation per patient across SMS and LINE, unknown
senders apart, and writing to a patient through the outbox (reminders.inbox). Every page that
shows patients is audited."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.auth.models import User
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clinic_crm.roles import CLINIC_MANAGER, FRONT_DESK
from consent.models import Channel
from desk.views import LOGIN_URL
from patients.models import AuditEntry, ClinicProfile, Patient
from patients.selectors import patient_search
from patients.services import audit_record
from reminders.inbox import (
    MAX_REPLY_CHARS,
    REPLY_CHANNELS,
    LinkRefused,
    MessageRefused,
    conversation,
    conversation_assign,
    conversation_handle,
    conversation_read,
    inbox_conversations,
    inbox_unknown_senders,
    next_send_at,
    sender_link,
    service_window_ends,
    staff_message_queue,
    unknown_messages,
)
from reminders.models import Snippet

VIEW = "reminders.view_inboundmessage"
CHANGE = "reminders.change_inboundmessage"
SEND = "reminders.send_staff_message"
SEARCH_RESULTS = 20


class ReplyForm(forms.Form):
    channel = forms.ChoiceField(
        label=gettext_lazy("Send by"),
        choices=[(c, Channel(c).label) for c in REPLY_CHANNELS],
    )
    body = forms.CharField(
        label=gettext_lazy("Message"),
        max_length=MAX_REPLY_CHARS,
        widget=forms.Textarea(attrs={"rows": 4, "id": "reply-body"}),
    )


def _staff_users() -> list[User]:
    return list(
        User.objects.filter(is_active=True)
        .filter(Q(groups__name__in=[FRONT_DESK, CLINIC_MANAGER]) | Q(is_superuser=True))
        .distinct()
        .order_by("username")
    )


def _patient(pk: int) -> Patient:
    return get_object_or_404(Patient, pk=pk, erased_at__isnull=True)


@require_GET
@login_required(login_url=LOGIN_URL)
@permission_required(VIEW, raise_exception=True)
def inbox(request: HttpRequest) -> HttpResponse:
    """The inbox: conversations with open messages (all with ?all=1), unknown senders apart."""
    show_all = request.GET.get("all") == "1"
    rows = inbox_conversations(show_all=show_all)
    unknown = inbox_unknown_senders()
    if rows:
        audit_record(
            actor=request.user,
            action=AuditEntry.Action.LIST,
            patients=[row.patient for row in rows],
            path=request.path,
            detail="inbox",
        )
    context = {"rows": rows, "unknown": unknown, "show_all": show_all}
    return render(request, "desk/inbox.html", context)


@require_GET
@login_required(login_url=LOGIN_URL)
@permission_required(VIEW, raise_exception=True)
def conversation_view(request: HttpRequest, pk: int) -> HttpResponse:
    """One patient's conversation, both ways, oldest first, with the reply box; opening it
    marks the patient's messages read. Audited as a view of the patient."""
    patient = _patient(pk)
    now = timezone.now()
    conversation_read(patient=patient, now=now)
    audit_record(
        actor=request.user,
        action=AuditEntry.Action.VIEW,
        patients=[patient],
        path=request.path,
        detail=str(_("Conversation")),
    )
    return _render_conversation(request, patient, ReplyForm(initial=_initial(request, patient)))


def _initial(request: HttpRequest, patient: Patient) -> dict[str, str]:
    initial: dict[str, str] = {}
    last = patient.inbound_messages.order_by("-received_at").first()
    if last is not None:
        initial["channel"] = last.channel
    # ?snippet=<id>: the saved answer in the box, for a browser without scripts.
    snippet_id = request.GET.get("snippet", "")
    if snippet_id.isdigit():
        snippet = Snippet.objects.filter(pk=int(snippet_id), active=True).first()
        if snippet is not None:
            initial["body"] = snippet.text
    return initial


def _render_conversation(
    request: HttpRequest, patient: Patient, form: ReplyForm, *, status: int = 200
) -> HttpResponse:
    now = timezone.now()
    profile = ClinicProfile.load()
    opens = next_send_at(now=now, profile=profile)
    open_rows = patient.inbound_messages.filter(handled_at__isnull=True)
    current = open_rows.order_by("-received_at").values_list("assignee_id", flat=True).first()
    context = {
        "patient": patient,
        "entries": conversation(patient=patient),
        "form": form,
        "may_send": request.user.has_perm(SEND),
        "may_change": request.user.has_perm(CHANGE),
        "snippets": list(Snippet.objects.filter(active=True).values("id", "title", "text")),
        "windows": [
            (Channel(c).label, service_window_ends(patient=patient, channel=c, now=now))
            for c in REPLY_CHANNELS
        ],
        "waits_until": opens if opens is not None and opens > now else None,
        "open_count": open_rows.count(),
        "users": _staff_users(),
        "assignee_id": current,
    }
    return render(request, "desk/conversation.html", context, status=status)


def _to_conversation(patient: Patient) -> HttpResponseRedirect:
    return HttpResponseRedirect(reverse("desk:conversation", args=[patient.pk]))


@require_POST
@login_required(login_url=LOGIN_URL)
@permission_required(SEND, raise_exception=True)
def reply(request: HttpRequest, pk: int) -> HttpResponse:
    """Queue a message from staff to the patient through the outbox and its gate."""
    patient = _patient(pk)
    form = ReplyForm(request.POST)
    if form.is_valid():
        now = timezone.now()
        try:
            message = staff_message_queue(
                patient=patient,
                channel=form.cleaned_data["channel"],
                body=form.cleaned_data["body"],
                now=now,
            )
        except MessageRefused as refused:
            form.add_error(None, str(refused))
        else:
            audit_record(
                actor=request.user,
                action=AuditEntry.Action.SEND,
                patients=[patient],
                path=request.path,
                detail=f"staff message {message.uuid} queued ({message.channel})",
            )
            opens = next_send_at(now=now, profile=ClinicProfile.load())
            if opens is not None and opens > now:
                when = timezone.localtime(opens).strftime("%Y-%m-%d %H:%M")
                messages.success(
                    request,
                    _("Queued: outside the send window it waits until %(when)s.") % {"when": when},
                )
            else:
                messages.success(request, _("Queued: it goes out in a moment."))
            return _to_conversation(patient)
    audit_record(
        actor=request.user,
        action=AuditEntry.Action.VIEW,
        patients=[patient],
        path=request.path,
        detail=str(_("Conversation")),
    )
    return _render_conversation(request, patient, form, status=200)


@require_POST
@login_required(login_url=LOGIN_URL)
@permission_required(CHANGE, raise_exception=True)
def assign(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """Give the conversation to a colleague, to oneself, or to nobody (empty)."""
    patient = _patient(pk)
    chosen = request.POST.get("assignee", "")
    assignee = None
    if chosen:
        assignee = next((u for u in _staff_users() if str(u.pk) == chosen), None)
        if assignee is None:
            raise Http404("no such colleague")
    conversation_assign(patient=patient, assignee=assignee)
    messages.success(request, _("Assigned."))
    return _to_conversation(patient)


@require_POST
@login_required(login_url=LOGIN_URL)
@permission_required(CHANGE, raise_exception=True)
def handled(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """Mark the conversation's open messages handled: it leaves the inbox until the next."""
    patient = _patient(pk)
    user = request.user if isinstance(request.user, User) else None
    conversation_handle(patient=patient, by=user, now=timezone.now())
    messages.success(request, _("Marked handled."))
    return HttpResponseRedirect(reverse("desk:inbox"))


def _channel(channel: str) -> str:
    if channel not in REPLY_CHANNELS:
        raise Http404("no such channel")
    return channel


@require_http_methods(["GET", "POST"])
@login_required(login_url=LOGIN_URL)
@permission_required(CHANGE, raise_exception=True)
def unknown_sender(request: HttpRequest, channel: str, sender: str) -> HttpResponse:
    """An unknown sender's messages and "link to a patient": find the patient (the search is
    audited), then link. A linked sender's messages join that patient's conversation."""
    channel = _channel(channel)
    rows = list(unknown_messages(channel=channel, sender_bidx=sender).order_by("received_at"))
    if not rows:
        raise Http404("no unlinked messages from this sender")
    now = timezone.now()
    problem = ""
    if request.method == "POST":
        patient = _patient(int(request.POST.get("patient", "0") or 0))
        try:
            sender_link(
                channel=channel,
                sender_bidx=sender,
                patient=patient,
                confirmed=request.POST.get("confirmed") == "1",
                now=now,
            )
        except LinkRefused as refused:
            problem = str(refused)
        else:
            audit_record(
                actor=request.user,
                action=AuditEntry.Action.VIEW,
                patients=[patient],
                path=request.path,
                detail=f"inbox sender linked ({channel})",
            )
            messages.success(request, _("Linked: the messages are in the patient's conversation."))
            return _to_conversation(patient)
    term = request.GET.get("q", "").strip()
    found: list[Patient] = []
    if term:
        found = list(patient_search(term).filter(erased_at__isnull=True)[:SEARCH_RESULTS])
        if found:
            audit_record(
                actor=request.user,
                action=AuditEntry.Action.SEARCH,
                patients=found,
                path=request.path,
                detail="inbox: link a sender",
            )
    same_phone = {
        p.pk for p in found if channel == Channel.SMS and p.phone_bidx and p.phone_bidx == sender
    }
    context = {
        "channel": channel,
        "channel_label": Channel(channel).label,
        "sender_key": sender,
        "sender": rows[-1].sender,
        "rows": rows,
        "term": term,
        "found": found,
        "same_phone": same_phone,
        "problem": problem,
    }
    return render(request, "desk/inbox_unknown.html", context)
