"""Checks a request against the provider's own OpenAPI description in shared/provider-specs/.

Each check returns a list of readable violations; an empty list means the provider would take
the request. OpenAPI 3.0 schemas are close enough to JSON Schema 2020-12 for jsonschema, with
two gaps filled here: form fields arrive as strings (coerced by the schema's type), and a
`discriminator` (LINE's message `type`) is followed by hand.
"""

import os
import re
import uuid
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

# shared/ sits beside the repository, on developers' machines and in CI.
SPECS = Path(
    os.environ.get("PROVIDER_SPECS_DIR")
    or Path(__file__).resolve().parents[3] / "shared" / "provider-specs"
)
TWILIO_MESSAGES = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
LINE_PUSH = "/v2/bot/message/push"
LINE_REPLY = "/v2/bot/message/reply"

formats = FormatChecker()


@formats.checks("phone-number")
def _phone_number(value: object) -> bool:
    # E.164, optionally behind a channel prefix ("whatsapp:+886..."), as Twilio documents.
    return not isinstance(value, str) or bool(re.fullmatch(r"([a-z]+:)?\+[1-9]\d{6,14}", value))


@formats.checks("uri")
def _uri(value: object) -> bool:
    # Twilio: "URL must contain a valid hostname and underscores are not allowed".
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "_" not in parts.netloc


@formats.checks("uuid", raises=ValueError)
def _uuid(value: object) -> bool:
    return not isinstance(value, str) or str(uuid.UUID(value)) == value.lower()


def require_specs() -> None:
    """Skip the calling test, saying why, when the providers' specs are not beside the repo."""
    if not SPECS.is_dir():
        pytest.skip(
            f"provider specs not found at {SPECS}: put shared/provider-specs beside the "
            "repository, or set PROVIDER_SPECS_DIR"
        )


@cache
def _spec(filename: str) -> tuple[dict, Registry]:
    require_specs()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the Twilio spec is 1.5 MB
    with open(SPECS / filename, encoding="utf-8") as f:
        spec = yaml.load(f, Loader=loader)  # noqa: S506 - a safe loader
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    return spec, Registry().with_resource(filename, resource)


def _errors(filename: str, pointer: str, instance: object, where: str) -> list[str]:
    """Validate `instance` against the schema at `pointer` in the spec, following $refs."""
    _, registry = _spec(filename)
    validator = Draft202012Validator(
        {"$ref": f"{filename}#{pointer}"}, registry=registry, format_checker=formats
    )
    return [
        f"{where}{''.join(f'/{p}' for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def twilio_create_message(account_sid: str, form: dict[str, list[str]]) -> list[str]:
    """Check a form-encoded CreateMessage request (POST .../Accounts/{sid}/Messages.json)."""
    filename = "twilio_api_v2010.yaml"
    spec, _ = _spec(filename)
    operation = spec["paths"][TWILIO_MESSAGES]["post"]
    base = f"/paths/{_escape(TWILIO_MESSAGES)}/post"
    problems = []
    for i, parameter in enumerate(operation["parameters"]):
        if parameter["in"] == "path" and parameter["name"] == "AccountSid":
            problems += _errors(filename, f"{base}/parameters/{i}/schema", account_sid, "path")

    schema = operation["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    properties = schema["properties"]
    # Twilio silently ignores a parameter it does not know, so a misspelt one is a bug here.
    problems += [
        f"body/{name}: not a parameter of CreateMessage" for name in form if name not in properties
    ]
    body = {}
    for name, values in form.items():
        if name not in properties:
            continue
        prop = _resolve(spec, properties[name])
        if prop.get("type") == "array":
            body[name] = values
        elif len(values) != 1:
            problems.append(f"body/{name}: sent {len(values)} times")
        else:
            body[name] = _coerce(values[0], prop.get("type"))
    pointer = f"{base}/requestBody/content/application~1x-www-form-urlencoded/schema"
    return problems + _errors(filename, pointer, body, "body")


def line_push_message(headers: dict[str, str], body: object) -> list[str]:
    """Check a push message request: its headers, then PushMessageRequest and each message
    against the schema its `type` selects."""
    return _line_message_request(LINE_PUSH, "PushMessageRequest", headers, body)


def line_reply_message(headers: dict[str, str], body: object) -> list[str]:
    """Check a reply message request (the answer to a webhook event, by its replyToken)."""
    return _line_message_request(LINE_REPLY, "ReplyMessageRequest", headers, body)


def _line_message_request(
    path: str, schema: str, headers: dict[str, str], body: object
) -> list[str]:
    filename = "line_messaging_api.yml"
    spec, _ = _spec(filename)
    operation = spec["paths"][path]["post"]
    base = f"/paths/{_escape(path)}/post"
    lowered = {k.lower(): v for k, v in headers.items()}
    problems = []
    if not lowered.get("authorization", "").startswith("Bearer "):
        problems.append("header/Authorization: not a Bearer token")
    if not lowered.get("content-type", "").startswith("application/json"):
        problems.append("header/Content-Type: not application/json")
    for i, parameter in enumerate(operation.get("parameters", [])):
        if parameter["in"] != "header":
            continue
        value = lowered.get(parameter["name"].lower())
        if value is None:
            if parameter.get("required"):
                problems.append(f"header/{parameter['name']}: missing")
            continue
        problems += _errors(
            filename, f"{base}/parameters/{i}/schema", value, f"header/{parameter['name']}"
        )

    problems += _errors(filename, f"/components/schemas/{schema}", body, "body")
    mapping = spec["components"]["schemas"]["Message"]["discriminator"]["mapping"]
    messages = body.get("messages", []) if isinstance(body, dict) else []
    for i, item in enumerate(messages if isinstance(messages, list) else []):
        target = mapping.get(item.get("type")) if isinstance(item, dict) else None
        if target is None:
            problems.append(f"body/messages/{i}/type: not one of {sorted(mapping)}")
        else:
            problems += _errors(filename, target.removeprefix("#"), item, f"body/messages/{i}")
    return problems


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        node = spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _coerce(value: str, type_: str | None) -> object:
    # Leave what does not parse as a string, so the schema reports the wrong type.
    try:
        if type_ == "integer":
            return int(value)
        if type_ == "number":
            return float(value)
    except ValueError:
        return value
    if type_ == "boolean" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _escape(path: str) -> str:
    """A JSON pointer token for an OpenAPI path key."""
    return path.replace("~", "~0").replace("/", "~1")
