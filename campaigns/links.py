"""Tracked links in message templates: `{% link "https://clinic.example/x" %}`.

Each message gets its own random token per link and the patient gets `<PUBLIC_BASE_URL>/r/<token>/`:
a click is counted for the message (and so its rule) and sent on to the link, and the URL says
nothing about the patient. A message's fallback texts (campaigns.planner) render with the same
tokens: it is one message whichever channel delivers it, only one of its texts is ever sent,
and a click counts for the message either way.

Rendering without a message (the admin's preview, sample data) gives a stand-in URL of the
same length, so the SMS segment count of the preview is the real one.

`{% settings_link %}` is the patient's own settings page, `<PUBLIC_BASE_URL>/p/<token>/`
(consent.patient_link): a keyed hash of the patient and the planning day, so it needs no row and
nothing from the planner beyond what tracked links already get (the checked base in LinkTokens,
present only when a real message is made; campaigns.context puts the patient's id and the day
under PATIENT_KEY). Dry runs and previews show a stand-in of the same length.
"""

import re
import secrets
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.template import Context, Library, Node, TemplateSyntaxError
from django.template.base import Parser, Token

register = Library()

# The context key the planner puts a message's LinkTokens under. Templates can't name it: a
# name starting with "_" is refused (campaigns.templating).
LINKS_KEY = "_tracked_links"
TOKEN_BYTES = 16  # secrets.token_urlsafe: 22 characters, 128 bits, never guessed
TOKEN_CHARS = 22
# Tracked links and the settings link: both need PUBLIC_BASE_URL, so the planner checks it.
USES_LINK = re.compile(r"{%\s*(link\s|settings_link\b)")
# Where campaigns.context puts (patient id, planning day) for {% settings_link %}; a name
# starting with "_", so no template can print it.
PATIENT_KEY = "_patient_link"
# Hosts that are never a patient's way back to us.
LOCAL_HOSTS = re.compile(r"^https?://(localhost|127\.|0\.0\.0\.0|\[::1\])", re.IGNORECASE)


def uses_links(*sources: str) -> bool:
    return any(USES_LINK.search(source) for source in sources)


def site_url() -> str:
    """The base of tracked links, checked. Raises ImproperlyConfigured when PUBLIC_BASE_URL is
    unset, not an absolute http(s) URL, or (DEBUG off) not https or a local address: a patient
    must never get a link that leads nowhere."""
    base: str = settings.PUBLIC_BASE_URL
    if not base:
        raise ImproperlyConfigured(
            "PUBLIC_BASE_URL is not set: a message template uses {% link %}, and its links would "
            "lead nowhere. Set PUBLIC_BASE_URL to the clinic's public address (https://…)."
        )
    if not re.match(r"^https?://[^/\s]+", base):
        raise ImproperlyConfigured(
            f"PUBLIC_BASE_URL must be an absolute http(s) address, not {base!r}."
        )
    if not settings.DEBUG and (not base.startswith("https://") or LOCAL_HOSTS.match(base)):
        raise ImproperlyConfigured("PUBLIC_BASE_URL must be a public https address in production.")
    return base


def link_url(base: str, token: str) -> str:
    return f"{base}/r/{token}/"


class LinkTokens:
    """The tokens of one message's links, one per distinct URL, made as the texts render."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.tokens: dict[str, str] = {}  # url → token

    def url_for(self, url: str) -> str:
        token = self.tokens.get(url)
        if token is None:
            token = self.tokens[url] = secrets.token_urlsafe(TOKEN_BYTES)
        return link_url(self.base, token)


def stand_in_url() -> str:
    """A link as long as a real one, for previews."""
    return link_url(settings.PUBLIC_BASE_URL or "https://example.invalid", "x" * TOKEN_CHARS)


class LinkNode(Node):
    def __init__(self, url: str) -> None:
        self.url = url

    def render(self, context: Context) -> str:
        links = context.get(LINKS_KEY)
        if isinstance(links, LinkTokens):
            return links.url_for(self.url)
        return stand_in_url()


@register.tag("link")
def link(parser: Parser, token: Token) -> LinkNode:
    """`{% link "https://…" %}`: the literal URL, checked further by campaigns.templating."""
    bits = token.split_contents()
    if len(bits) != 2 or not literal(bits[1]):
        raise TemplateSyntaxError('{% link %} takes one URL in quotes: {% link "https://…" %}')
    return LinkNode(bits[1][1:-1])


def settings_url(base: str, token: str) -> str:
    return f"{base}/p/{token}/"


class SettingsLinkNode(Node):
    def render(self, context: Context) -> str:
        from consent.patient_link import patient_link_token, token_length

        links, patient = context.get(LINKS_KEY), context.get(PATIENT_KEY)
        if isinstance(links, LinkTokens) and patient is not None:
            patient_id, day = patient
            return settings_url(
                links.base, patient_link_token(patient_id=patient_id, issued_on=day)
            )
        # A dry run or preview: as long as the real one, never one that works.
        base = settings.PUBLIC_BASE_URL or "https://example.invalid"
        return settings_url(base, "x" * token_length(patient[0] if patient else None))


@register.tag("settings_link")
def settings_link(parser: Parser, token: Token) -> SettingsLinkNode:
    """`{% settings_link %}`: the patient's own settings page; takes nothing."""
    if len(token.split_contents()) != 1:
        raise TemplateSyntaxError("{% settings_link %} takes nothing")
    return SettingsLinkNode()


def literal(bit: str) -> bool:
    return len(bit) >= 2 and bit[0] == bit[-1] and bit[0] in "\"'"


# Registered when this module is first imported (campaigns.templating, so by the admin at start).
@checks.register(checks.Tags.compatibility)
def check_site_url(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """A PUBLIC_BASE_URL that is set must be one a patient can open: refuse to start otherwise."""
    if not settings.PUBLIC_BASE_URL:
        return []
    try:
        site_url()
    except ImproperlyConfigured as problem:
        return [checks.Error(str(problem), id="campaigns.E001")]
    return []


@checks.register(checks.Tags.compatibility, deploy=True)
def check_links_have_a_site(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """`check --deploy`: without PUBLIC_BASE_URL no delivery report reaches us, and templates
    with links plan nothing."""
    if settings.PUBLIC_BASE_URL:
        return []
    missing = checks.Error(
        "PUBLIC_BASE_URL is not set: Twilio's delivery reports can't reach the app and tracked "
        "links can't be made. Set it to the clinic's public https address.",
        id="campaigns.E003",
    )
    from campaigns.models import MessageTemplate  # models import this module (via templating)

    try:
        # Templates are few: read the tagged ones and look with the planner's own pattern.
        using = MessageTemplate.objects.filter(rule__enabled=True, body__contains="link")
        names = sorted({t.rule.name for t in using.select_related("rule") if uses_links(t.body)})
    except DatabaseError:  # not migrated yet
        return [missing]
    if not names:
        return [missing]
    return [
        missing,
        checks.Error(
            "PUBLIC_BASE_URL is not set, and these rules' templates use {% link %} or "
            "{% settings_link %}: they will "
            f"not be planned until it is: {', '.join(names)}.",
            id="campaigns.E002",
        ),
    ]
