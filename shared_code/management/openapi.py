"""The OpenAPI 3.1 document of every route of the app, written from the operations' own models.

The models are the msgspec Structs the handlers decode and encode, and msgspec writes their JSON
Schema (draft 2020-12, which OpenAPI 3.1 uses as is): the document cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from shared_code.management.api import NoBody, Operation
from shared_code.management.auth import Access
from shared_code.management.problems import PROBLEM_CONTENT_TYPE, ProblemBody

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"
_PROBLEM_TEXT = {
    400: "The request is invalid; the problem names the parameter.",
    401: "No valid credential (management key or Entra ID token).",
    403: "The credential does not allow this operation.",
    404: "Not found.",
    409: "Conflicts with the current state (e.g. the contact opted out).",
    413: "The body is too large.",
    422: "Understood but refused by a rule (e.g. a template is needed).",
    429: "A limit was reached; retry after the Retry-After header's seconds.",
    503: "A dependency is unreachable; retry after the Retry-After header's seconds.",
}


_ANY_HEADER = {"type": "string", "minLength": 1, "maxLength": 255}
# Request headers whose values have a form in this API (by lower-case name).
_HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    # A row's version, as its ETag: 7, "7" or W/"7".
    "if-match": {"type": "string", "pattern": '^(W/)?"?[0-9]{1,18}"?$'},
    # Printable ASCII, not only spaces.
    "idempotency-key": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[\\x20-\\x7e]*[\\x21-\\x7e][\\x20-\\x7e]*$",
    },
}


def _models(operations: Iterable[Operation]) -> list[Any]:
    found: list[Any] = [ProblemBody]
    for operation in operations:
        for model in (operation.path_model, operation.query_model, operation.body_model):
            if model is not None and model is not NoBody:
                found.append(model)
        found.extend(model for model in operation.responses.values() if model is not None)
    unique: list[Any] = []
    for model in found:
        if model not in unique:
            unique.append(model)
    return unique


def _component_name(schema: dict[str, Any]) -> str:
    return str(schema["$ref"]).rsplit("/", 1)[-1]


def _parameters(
    model: type[msgspec.Struct], where: str, components: dict[str, Any], refs: dict[Any, Any]
) -> list[dict[str, Any]]:
    if model is NoBody:
        return []
    component = components[_component_name(refs[model])]
    required = set(component.get("required", []))
    formats = _string_formats(model)
    parameters = []
    for name, property_schema in component.get("properties", {}).items():
        schema = _not_null(property_schema)
        if name in formats:
            schema = {**schema, "format": formats[name]}
        parameter: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": {k: v for k, v in schema.items() if k not in ("title", "description")},
        }
        if "description" in schema:
            parameter["description"] = schema["description"]
        parameters.append(parameter)
    return parameters


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter is left out, never null: a query string cannot say null (a client
    generating from ``anyOf: [..., null]`` would send ``?name=``, which is not "absent")."""
    options = schema.get("anyOf")
    if not isinstance(options, list):
        return schema
    kept = [option for option in options if option != {"type": "null"}]
    if len(kept) != 1 or len(kept) == len(options):
        return schema
    outer = {k: v for k, v in schema.items() if k != "anyOf"}
    if outer.get("default", 0) is None:
        del outer["default"]
    return {**kept[0], **outer}


def _string_formats(model: type[msgspec.Struct]) -> dict[str, str]:
    """Formats msgspec does not write (it writes date-time only for ``Meta(tz=True)``), yet a
    parameter's value must have: a datetime parameter takes RFC 3339, not any string."""
    formats: dict[str, str] = {}
    info = msgspec.inspect.type_info(model)
    if not isinstance(info, msgspec.inspect.StructType):
        return formats
    for field in info.fields:
        kind = field.type
        if isinstance(kind, msgspec.inspect.UnionType):
            kinds = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
            kind = kinds[0] if len(kinds) == 1 else kind
        if isinstance(kind, msgspec.inspect.Metadata):
            kind = kind.type
        if isinstance(kind, msgspec.inspect.DateTimeType):
            formats[field.encode_name] = "date-time"
    return formats


def openapi_document(
    operations: Iterable[Operation], *, title: str, version: str, route_prefix: str = "/api"
) -> dict[str, Any]:
    operations = list(operations)
    models = _models(operations)
    schemas, components = msgspec.json.schema_components(models, ref_template=_REF)
    refs = dict(zip(models, schemas, strict=True))
    # Query and path parameter models are spelled out as parameters, not referenced.
    parameter_models = {
        model
        for operation in operations
        for model in (operation.path_model, operation.query_model)
        if model is not NoBody
    }
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        entry: dict[str, Any] = {
            "operationId": operation.operation_id,
            "summary": operation.summary,
            "tags": [operation.tag],
        }
        if operation.description:
            entry["description"] = operation.description
        parameters = _parameters(operation.path_model, "path", components, refs)
        parameters += _parameters(operation.query_model, "query", components, refs)
        for header, description in operation.headers.items():
            parameters.append(
                {
                    "name": header,
                    "in": "header",
                    "required": False,
                    "description": description,
                    "schema": _HEADER_SCHEMAS.get(header.lower(), _ANY_HEADER),
                }
            )
        if parameters:
            entry["parameters"] = parameters
        if operation.body_model is not None:
            media = operation.media_types.get(0, "application/json")
            entry["requestBody"] = {
                "required": True,
                "content": {media: {"schema": refs[operation.body_model]}},
            }
        responses: dict[str, Any] = {}
        for status, model in operation.responses.items():
            media = operation.media_types.get(status, "application/json")
            response: dict[str, Any] = {"description": _success_text(status)}
            if model is not None:
                response["content"] = {media: {"schema": refs[model]}}
            elif media != "application/json":
                response["content"] = {media: {"schema": {"type": "string"}}}
            responses[str(status)] = response
        for status in _problem_statuses(operation):
            media = operation.media_types.get(status, PROBLEM_CONTENT_TYPE)
            schema = refs[ProblemBody] if media == PROBLEM_CONTENT_TYPE else {"type": "string"}
            problem: dict[str, Any] = {
                "description": _PROBLEM_TEXT.get(status, "Error."),
                "content": {media: {"schema": schema}},
            }
            if status in (429, 503):
                problem["headers"] = {
                    "Retry-After": {"schema": {"type": "string"}, "description": "Seconds."}
                }
            if status == 401:
                problem["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
            responses[str(status)] = problem
        entry["responses"] = responses
        if operation.access is not None:
            entry["security"] = [{"bearerAuth": []}]
            entry["x-required-access"] = operation.access.name.lower()
        else:
            entry["security"] = []
        paths.setdefault(f"{route_prefix}/{operation.route}", {})[operation.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "WhatsApp Business Cloud API bridge: Meta's webhook, and the management API "
                "for dashboards. Management routes take `Authorization: Bearer <key>` (a "
                "management key, or a Microsoft Entra ID access token with the app roles "
                "WhatsApp.Read, WhatsApp.Send or WhatsApp.Admin when configured). Errors are "
                "`application/problem+json` (RFC 9457)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {
                name: schema
                for name, schema in components.items()
                if not any(_component_name(refs[m]) == name for m in parameter_models)
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A management key, or an Entra ID access token.",
                }
            },
        },
    }


def _success_text(status: int) -> str:
    return {200: "OK", 201: "Created", 202: "Accepted", 204: "No content"}.get(status, "OK")


def _problem_statuses(operation: Operation) -> list[int]:
    statuses = set(operation.problems)
    if operation.access is not None:
        statuses |= {400, 401, 503}
        if operation.access > Access.READ or 403 in operation.problems:
            statuses.add(403)
        if operation.body_model is not None:
            statuses.add(413)
    return sorted(statuses)
