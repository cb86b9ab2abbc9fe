"""Check Cloud API request bodies against Meta's own schemas, corrected and tightened.

``meta_schemas.json`` is a verbatim extract of Meta's OpenAPI description (v23.0, see
``scripts/extract_meta_schemas.py``). Taken as is, that schema rejects every real message and
accepts some broken ones, so :func:`_corrected` patches it when it loads; each patch says why.
Where Meta's schema is looser than Meta's documented limits (4,096-character text body, ≤10 list
rows in total, caption ≤1,024 characters, ...), the documented limit is enforced too.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = [
    "SCHEMAS_FILE",
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
    """Problems with a ``POST /{phone-number-id}/messages`` body; ``[]`` when it is valid.

    Takes any decoded JSON (the simulator passes what it received), not only mappings.
    """
    if not isinstance(body, Mapping):
        return ["(root): must be an object"]
    schemas = _compiled()
    message_type = body.get("type")
    validator = schemas.messages.get(message_type) if isinstance(message_type, str) else None
    if validator is None:
        base_problems = _problems(schemas.base_message, body)
        if "type" not in body:
            return base_problems
        allowed = ", ".join(sorted(schemas.messages))
        return [f"type: must be one of {allowed}", *base_problems]
    problems = _problems(validator, body)
    # The checks below walk the structure the schema guarantees, so they only run once it holds.
    return problems or _documented_limit_problems(body)


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
