"""Check Cloud API request bodies against Meta's own schemas, corrected and tightened, and then
against what Meta's live API does where that differs from its description.

``meta_schemas.json`` is a verbatim extract of Meta's OpenAPI description (v23.0, see
``scripts/extract_meta_schemas.py``). Taken as is, that schema rejects every real message and
accepts some broken ones, so :func:`_corrected` patches it when it loads; each patch says why.
Where Meta's schema is looser than Meta's documented limits (4,096-character text body, ≤10 list
rows in total, caption ≤1,024 characters, ...), the documented limit is enforced too.

On top of that, :data:`LIVE_API_OVERRIDES` records each place where Meta's *live* API differs
from its description in a way a client notices: bodies it accepts that the description refuses
(coordinates as JSON numbers, ``null`` for an unset field, ...) and bodies it refuses, with its
own error code and words, that the description accepts or refuses differently (an empty text
body, a fourth reply button, ...). Each override names its fact's source. A body is checked in
this order: the overrides' rewrites (``normalize``), their refusals (``refuse``, Meta's own answer),
then the schema with the overrides' edits (``patch_schemas``) and the documented limits.

``Message`` is a ``oneOf`` of eleven branches with an OpenAPI ``discriminator`` on ``type``;
plain JSON Schema ignores the discriminator, so one bad field yields "not valid under any of the
given schemas" and nothing else. We validate against the branch that ``type`` names instead, so
every problem comes out as ``"interactive.action.buttons: must have at most 3 items (got 4)"``. Problems name paths and limits, never the values sent (they can hold
message text or phone numbers).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = [
    "LIVE_API_OVERRIDES",
    "SCHEMAS_FILE",
    "LiveApiOverride",
    "Refusal",
    "message_request_refusal",
    "message_types",
    "validate_mark_read_request",
    "validate_message_request",
]

SCHEMAS_FILE = Path(__file__).with_name("meta_schemas.json")
_BASE_URI = "urn:meta:whatsapp-cloud-api:v23.0"
_SCHEMA_REF = "#/components/schemas/"

# Meta's documented limits that its OpenAPI schema does not state.
_TEXT_BODY_MAX = 4096
_CAPTION_MAX = 1024
_CALLBACK_DATA_MAX = 512
_CTA_DISPLAY_TEXT_MAX = 20
_LIST_ROWS_MAX = 10

_VAGUE_VALIDATORS = frozenset({"oneOf", "anyOf"})
_REQUIRED_MESSAGE = re.compile(r"^'(?P<name>.+)' is a required property$")


def validate_message_request(body: object) -> list[str]:
    """Problems with a ``POST /{phone-number-id}/messages`` body; ``[]`` when Meta accepts it.

    Takes any decoded JSON (the simulator passes what it received), not only mappings.
    """
    refusal, problems = _check(body)
    if refusal is None:
        return problems
    return list(dict.fromkeys([refusal.problem, *problems]))


def message_request_refusal(body: object) -> Refusal | None:
    """What Meta answers to this body, or None when it accepts it: its own code and words where
    an override knows them, else error 100 with the problems as details."""
    refusal, problems = _check(body)
    if refusal is not None or not problems:
        return refusal
    return Refusal(
        code=100,
        message="(#100) Invalid parameter",
        details="; ".join(problems),
        problem=problems[0],
    )


def _check(body: object) -> tuple[Refusal | None, list[str]]:
    if not isinstance(body, Mapping):
        return None, ["(root): must be an object"]
    body = _live_normalized(body)
    refusal = next(
        (
            found
            for override in LIVE_API_OVERRIDES
            if override.refuse is not None and (found := override.refuse(body)) is not None
        ),
        None,
    )
    schemas = _compiled()
    message_type = body.get("type")
    validator = schemas.messages.get(message_type) if isinstance(message_type, str) else None
    if validator is None:
        base_problems = _problems(schemas.base_message, body)
        allowed = ", ".join(sorted(schemas.messages))
        return refusal, [f"type: must be one of {allowed}", *base_problems]
    problems = _problems(validator, body)
    # The checks below walk the structure the schema guarantees, so they only run once it holds.
    return refusal, problems or _documented_limit_problems(body)


def validate_mark_read_request(body: object) -> list[str]:
    """Problems with a mark-as-read body (same endpoint); ``[]`` when it is valid."""
    if not isinstance(body, Mapping):
        return ["(root): must be an object"]
    return _problems(_compiled().mark_read, body)


def message_types() -> frozenset[str]:
    """The message ``type`` values Meta's schema defines (``text``, ``image``, ...)."""
    return frozenset(_compiled().messages)


@dataclass(frozen=True, slots=True)
class _CompiledSchemas:
    messages: Mapping[str, Draft202012Validator]
    base_message: Draft202012Validator
    mark_read: Draft202012Validator


@functools.cache
def _compiled() -> _CompiledSchemas:
    document = _corrected(json.loads(SCHEMAS_FILE.read_text(encoding="utf-8")))
    for override in LIVE_API_OVERRIDES:
        if override.patch_schemas is not None:
            override.patch_schemas(document["components"]["schemas"])
    registry: Registry[Any] = Registry().with_resource(
        _BASE_URI, DRAFT202012.create_resource(document)
    )

    def validator(name: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{_BASE_URI}{_SCHEMA_REF}{name}"}, registry=registry)

    mapping: dict[str, str] = document["components"]["schemas"]["Message"]["discriminator"][
        "mapping"
    ]
    return _CompiledSchemas(
        messages={kind: validator(ref.removeprefix(_SCHEMA_REF)) for kind, ref in mapping.items()},
        base_message=validator("BaseMessageProperties"),
        mark_read=validator("MarkMessageRequestPayload"),
    )


def _corrected(document: dict[str, Any]) -> dict[str, Any]:
    """Meta's schemas with the fixes and documented limits this module's docstring promises."""
    document = copy.deepcopy(document)
    schemas: dict[str, Any] = document["components"]["schemas"]
    base = schemas["BaseMessageProperties"]
    base["properties"]["messaging_product"] = {"const": "whatsapp"}
    # Echoed back in status webhooks; documented, but missing from Meta's schema.
    base["properties"]["biz_opaque_callback_data"] = {
        "type": "string",
        "maxLength": _CALLBACK_DATA_MAX,
    }
    schemas["MessageContext"]["required"] = ["message_id"]

    # Each message branch is allOf [BaseMessageProperties, {additionalProperties: false, ...}]:
    # under JSON Schema the second part rejects `to`, `messaging_product`... as "additional", so
    # no real message validates. Merging the two parts keeps Meta's intent (no unknown fields).
    for ref in schemas["Message"]["discriminator"]["mapping"].values():
        name = ref.removeprefix(_SCHEMA_REF)
        schemas[name] = _merged_with_base(schemas[name], base)

    text = schemas["TextMessage"]["properties"]["text"]
    text["required"] = ["body"]
    text["properties"]["body"]["maxLength"] = _TEXT_BODY_MAX

    media = schemas["MediaObject"]
    media["properties"] = {
        "caption": {"type": "string", "maxLength": _CAPTION_MAX},
        "filename": {"type": "string"},
    }
    schemas["ReactionMessage"]["properties"]["reaction"]["required"] = ["message_id", "emoji"]

    # Meta's pattern "^[2-6, 11-14]$" is a malformed character class that even rejects the "0"
    # of its own example; button indexes are 0-9.
    component = schemas["TemplateComponent"]
    component["properties"]["index"]["pattern"] = "^[0-9]$"
    component["properties"]["parameters"]["items"] = {"type": "object", "required": ["type"]}
    # `policy: deterministic` is the only value and optional on the wire (Meta's own examples
    # leave it out).
    schemas["LanguageObject"]["required"] = ["code"]

    _add_interactive_dispatch(schemas)

    mark_read = schemas["MarkMessageRequestPayload"]
    mark_read["properties"]["messaging_product"] = {"const": "whatsapp"}
    mark_read["properties"]["status"] = {"const": "read"}
    mark_read["properties"]["typing_indicator"] = {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "properties": {"type": {"const": "text"}},
    }
    return document


def _merged_with_base(branch: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    own = next(part for part in branch["allOf"] if "$ref" not in part)
    merged = {key: value for key, value in own.items() if key not in ("properties", "required")}
    merged["properties"] = {**base["properties"], **own.get("properties", {})}
    merged["required"] = [*base["required"], *own.get("required", [])]
    return merged


def _add_interactive_dispatch(schemas: dict[str, Any]) -> None:
    """Check ``interactive.action`` against the shape its ``type`` calls for.

    ``ActionObject`` is a bare ``oneOf``, so a reply-buttons message with a list action passes
    and a fourth button only yields "not valid under any of the given schemas". ``cta_url``
    (documented, widely used) is missing from Meta's schema altogether.
    """
    schemas["CtaUrlAction"] = {
        "type": "object",
        "required": ["name", "parameters"],
        "additionalProperties": False,
        "properties": {
            "name": {"const": "cta_url"},
            "parameters": {
                "type": "object",
                "required": ["display_text", "url"],
                "additionalProperties": False,
                "properties": {
                    "display_text": {"type": "string", "maxLength": _CTA_DISPLAY_TEXT_MAX},
                    "url": {"type": "string", "pattern": "^https?://"},
                },
            },
        },
    }
    action = schemas["ActionObject"]
    list_branch, buttons_branch = action["oneOf"][0], action["oneOf"][1]
    action["oneOf"].append({"$ref": _SCHEMA_REF + "CtaUrlAction"})
    interactive = schemas["InteractiveObject"]
    interactive["properties"]["type"]["enum"].append("cta_url")
    interactive["allOf"] = [
        _when_type(kind, shape)
        for kind, shape in (
            ("button", buttons_branch),
            ("list", list_branch),
            ("cta_url", {"$ref": _SCHEMA_REF + "CtaUrlAction"}),
        )
    ]


def _when_type(kind: str, action_shape: Mapping[str, Any]) -> dict[str, Any]:
    # A body is required for every interactive type we send (only product messages omit it).
    return {
        "if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
        "then": {"required": ["body"], "properties": {"action": action_shape}},
    }


def _documented_limit_problems(body: Mapping[str, Any]) -> list[str]:
    """Rules the corrected schema does not express (or not readably)."""
    if body["type"] == "audio" and "caption" in body["audio"]:
        # Audio shares MediaObject with the types that take a caption, but has none itself.
        return ["audio.caption: audio messages take no caption"]
    if body["type"] != "interactive":
        return []
    interactive = body["interactive"]
    action = interactive["action"]
    problems: list[str] = []
    if interactive["type"] == "button":
        ids = [button["reply"]["id"] for button in action["buttons"]]
        problems += _duplicates("interactive.action.buttons", "reply ids", ids)
    elif interactive["type"] == "list":
        sections = action["sections"]
        rows = [row for section in sections for row in section.get("rows", [])]
        if len(rows) > _LIST_ROWS_MAX:
            problems.append(
                f"interactive.action.sections: must have at most {_LIST_ROWS_MAX} rows in total "
                f"(got {len(rows)})"
            )
        if len(sections) > 1:
            problems += [
                f"interactive.action.sections[{index}].title: is required when there are "
                "several sections"
                for index, section in enumerate(sections)
                if not section.get("title")
            ]
        problems += _duplicates("interactive.action.sections", "row ids", [r["id"] for r in rows])
    return problems


def _duplicates(path: str, what: str, values: list[str]) -> list[str]:
    if len(set(values)) == len(values):
        return []
    return [f"{path}: {what} must be unique"]


def _problems(validator: Draft202012Validator, instance: Mapping[str, Any]) -> list[str]:
    errors = list(validator.iter_errors(instance))
    precise = [error for error in errors if error.validator not in _VAGUE_VALIDATORS]
    kept = [
        error
        for error in errors
        if error.validator not in _VAGUE_VALIDATORS
        or not any(_is_within(other.absolute_path, error.absolute_path) for other in precise)
    ]
    return list(dict.fromkeys(_describe(error) for error in kept))


def _is_within(path: Iterable[str | int], ancestor: Iterable[str | int]) -> bool:
    path, ancestor = list(path), list(ancestor)
    return path[: len(ancestor)] == ancestor


def _describe(error: ValidationError) -> str:
    if error.validator in _VAGUE_VALIDATORS:
        missing = [_REQUIRED_MESSAGE.match(suberror.message) for suberror in error.context]
        if missing and all(missing):
            # No alternative matched and each only lacks a key: name the keys to choose from.
            names = ", ".join(dict.fromkeys(repr(match["name"]) for match in missing if match))
            return f"{_path(error.absolute_path)}: needs one of {names}"
        if error.context:
            return _describe(best_match(error.context))
        return f"{_path(error.absolute_path)}: {_several_shapes_hint(error.instance)}"
    if error.validator == "required":
        match = _REQUIRED_MESSAGE.match(error.message)
        if match:
            return f"{_path([*error.absolute_path, match['name']])}: is required"
    return f"{_path(error.absolute_path)}: {_requirement(error)}"


def _requirement(error: ValidationError) -> str:
    """What the failed keyword asks for, without echoing the value (it may be a user's text)."""
    keyword, expected, value = error.validator, error.validator_value, error.instance
    size = len(value) if isinstance(value, str | list | dict) else None
    if keyword == "maxLength":
        return f"must be at most {expected} characters (got {size})"
    if keyword == "minLength":
        return f"must be at least {expected} characters (got {size})"
    if keyword == "maxItems":
        return f"must have at most {expected} items (got {size})"
    if keyword == "minItems":
        return f"must have at least {expected} item(s) (got {size})"
    if keyword == "type":
        return f"must be of type {expected} (got {type(value).__name__})"
    if keyword == "enum":
        options: list[Any] = list(expected) if isinstance(expected, list) else [expected]
        return "must be one of " + ", ".join(repr(option) for option in options)
    if keyword == "const":
        return f"must be {expected!r}"
    if keyword == "pattern":
        return f"must match {expected}"
    if keyword in ("additionalProperties", "unevaluatedProperties", "required"):
        return str(error.message)  # names the unexpected or missing keys only
    return f"does not satisfy {keyword!r}"


def _several_shapes_hint(value: object) -> str:
    if isinstance(value, Mapping) and "id" in value and "link" in value:
        return "give either 'id' or 'link', not both"
    return "matches more than one of the allowed shapes"


def _path(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"


# --- Meta's live API, where it differs from its description -----------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Meta's answer to a body it refuses: ``code``, ``message`` and ``details`` as its error
    object carries them; ``problem`` says the same in this module's path style."""

    code: int
    message: str
    details: str | None
    problem: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveApiOverride:
    """One place where Meta's live Cloud API differs from its OpenAPI description."""

    name: str
    # One line: what the live API does.
    why: str
    # Where that fact comes from.
    source: str
    # Edits the corrected schemas (``components.schemas``) once, when they load.
    patch_schemas: Callable[[dict[str, Any]], None] | None = None
    # Rewrites the checker's own copy of a body in place, before anything else looks at it.
    normalize: Callable[[dict[str, Any]], None] | None = None
    # Meta's own answer to a body it refuses; None lets the body through to the schema.
    refuse: Callable[[Mapping[str, Any]], Refusal | None] | None = None


_INVALID_VALUE = "(#131009) Parameter value is not valid"
_BUTTON_TITLE_MAX = 20
_REPLY_BUTTONS_MAX = 3
_NUMBER_PATTERN = r"^\s*[-+]?[0-9]+(\.[0-9]+)?\s*$"


def _live_normalized(body: Mapping[str, Any]) -> dict[str, Any]:
    normalized: dict[str, Any] = _copied(body)
    for override in LIVE_API_OVERRIDES:
        if override.normalize is not None:
            override.normalize(normalized)
    return normalized


def _copied(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copied(item) for item in value]
    return value


def _at(body: Mapping[str, Any], *path: str) -> Any:
    """``body[path[0]][path[1]]...``, or None where the structure is not there (refusals run
    before the schema, on anything a client sends)."""
    value: Any = body
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _drop_nulls(value: Any) -> None:
    if isinstance(value, dict):
        for key in [key for key, item in value.items() if item is None]:
            del value[key]
        for item in value.values():
            _drop_nulls(item)
    elif isinstance(value, list):
        for item in value:
            _drop_nulls(item)


def _default_type(body: dict[str, Any]) -> None:
    body.setdefault("type", "text")


def _recipient_type_optional(schemas: dict[str, Any]) -> None:
    for ref in schemas["Message"]["discriminator"]["mapping"].values():
        branch = schemas[ref.removeprefix(_SCHEMA_REF)]
        branch["required"] = [name for name in branch["required"] if name != "recipient_type"]


def _text_body_refusal(body: Mapping[str, Any]) -> Refusal | None:
    text = body.get("text")
    if body.get("type") != "text" or not isinstance(text, Mapping):
        return None
    if text.get("body") not in (None, ""):
        return None
    words = "The parameter text.body is required."
    return Refusal(
        code=100, message=f"(#100) {words}", details=words, problem="text.body: is required"
    )


def _reply_buttons(body: Mapping[str, Any]) -> list[Any] | None:
    if body.get("type") != "interactive" or _at(body, "interactive", "type") != "button":
        return None
    buttons = _at(body, "interactive", "action", "buttons")
    return buttons if isinstance(buttons, list) else None


def _reply_buttons_count_refusal(body: Mapping[str, Any]) -> Refusal | None:
    buttons = _reply_buttons(body)
    if buttons is None or 1 <= len(buttons) <= _REPLY_BUTTONS_MAX:
        return None
    return Refusal(
        code=131009,
        message=_INVALID_VALUE,
        details=(
            "Invalid buttons count. Min allowed buttons: 1, "
            f"Max allowed buttons: {_REPLY_BUTTONS_MAX}"
        ),
        problem=(
            f"interactive.action.buttons: must have 1 to {_REPLY_BUTTONS_MAX} items "
            f"(got {len(buttons)})"
        ),
    )


def _reply_button_title_refusal(body: Mapping[str, Any]) -> Refusal | None:
    for index, button in enumerate(_reply_buttons(body) or ()):
        title = _at(button, "reply", "title")
        if isinstance(title, str) and not 1 <= len(title) <= _BUTTON_TITLE_MAX:
            return Refusal(
                code=131009,
                message=_INVALID_VALUE,
                details=f"Button title length invalid. Min length: 1, Max length: {_BUTTON_TITLE_MAX}",
                problem=(
                    f"interactive.action.buttons[{index}].reply.title: must be 1 to "
                    f"{_BUTTON_TITLE_MAX} characters (got {len(title)})"
                ),
            )
    return None


def _cta_display_text_refusal(body: Mapping[str, Any]) -> Refusal | None:
    if body.get("type") != "interactive" or _at(body, "interactive", "type") != "cta_url":
        return None
    text = _at(body, "interactive", "action", "parameters", "display_text")
    if not isinstance(text, str) or len(text) <= _CTA_DISPLAY_TEXT_MAX:
        return None
    return Refusal(
        code=131009,
        message=_INVALID_VALUE,
        details=None,
        problem=(
            "interactive.action.parameters.display_text: must be at most "
            f"{_CTA_DISPLAY_TEXT_MAX} characters (got {len(text)})"
        ),
    )


def _location_coordinates(schemas: dict[str, Any]) -> None:
    location = schemas["LocationMessage"]["properties"]["location"]
    for name in ("latitude", "longitude"):
        location["properties"][name] = {"type": ["number", "string"], "pattern": _NUMBER_PATTERN}
    location["required"] = ["latitude", "longitude"]


def _location_request_message(schemas: dict[str, Any]) -> None:
    interactive = schemas["InteractiveObject"]
    interactive["properties"]["type"]["enum"].append("location_request_message")
    action = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {"name": {"const": "send_location"}},
    }
    # ActionObject is a bare oneOf that applies whatever the type: the shape joins it too.
    schemas["LocationRequestAction"] = action
    schemas["ActionObject"]["oneOf"].append({"$ref": _SCHEMA_REF + "LocationRequestAction"})
    interactive["allOf"].append(
        _when_type("location_request_message", {"$ref": _SCHEMA_REF + "LocationRequestAction"})
    )


def _lowercase_template_components(body: dict[str, Any]) -> None:
    components = _at(body, "template", "components")
    for component in components if isinstance(components, list) else ():
        for key in ("type", "sub_type"):
            if isinstance(component, dict) and isinstance(component.get(key), str):
                component[key] = component[key].lower()


def _template_buttons(schemas: dict[str, Any]) -> None:
    properties = schemas["TemplateComponent"]["properties"]
    properties["sub_type"] = {"type": "string"}
    properties["index"] = {
        "type": ["string", "integer"],
        "pattern": "^[0-9]$",
        "minimum": 0,
        "maximum": 9,
    }


def _contact_labels_free(schemas: dict[str, Any]) -> None:
    for name in ("PhoneObject", "EmailObject", "UrlObject", "AddressObject"):
        schemas[name]["properties"]["type"] = {"type": "string"}


def _contact_name_required(schemas: dict[str, Any]) -> None:
    schemas["ContactObject"]["required"] = ["name"]
    schemas["NameObject"]["required"] = ["formatted_name"]


_MESSAGES_REFERENCE = (
    "Meta's Cloud API messages reference (developers.facebook.com/docs/whatsapp/cloud-api/"
    "reference/messages, its parameter tables as copied into public repositories)"
)
_MEASURED_2026_08 = (
    "a WhatsApp gateway's sends to Meta's production API on 2026-08-20, error bodies quoted in "
    "its source (public GitHub code, found with the library's code search)"
)

LIVE_API_OVERRIDES: tuple[LiveApiOverride, ...] = (
    LiveApiOverride(
        name="null_means_absent",
        why="A member set to null is taken as not given (pywa sends unset optional fields so).",
        source=(
            'issue 12 (Meta accepts pywa\'s location with "address": null); pywa 4.5.0 '
            "WhatsApp.send_location and types.Contact.to_dict send None as null"
        ),
        normalize=_drop_nulls,
    ),
    LiveApiOverride(
        name="type_defaults_to_text",
        why="A body without `type` is a text message.",
        source=f"{_MESSAGES_REFERENCE}: type, 'Optional ... If omitted, defaults to text'",
        normalize=_default_type,
    ),
    LiveApiOverride(
        name="recipient_type_optional",
        why="`recipient_type` may be left out; it defaults to individual.",
        source=(
            f"{_MESSAGES_REFERENCE}: recipient_type, 'Optional ... Default: individual'; the "
            "v23.0 description's own MessageRequest schema (default: individual)"
        ),
        patch_schemas=_recipient_type_optional,
    ),
    LiveApiOverride(
        name="text_body_required",
        why="An empty or missing text body is refused: 100, 'The parameter text.body is required.'",
        source=(
            "shridarpatil/whatomate issue 487 (2026, live v21.0 and v24.0); whatsappy's tests "
            "against the live API had the older wording \"(#100) The parameter text['body'] is "
            'required."'
        ),
        refuse=_text_body_refusal,
    ),
    LiveApiOverride(
        name="reply_buttons_count",
        why="No reply buttons, or more than 3, is refused with 131009 (not 100).",
        source=f"{_MEASURED_2026_08}: four buttons, HTTP 400, 131009, 'Invalid buttons count...'",
        refuse=_reply_buttons_count_refusal,
    ),
    LiveApiOverride(
        name="reply_button_title_length",
        why="A reply button title of 0 or over 20 characters is refused with 131009 (not 100).",
        source=(
            f"{_MEASURED_2026_08}: 21 and 25 characters refused, 20 (even 40 bytes) accepted; "
            "digiteinfotech/kairon's tests hold the same error body with its fbtrace_id"
        ),
        refuse=_reply_button_title_refusal,
    ),
    LiveApiOverride(
        name="cta_display_text_length",
        why="A cta_url display_text over 20 characters is refused with 131009, no field named.",
        source=(
            f"{_MEASURED_2026_08}: a bisection reported there (17 and 20 accepted, 21 refused); "
            "the details Meta sends with it were not recorded, so none are sent here"
        ),
        refuse=_cta_display_text_refusal,
    ),
    LiveApiOverride(
        name="location_coordinates",
        why="Latitude and longitude are required, as JSON numbers or as numeric strings.",
        source=(
            "Meta's location messages page (both 'Required'); Meta's earlier reference example "
            '"longitude": LONG_NUMBER, "latitude": LAT_NUMBER (quoted in restfb/restfb issue '
            "1254 and docs.360dialog.com); pywa 4.5.0 sends floats"
        ),
        patch_schemas=_location_coordinates,
    ),
    LiveApiOverride(
        name="location_request_message",
        why="Interactive type location_request_message (action name send_location) is served.",
        source=(
            "Meta's 'Location request messages' page (developers.facebook.com/documentation/"
            "business-messaging/whatsapp/messages/location-request-messages); absent from the "
            "v23.0 description; pywa 4.5.0 WhatsApp.request_location"
        ),
        patch_schemas=_location_request_message,
    ),
    LiveApiOverride(
        name="template_component_case",
        why="Template component type and button sub_type are read without regard to case.",
        source=(
            "pywa 4.5.0 sends HEADER, BODY, QUICK_REPLY, URL, COPY_CODE (types/templates.py) "
            "from every send_template; Meta's own template examples write COPY_CODE and CATALOG"
        ),
        normalize=_lowercase_template_components,
    ),
    LiveApiOverride(
        name="template_buttons",
        why="A button index may be a JSON number; sub_types beyond the three described exist.",
        source=(
            'pywa 4.5.0 sends "index": 0 as a number and sub_types copy_code, flow, catalog, '
            "mpm, voice_call; the description lists quick_reply, url and catalog only"
        ),
        patch_schemas=_template_buttons,
    ),
    LiveApiOverride(
        name="contact_labels_free",
        why="Contact phone, email, URL and address `type` labels are free text.",
        source=(
            f"{_MESSAGES_REFERENCE}: 'Standard Values are CELL, MAIN, IPHONE, HOME, and WORK' "
            "(the description allows HOME and WORK only); pywa's examples use MOBILE"
        ),
        patch_schemas=_contact_labels_free,
    ),
    LiveApiOverride(
        name="contact_name_required",
        why="Each contact needs name.formatted_name.",
        source=f"{_MESSAGES_REFERENCE}: contacts name 'Required', formatted_name 'Required'",
        patch_schemas=_contact_name_required,
    ),
)
