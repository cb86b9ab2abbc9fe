""".funcignore: the deployment package holds the app and nothing else (issue 14).

The files are listed as a deployment lists them: .funcignore read with gitignore semantics
(``pathspec``), over the working tree. Patterns are anchored, so a folder named like an excluded
top-level one (``local``, ``tests``) deeper in the app stays in the package.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pathspec
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
EXCLUDED_TOP_LEVEL = ["bench", "docs", "infra", "local", "scripts", "tests", ".venv", ".local"]


def spec() -> pathspec.GitIgnoreSpec:
    lines = (REPO_ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def package_files() -> set[str]:
    """Every file a deployment of the working tree would upload (POSIX paths)."""
    ignored = spec()
    files: set[str] = set()
    for directory, subdirectories, names in os.walk(REPO_ROOT):
        relative = Path(directory).relative_to(REPO_ROOT).as_posix()
        prefix = "" if relative == "." else f"{relative}/"
        # An ignored directory is not entered, as git and the Functions tooling do.
        subdirectories[:] = [d for d in subdirectories if not ignored.match_file(f"{prefix}{d}/")]
        files.update(
            f"{prefix}{name}" for name in names if not ignored.match_file(f"{prefix}{name}")
        )
    return files


@pytest.fixture(scope="module")
def packaged() -> set[str]:
    return package_files()


def test_the_app_is_in_the_package(packaged: set[str]) -> None:
    assert {"function_app.py", "host.json", "requirements.txt"} <= packaged
    function_folders = sorted(p.parent.name for p in REPO_ROOT.glob("*_function/__init__.py"))
    assert function_folders
    for folder in function_folders:
        assert f"{folder}/__init__.py" in packaged
    shared = {
        p.relative_to(REPO_ROOT).as_posix()
        for p in (REPO_ROOT / "shared_code").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert shared and shared <= packaged
    # Migrations are applied at start-up from the package.
    assert any(f.startswith("shared_code/db/migrations/") and f.endswith(".sql") for f in packaged)


def test_tools_tests_and_local_files_stay_out(packaged: set[str]) -> None:
    for folder in EXCLUDED_TOP_LEVEL:
        assert not [f for f in packaged if f.startswith(f"{folder}/")], folder
    for name in [
        "Makefile",
        "constraints.txt",
        "requirements-dev.txt",
        "requirements.in",
        "local.settings.json",
        "local.settings.json.example",
        "pyproject.toml",
        ".gitignore",
    ]:
        assert name not in packaged
    assert not [f for f in packaged if "__pycache__" in f or f.endswith(".pyc")]


def test_patterns_are_anchored() -> None:
    ignored = spec()
    # A folder deeper in the app named like an excluded top-level one is kept.
    for path in ["shared_code/local/x.py", "shared_code/tests/x.py", "shared_code/bench/x.py"]:
        assert not ignored.match_file(path), path
    for path in ["local/host.py", "tests/conftest.py", "scripts/x.py"]:
        assert ignored.match_file(path), path
    for raw in (REPO_ROOT / ".funcignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        # Bytecode may sit at any depth; every other pattern names one top-level path.
        if line and not line.startswith("#") and line not in {"__pycache__/", "*.py[cod]"}:
            assert line.startswith("/"), line


def test_the_packaged_code_imports_nothing_left_out(packaged: set[str]) -> None:
    for name in sorted(f for f in packaged if f.endswith(".py")):
        tree = ast.parse((REPO_ROOT / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] not in EXCLUDED_TOP_LEVEL, (name, module)
