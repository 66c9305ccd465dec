"""E-mail through Django's configured EMAIL_BACKEND."""

import smtplib

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection, make_msgid

from .base import Channel, ChannelError, OutgoingMessage

# Django's SMTP backend waits forever unless EMAIL_TIMEOUT is set; a stuck server must not hold
# a worker.
DEFAULT_TIMEOUT_SECONDS = 20


class EmailChannel(Channel):
    """Sends a plain-text e-mail, with an HTML alternative when given; returns the Message-ID
    header. Raises ChannelError."""

    name = "email"

    def send(self, message: OutgoingMessage) -> str:
        from_email = settings.DEFAULT_FROM_EMAIL
        # Our own Message-ID, so we know it without parsing what the backend sent. The domain
        # comes from the sender address: Django's default calls socket.getfqdn(), which can
        # stall on a machine without working reverse DNS.
        domain = from_email.rpartition("@")[2].strip("> ") or None
        # A short idstring: the whole Message-ID must fit the outbox's 100-character provider_id.
        message_id = make_msgid(idstring=message.id.hex[:8], domain=domain)
        email = EmailMultiAlternatives(
            subject=message.subject,
            body=message.body,
            from_email=from_email,
            to=[message.to],
            headers={"Message-ID": message_id},
            connection=get_connection(
                timeout=getattr(settings, "EMAIL_TIMEOUT", None) or DEFAULT_TIMEOUT_SECONDS
            ),
        )
        if message.html_body:
            email.attach_alternative(message.html_body, "text/html")
        try:
            # Built before connecting: a header that would be refused (a line break in the
            # subject, which could also smuggle in headers) means nothing was sent.
            email.message()
        except ValueError as exc:  # BadHeaderError and malformed addresses
            raise ChannelError(f"e-mail not sent: {type(exc).__name__}", permanent=True) from exc
        try:
            email.send()
        except smtplib.SMTPRecipientsRefused as exc:
            # smtplib raises this for a 4xx answer to RCPT too (greylisting, mailbox busy):
            # only a 5xx from every recipient is final.
            codes = [code for code, _ in exc.recipients.values()]
            permanent = bool(codes) and all(code >= 500 for code in codes)
            raise ChannelError(f"recipient refused: SMTP {codes}", permanent=permanent) from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Connection refused, timeouts, 4xx, auth failures: try again later. SMTP has no
            # idempotency either, but a duplicate reminder e-mail is a small harm.
            raise ChannelError(f"SMTP failed: {type(exc).__name__}", permanent=False) from exc
        return message_id
