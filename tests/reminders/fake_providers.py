"""Small stateful stand-ins for Twilio and LINE on 127.0.0.1, for the real SDKs to talk to.

Each fake records every request it receives, checks it against the provider's OpenAPI spec
(tests/reminders/contract.py; a request the real provider would refuse gets a 400 here too and
is listed in `violations`), and answers like the provider does, including what a stateless mock
can't: LINE's 409 for a reused retry key. Tests script failures with `reply_next(...)` and
`hang_next()` and `drop_next()`. Response bodies start from the samples in payloads/.
"""

import base64
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from django.utils import timezone

from . import contract

PAYLOADS = Path(__file__).parent / "payloads"


def payload(name: str) -> dict:
    return json.loads((PAYLOADS / f"{name}.json").read_text(encoding="utf-8"))


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, list[str]] = field(default_factory=dict)  # Twilio: form-encoded
    json: object = None  # LINE: JSON
    violations: list[str] = field(default_factory=list)
    status: int | None = None  # what the fake answered
    answer: dict | None = None
    at: float = field(default_factory=time.monotonic)  # when it arrived (CLOCK_MONOTONIC)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class Reply:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


class FakeProvider:
    """A ThreadingHTTPServer on a free loopback port, with a script of replies."""

    def __init__(self):
        self.requests: list[Received] = []
        self._script: list[Reply | str] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                received = Received(
                    method="POST",
                    path=self.path,
                    headers=dict(self.headers.items()),
                    body=self.rfile.read(length),
                )
                with fake._lock:
                    fake.requests.append(received)
                reply = fake.handle(received)
                if reply is None:  # the "drop" script: hang up without an answer
                    self.close_connection = True
                    return
                received.status, received.answer = reply.status, reply.body
                data = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up waiting (the "hang" script)

            def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def violations(self) -> list[str]:
        return [v for r in self.requests for v in r.violations]

    def start(self) -> "FakeProvider":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def reply_next(self, status: int, body: dict, headers: dict | None = None, times: int = 1):
        """Answer the next `times` requests that pass auth and contract with this instead."""
        with self._lock:
            self._script += [Reply(status, body, headers or {})] * times

    def hang_next(self) -> None:
        """Take the next request as the provider would, then keep the answer back until the
        fake stops: the client sees a read timeout after its request was processed."""
        with self._lock:
            self._script.append("hang")

    def drop_next(self) -> None:
        """Take the next request as the provider would, then close the connection without an
        answer (a proxy or load balancer resetting it)."""
        with self._lock:
            self._script.append("drop")

    def _scripted(self) -> Reply | str | None:
        with self._lock:
            return self._script.pop(0) if self._script else None

    def _hang(self) -> None:
        self._release.wait(timeout=30)

    def handle(self, received: Received) -> Reply | None:
        raise NotImplementedError


class FakeTwilio(FakeProvider):
    """POST /2010-04-01/Accounts/{sid}/Messages.json with HTTP basic auth, as Twilio."""

    PATH = re.compile(r"/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json")

    def __init__(self):
        super().__init__()
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        self.messages: list[dict] = []  # the Message resources created

    def handle(self, received: Received) -> Reply | None:
        match = self.PATH.fullmatch(received.path)
        if not match:
            return _twilio_error(404, 20404, "The requested resource was not found")
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if received.header("Authorization") != f"Basic {expected}" or (
            match["sid"] != self.account_sid
        ):
            return _twilio_error(401, 20003, "Authenticate")

        received.form = parse_qs(received.body.decode(), keep_blank_values=True)
        received.violations = contract.twilio_create_message(match["sid"], received.form)
        if received.violations:
            return _twilio_error(400, 21000, "; ".join(received.violations))

        scripted = self._scripted()
        if isinstance(scripted, Reply):
            return scripted
        created = self._create(received.form)
        if scripted == "drop":
            return None
        if scripted == "hang":
            self._hang()
        return Reply(201, created)

    def _create(self, form: dict[str, list[str]]) -> dict:
        sid = "SM" + uuid.uuid4().hex
        now = format_datetime(timezone.now())
        base = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}"
        message = payload("twilio_message_created") | {
            "account_sid": self.account_sid,
            "sid": sid,
            "to": form["To"][0],
            "from": form.get("From", [None])[0],
            "messaging_service_sid": form.get("MessagingServiceSid", [None])[0],
            "body": form.get("Body", [""])[0],
            "date_created": now,
            "date_updated": now,
            "uri": f"{base}.json",
            "subresource_uris": {"media": f"{base}/Media.json"},
        }
        with self._lock:
            self.messages.append(message)
        return message


def _twilio_error(status: int, code: int, message: str) -> Reply:
    return Reply(
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )


class FakeLine(FakeProvider):
    """POST /v2/bot/message/push with a Bearer token, as LINE, honouring X-Line-Retry-Key;
    and POST /v2/bot/message/reply, the answer to a webhook event by its replyToken."""

    def __init__(self):
        super().__init__()
        self.access_token = secrets.token_urlsafe(32)
        self.delivered: list[dict] = []  # accepted push requests (their JSON bodies)
        self.replies: list[dict] = []  # accepted reply requests (their JSON bodies)
        self._accepted: dict[str, tuple[str, list[dict]]] = {}  # retry key -> request id, sent

    def handle(self, received: Received) -> Reply | None:
        request_id = str(uuid.uuid4())
        headers = {"x-line-request-id": request_id}
        if received.path == contract.LINE_REPLY:
            return self._reply(received, headers)
        if received.path != contract.LINE_PUSH:
            return Reply(404, {"message": "Not found"}, headers)
        if refused := self._refused(received, headers, contract.line_push_message):
            return refused

        # A retry key is spent only by an accepted (2xx) request: errors leave it reusable.
        key = received.header("X-Line-Retry-Key")
        with self._lock:
            accepted = self._accepted.get(key) if key else None
        if accepted:
            accepted_id, sent = accepted
            body = payload("line_retry_key_accepted") | {"sentMessages": sent}
            return Reply(409, body, headers | {"x-line-accepted-request-id": accepted_id})

        scripted = self._scripted()
        if isinstance(scripted, Reply):
            return Reply(scripted.status, scripted.body, headers | scripted.headers)
        sent = [
            {"id": str(secrets.randbelow(10**18)), "quoteToken": secrets.token_urlsafe(16)}
            for _ in received.json["messages"]
        ]
        with self._lock:
            self.delivered.append(received.json)
            if key:
                self._accepted[key] = (request_id, sent)
        if scripted == "drop":
            return None
        if scripted == "hang":
            self._hang()
        return Reply(200, {"sentMessages": sent}, headers)

    def _refused(self, received: Received, headers: dict[str, str], check) -> Reply | None:
        """LINE's answer to a request with a wrong token, a body that is not JSON or one the
        spec refuses (`check`: a contract function); None when it passes."""
        if received.header("Authorization") != f"Bearer {self.access_token}":
            message = "Authentication failed. Confirm that the access token is valid."
            return Reply(401, {"message": message}, headers)
        try:
            received.json = json.loads(received.body)
        except ValueError:
            return Reply(400, {"message": "The request body could not be parsed as JSON"}, headers)
        received.violations = check(received.headers, received.json)
        if received.violations:
            details = [{"message": v} for v in received.violations]
            body = {"message": "The request body has errors", "details": details}
            return Reply(400, body, headers)
        return None

    def _reply(self, received: Received, headers: dict[str, str]) -> Reply:
        if refused := self._refused(received, headers, contract.line_reply_message):
            return refused
        # A reply token works once.
        with self._lock:
            if any(r["replyToken"] == received.json["replyToken"] for r in self.replies):
                return Reply(400, {"message": "Invalid reply token"}, headers)
            self.replies.append(received.json)
        sent = [
            {"id": str(secrets.randbelow(10**18)), "quoteToken": secrets.token_urlsafe(16)}
            for _ in received.json["messages"]
        ]
        return Reply(200, {"sentMessages": sent}, headers)
