"""Extract the outbound-message request schemas from Meta's OpenAPI description.

    .venv/bin/python -m scripts.extract_meta_schemas [--source YAML] [--output JSON]

Writes ``local/meta_schemas.json``: the ``components.schemas`` reachable from ``Message`` and
``MarkMessageRequestPayload``, copied verbatim, with their ``$ref``s left as
``#/components/schemas/X`` so the file is one self-contained JSON document. The repository keeps
this 37 kB extract instead of Meta's 1 MB YAML; :mod:`local.meta_schema` applies our corrections
on top when it loads it, so the file itself stays a faithful copy of Meta's text.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT_SCHEMAS = ("Message", "MarkMessageRequestPayload")
SCHEMA_REF_PREFIX = "#/components/schemas/"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO_ROOT.parent / "shared/reference/business-messaging-api_v23.0.yaml"
DEFAULT_OUTPUT = REPO_ROOT / "local/meta_schemas.json"


def schema_refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` string anywhere below ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from schema_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from schema_refs(item)


def reachable_schemas(schemas: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    """The transitive closure of ``roots`` over ``$ref``s, keyed and sorted by schema name."""
    found: dict[str, Any] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        if name not in schemas:
            raise SystemExit(f"schema {name!r} is referenced but not defined")
        found[name] = schemas[name]
        for ref in schema_refs(schemas[name]):
            if not ref.startswith(SCHEMA_REF_PREFIX):
                raise SystemExit(f"schema {name!r} has a $ref outside components.schemas: {ref}")
            pending.append(ref.removeprefix(SCHEMA_REF_PREFIX))
    return dict(sorted(found.items()))


def extract(source: Path) -> dict[str, Any]:
    with source.open("rb") as stream:
        description = yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - both loaders are safe
    schemas = reachable_schemas(description["components"]["schemas"], ROOT_SCHEMAS)
    return {
        "$comment": (
            f"Extracted by scripts/extract_meta_schemas.py from {source.name} "
            f"({description['info']['title']} {description['info']['version']}); do not edit: "
            "corrections live in local/meta_schema.py."
        ),
        "components": {"schemas": schemas},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    document = extract(args.source)
    args.output.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(document['components']['schemas'])} schemas to {args.output}")


if __name__ == "__main__":
    main()
