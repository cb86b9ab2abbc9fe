"""Route templates as the Functions host (ASP.NET Core routing) reads them."""

from __future__ import annotations

import pytest

from local.routes import MethodNotAllowed, RouteMatch, Router, RouteTemplateError


def router(*routes: tuple[str, list[str] | None, str], prefix: str = "api") -> Router[str]:
    table: Router[str] = Router(prefix)
    for template, methods, target in routes:
        table.add(template, methods, target)
    return table


def hit(table: Router[str], path: str, method: str = "GET") -> tuple[str, dict[str, str]] | None:
    found = table.match(path, method)
    if isinstance(found, RouteMatch):
        return found.target, found.route_params
    return None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/items/42", ("item", {"id": "42"})),
        ("/api/items/42/", ("item", {"id": "42"})),
        ("/api/items/-7", ("item", {"id": "-7"})),
        ("/api/items/42/blue", ("item", {"id": "42", "color": "blue"})),
        ("/api/items/abc", None),
        ("/api/items/99999999999", None),  # outside int32, as ASP.NET's int constraint
        ("/api/items/42/blue/extra", None),
        ("/items/42", None),
    ],
)
def test_int_constraint_and_optional_segment(
    path: str, expected: tuple[str, dict[str, str]] | None
) -> None:
    assert hit(router(("items/{id:int}/{color?}", None, "item")), path) == expected


def test_literal_beats_parameter_whatever_the_order() -> None:
    table = router(("items/{name}", None, "param"), ("items/special", None, "literal"))
    assert hit(table, "/api/items/special") == ("literal", {})
    assert hit(table, "/api/items/other") == ("param", {"name": "other"})


def test_constrained_parameter_beats_plain_one() -> None:
    table = router(("v/{name}", None, "plain"), ("v/{id:int}", None, "int"))
    assert hit(table, "/api/v/5") == ("int", {"id": "5"})
    assert hit(table, "/api/v/x") == ("plain", {"name": "x"})


def test_literals_match_case_insensitively_values_keep_case() -> None:
    table = router(("Users/{Name}", None, "u"))
    assert hit(table, "/API/users/Alice") == ("u", {"Name": "Alice"})


def test_catch_all_takes_the_rest_including_slashes() -> None:
    table = router(("files/{*path}", None, "files"))
    assert hit(table, "/api/files/a/b/c.txt") == ("files", {"path": "a/b/c.txt"})
    assert hit(table, "/api/files") == ("files", {})


def test_double_star_catch_all() -> None:
    assert hit(router(("f/{**path}", None, "f")), "/api/f/x/y") == ("f", {"path": "x/y"})


def test_complex_segment_splits_at_the_last_literal() -> None:
    table = router(("files/{name}.{ext}", None, "file"))
    assert hit(table, "/api/files/report.v2.pdf") == ("file", {"name": "report.v2", "ext": "pdf"})


def test_default_value_fills_a_missing_segment() -> None:
    assert hit(router(("page/{n:int=1}", None, "p")), "/api/page") == ("p", {"n": "1"})
    assert hit(router(("page/{n:int=1}", None, "p")), "/api/page/3") == ("p", {"n": "3"})


@pytest.mark.parametrize(
    ("template", "good", "bad"),
    [
        ("{x:alpha}", "abc", "ab1"),
        ("{x:bool}", "True", "yes"),
        ("{x:guid}", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "nope"),
        ("{x:long}", "9999999999", "9.5"),
        ("{x:double}", "-1.5e3", "1.5.5"),
        ("{x:minlength(3)}", "abc", "ab"),
        ("{x:maxlength(2)}", "ab", "abc"),
        ("{x:length(2,3)}", "abc", "abcd"),
        ("{x:min(10)}", "10", "9"),
        ("{x:max(10)}", "10", "11"),
        ("{x:range(1,5)}", "5", "6"),
        ("{x:regex(^wa[0-9]+$)}", "wa123", "xwa1"),
        ("{x:int:min(1)}", "1", "0"),
        ("{x:datetime}", "2026-01-31", "31/01/2026"),
    ],
)
def test_constraints(template: str, good: str, bad: str) -> None:
    table = router((template, None, "t"))
    assert hit(table, f"/api/{good}") == ("t", {"x": good})
    assert hit(table, f"/api/{bad}") is None


def test_regex_constraint_may_contain_colons_and_braces() -> None:
    table = router(("{x:regex(^a:\\d{{2}}$)}", None, "t"))
    assert hit(table, "/api/a:12") == ("t", {"x": "a:12"})
    assert hit(table, "/api/a:123") is None


def test_method_filter_and_method_not_allowed() -> None:
    table = router(("hook", ["GET"], "verify"), ("hook", ["post"], "receive"))
    assert hit(table, "/api/hook", "GET") == ("verify", {})
    assert hit(table, "/api/hook", "POST") == ("receive", {})
    assert table.match("/api/hook", "PUT") == MethodNotAllowed(("GET", "POST"))
    assert table.match("/api/other", "PUT") is None


def test_method_not_allowed_for_parameter_routes() -> None:
    table = router(("items/{id:int}", ["GET"], "item"))
    assert table.match("/api/items/1", "DELETE") == MethodNotAllowed(("GET",))
    assert table.match("/api/items/x", "DELETE") is None  # constraint fails: no such resource


def test_no_methods_means_every_method() -> None:
    assert hit(router(("any", None, "a")), "/api/any", "PATCH") == ("a", {})


def test_empty_and_nested_prefixes() -> None:
    assert hit(router(("x", None, "x"), prefix=""), "/x") == ("x", {})
    assert hit(router(("x", None, "x"), prefix="/v1/api/"), "/v1/api/x") == ("x", {})
    assert hit(router(("", None, "root")), "/api") == ("root", {})


def test_escaped_braces_are_literal() -> None:
    assert hit(router(("a{{b}}", None, "t")), "/api/a{b}") == ("t", {})


@pytest.mark.parametrize(
    "template",
    [
        "a/{*rest}/b",
        "a/{x?}/b",
        "{x}{y}",
        "{x:nope}",
        "{x:min(a)}",
        "{x}/{x}",
        "a//b",
        "{unclosed",
        "a}",
        "{x?}.txt",
        "{1x}",
    ],
)
def test_invalid_templates_are_refused(template: str) -> None:
    with pytest.raises(RouteTemplateError):
        router((template, None, "t"))
