"""Route templates as the Functions host reads them (ASP.NET Core routing), compiled once.

Supported: literal segments (case-insensitive), ``{name}``, constraints such as ``{id:int}``,
``{id:int:min(1)}`` or ``{x:regex(^a+$)}``, optional ``{name?}``, defaults ``{name=value}``,
catch-all ``{*rest}`` / ``{**rest}``, complex segments such as ``{file}.{ext}``, and ``{{``/``}}``
for literal braces. A trailing slash on the request path is ignored, as ASP.NET Core does.

Routes are tried in ASP.NET's precedence order, segment by segment: a literal beats a complex
segment, which beats a constrained parameter, which beats a plain one, which beats a catch-all.
A path that matches only routes of other methods gives :class:`MethodNotAllowed`.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Final, Generic, TypeVar

__all__ = ["MethodNotAllowed", "RouteMatch", "RouteTemplateError", "Router"]

T = TypeVar("T")
Validator = Callable[[str], bool]

_INT32: Final = (-(2**31), 2**31 - 1)
_INT64: Final = (-(2**63), 2**63 - 1)
_INTEGER: Final = re.compile(r"^[-+]?\d+$")
_NUMBER: Final = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")
_ALPHA: Final = re.compile(r"^[A-Za-z]+$")

# Precedence digit per segment kind (ASP.NET Core's RoutePrecedence, inbound).
_LITERAL, _COMPLEX, _CONSTRAINED, _PLAIN, _CATCH_ALL = 1, 2, 3, 4, 5


class RouteTemplateError(ValueError):
    """A route template the dev host cannot compile; the message names the template."""


@dataclass(frozen=True, slots=True)
class RouteMatch(Generic[T]):
    target: T
    route_params: dict[str, str]


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    allowed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    validators: tuple[Validator, ...]
    optional: bool
    default: str | None
    catch_all: bool


_Part = str | _Param


@dataclass(frozen=True, slots=True)
class _Route(Generic[T]):
    template: str
    methods: frozenset[str] | None
    target: T
    regex: re.Pattern[str] | None  # None: every segment is literal
    literal_path: str  # lower-cased; the lookup key of an all-literal route
    params: tuple[tuple[str, _Param], ...]  # (regex group, parameter)
    precedence: tuple[int, ...]
    order: int

    def accepts(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def route_params(self, match: re.Match[str]) -> dict[str, str] | None:
        """The route values, or None when a constraint rejects one (the next route may match)."""
        values: dict[str, str] = {}
        for group, param in self.params:
            value = match[group]
            if not value:
                if param.default is not None:
                    values[param.name] = param.default
                continue
            for check in param.validators:
                if not check(value):
                    return None
            values[param.name] = value
        return values


class Router(Generic[T]):
    """Maps (path, method) to a target; templates are relative to ``prefix`` (``"api"``)."""

    def __init__(self, prefix: str = "api") -> None:
        self._prefix = [segment for segment in prefix.strip("/").split("/") if segment]
        self._literal: dict[str, list[_Route[T]]] = {}
        self._patterns: list[_Route[T]] = []
        self._count = 0

    def add(self, template: str, methods: Iterable[str] | None, target: T) -> None:
        method_set = None if methods is None else frozenset(m.upper() for m in methods)
        route = _compile(template, self._prefix, method_set, target, self._count)
        self._count += 1
        if route.regex is None:
            self._literal.setdefault(route.literal_path, []).append(route)
        else:
            self._patterns.append(route)
            self._patterns.sort(key=lambda r: (r.precedence, r.order))

    def match(self, path: str, method: str) -> RouteMatch[T] | MethodNotAllowed | None:
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/") or "/"
        allowed: set[str] = set()
        for route in self._literal.get(path.lower(), ()):
            if route.accepts(method):
                return RouteMatch(route.target, {})
            allowed.update(route.methods or ())
        for route in self._patterns:
            assert route.regex is not None
            found = route.regex.match(path)
            if found is None:
                continue
            params = route.route_params(found)
            if params is None:
                continue
            if route.accepts(method):
                return RouteMatch(route.target, params)
            allowed.update(route.methods or ())
        if allowed:
            return MethodNotAllowed(tuple(sorted(allowed)))
        return None


def _split(template: str) -> list[str]:
    stripped = template.strip("/")
    return stripped.split("/") if stripped else []


def _compile(
    template: str,
    prefix: list[str],
    methods: frozenset[str] | None,
    target: T,
    order: int,
) -> _Route[T]:
    try:
        segments = [_parse_segment(segment) for segment in _split(template)]
    except RouteTemplateError as error:
        raise RouteTemplateError(f"route {template!r}: {error}") from None
    pattern = ["^"]
    pattern.extend("/" + re.escape(segment) for segment in prefix)
    params: list[tuple[str, _Param]] = []
    precedence: list[int] = [_LITERAL] * len(prefix)
    names: set[str] = set()
    optional_seen = False
    for index, parts in enumerate(segments):
        if any(part == "" for part in parts) or not parts:
            raise RouteTemplateError(f"route {template!r}: empty segment")
        single = parts[0] if len(parts) == 1 else None
        for part in parts:
            if isinstance(part, _Param):
                if part.name.lower() in names:
                    raise RouteTemplateError(f"route {template!r}: {part.name!r} appears twice")
                names.add(part.name.lower())
                if part.catch_all and (single is None or index != len(segments) - 1):
                    raise RouteTemplateError(
                        f"route {template!r}: a catch-all must be the whole last segment"
                    )
                if (part.optional or part.default is not None) and single is None:
                    raise RouteTemplateError(
                        f"route {template!r}: an optional parameter must be a whole segment"
                    )
        if isinstance(single, _Param) and (
            single.optional or single.default is not None or single.catch_all
        ):
            optional_seen = True
            group = f"p{len(params)}"
            params.append((group, single))
            body = ".*" if single.catch_all else "[^/]+"
            pattern.append(f"(?:/(?P<{group}>{body}))?")
            precedence.append(
                _CATCH_ALL if single.catch_all else _CONSTRAINED if single.validators else _PLAIN
            )
            continue
        if optional_seen:
            raise RouteTemplateError(
                f"route {template!r}: only optional segments may follow an optional one"
            )
        pattern.append("/")
        for part in parts:
            if isinstance(part, str):
                pattern.append(re.escape(part))
            else:
                group = f"p{len(params)}"
                params.append((group, part))
                # Greedy: in "{name}.{ext}" the last dot splits, as ASP.NET matches right to left.
                pattern.append(f"(?P<{group}>[^/]+)")
        if isinstance(single, str):
            precedence.append(_LITERAL)
        elif isinstance(single, _Param):
            precedence.append(_CONSTRAINED if single.validators else _PLAIN)
        else:
            precedence.append(_COMPLEX)
    pattern.append("/?$")
    regex = None
    literal_path = ""
    if params:
        regex = re.compile("".join(pattern), re.IGNORECASE | re.DOTALL)
    else:
        literal = prefix + ["".join(str(part) for part in parts) for parts in segments]
        literal_path = "/" + "/".join(literal).lower()
    return _Route(
        template=template,
        methods=methods,
        target=target,
        regex=regex,
        literal_path=literal_path,
        params=tuple(params),
        precedence=tuple(precedence),
        order=order,
    )


def _parse_segment(segment: str) -> list[_Part]:
    """Split one segment into literal text and parameters ("{{" and "}}" are literal braces)."""
    parts: list[_Part] = []
    literal: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if segment.startswith("{{", i) or segment.startswith("}}", i):
            literal.append(char)
            i += 2
        elif char == "{":
            text: list[str] = []
            i += 1
            while True:
                if i >= len(segment):
                    raise RouteTemplateError(f"unclosed '{{' in segment {segment!r}")
                if segment.startswith("}}", i) or segment.startswith("{{", i):
                    text.append(segment[i])
                    i += 2
                elif segment[i] == "}":
                    i += 1
                    break
                else:
                    text.append(segment[i])
                    i += 1
            if parts and isinstance(parts[-1], _Param) and not literal:
                raise RouteTemplateError(
                    f"two parameters need a literal between them in {segment!r}"
                )
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_parse_param("".join(text)))
        elif char == "}":
            raise RouteTemplateError(f"unmatched '}}' in segment {segment!r}")
        else:
            literal.append(char)
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _parse_param(text: str) -> _Param:
    catch_all = text.startswith("*")
    text = text.lstrip("*")
    optional = text.endswith("?")
    if optional:
        text = text[:-1]
    pieces: list[str] = []
    current: list[str] = []
    default: str | None = None
    depth = 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if depth == 0 and char == ":":
            pieces.append("".join(current))
            current = []
        elif depth == 0 and char == "=":
            default = text[index + 1 :]
            break
        else:
            current.append(char)
    pieces.append("".join(current))
    name = pieces[0].strip()
    if not name or not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
        raise RouteTemplateError(f"bad parameter name in {{{text}}}")
    if optional and default is not None:
        raise RouteTemplateError(f"{{{name}}} cannot be optional and have a default")
    if catch_all and optional:
        optional = False  # a catch-all already matches nothing
    return _Param(
        name=name,
        validators=tuple(_constraint(piece) for piece in pieces[1:]),
        optional=optional,
        default=default,
        catch_all=catch_all,
    )


def _constraint(text: str) -> Validator:
    match = re.fullmatch(r"(?P<name>\w+)(?:\((?P<args>.*)\))?", text, re.DOTALL)
    if match is None:
        raise RouteTemplateError(f"bad constraint {text!r}")
    name, args = match["name"].lower(), match["args"]
    simple: dict[str, Validator] = {
        "int": lambda v: _in_range(v, *_INT32),
        "long": lambda v: _in_range(v, *_INT64),
        "bool": lambda v: v.lower() in ("true", "false"),
        "alpha": lambda v: _ALPHA.match(v) is not None,
        "guid": _is_guid,
        "double": _is_float,
        "float": _is_float,
        "decimal": _is_decimal,
        "datetime": _is_datetime,
        "required": bool,
    }
    if name in simple:
        if args is not None:
            raise RouteTemplateError(f"constraint {name!r} takes no arguments")
        return simple[name]
    if args is None:
        raise RouteTemplateError(f"unknown constraint {text!r}")
    if name == "regex":
        regex = re.compile(args, re.IGNORECASE)
        return lambda v: regex.search(v) is not None
    numbers = [_int_arg(arg, text) for arg in args.split(",")]
    if name == "minlength" and len(numbers) == 1:
        return lambda v: len(v) >= numbers[0]
    if name == "maxlength" and len(numbers) == 1:
        return lambda v: len(v) <= numbers[0]
    if name == "length" and len(numbers) in (1, 2):
        low, high = numbers[0], numbers[-1]
        return lambda v: low <= len(v) <= high
    if name == "min" and len(numbers) == 1:
        return lambda v: _in_range(v, numbers[0], _INT64[1])
    if name == "max" and len(numbers) == 1:
        return lambda v: _in_range(v, _INT64[0], numbers[0])
    if name == "range" and len(numbers) == 2:
        return lambda v: _in_range(v, numbers[0], numbers[1])
    raise RouteTemplateError(f"unknown constraint {text!r}")


def _int_arg(arg: str, text: str) -> int:
    try:
        return int(arg.strip())
    except ValueError:
        raise RouteTemplateError(f"constraint {text!r} needs integer arguments") from None


def _in_range(value: str, low: int, high: int) -> bool:
    return _INTEGER.match(value) is not None and low <= int(value) <= high


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_float(value: str) -> bool:
    if _NUMBER.match(value) is None:
        return False
    return math.isfinite(float(value))


def _is_decimal(value: str) -> bool:
    try:
        return _NUMBER.match(value) is not None and Decimal(value).is_finite()
    except InvalidOperation:
        return False


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True
