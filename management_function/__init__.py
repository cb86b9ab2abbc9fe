"""HTTP triggers of the management API: one function per route, each a thin adapter over
:func:`shared_code.management.api.dispatch` (authentication, validation and the handlers live in
shared_code/management/; the routes and models are declared once in its operations package)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping

import azure.functions as func

from shared_code.management.api import ApiRequest, Operation, dispatch
from shared_code.management.operations import registry
from shared_code.runtime import get_services

bp = func.Blueprint()


def _function_name(route: str) -> str:
    slug = re.sub(r"\{(\w+)\}", r"by_\1", route.removeprefix("v1/whatsapp/"))
    return "management_" + "".join(c if c.isalnum() else "_" for c in slug).strip("_")


def _adapter(
    operations: Mapping[str, Operation],
) -> Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]:
    async def handle(req: func.HttpRequest) -> func.HttpResponse:
        operation = operations[req.method.upper()]
        answer = await dispatch(
            operation,
            ApiRequest(
                method=req.method,
                route_params=dict(req.route_params),
                query=dict(req.params),
                headers={name.lower(): value for name, value in req.headers.items()},
                body=req.get_body(),
                path="/api/" + operation.route_path(dict(req.route_params)),
            ),
            get_services,
        )
        return func.HttpResponse(
            answer.body,
            status_code=answer.status,
            headers={
                "Content-Type": answer.content_type,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store",
                **answer.headers,
            },
        )

    return handle


for _route, _operations in registry.routes().items():
    _served = {method: op for method, op in _operations.items() if op.handler is not None}
    if not _served:
        continue
    _handler = _adapter(_served)
    _handler.__name__ = _function_name(_route)
    bp.function_name(name=_handler.__name__)(
        bp.route(
            route=_route,
            methods=[func.HttpMethod(method) for method in _served],
            auth_level=func.AuthLevel.ANONYMOUS,
        )(_handler)
    )
