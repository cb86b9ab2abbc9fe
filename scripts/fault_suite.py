"""Run the fault suite (tests/faults) and write its counts as JSON and markdown.

    .venv/bin/python -m scripts.fault_suite                 # the short size (~4 min)
    .venv/bin/python -m scripts.fault_suite --scale full    # 10,000 messages and longer outages
    .venv/bin/python -m scripts.fault_suite --render .local/faults/results-full.json

Writes ``.local/faults/results-<scale>.json`` (every count of every scenario) and
``.local/faults/summary-<scale>.md`` (a table docs/RELIABILITY.md can quote). Uses
``DATABASE_URL`` when set, else an embedded PostgreSQL, like the tests. The exit status is
pytest's: 0 only when every scenario kept the promise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR = REPO_ROOT / ".local" / "faults"

# (column title, count key); a scenario without the key shows a dash.
_COLUMNS = (
    ("webhooks sent", "webhook_posts"),
    ("answered 200", "answered_200"),
    ("answered 503", "answered_503"),
    ("no answer or other", None),
    ("bodies 200 not stored", "bodies_200_not_stored"),
    ("messages", "inbound_expected"),
    ("message rows", "inbound_rows"),
    ("messages lost", "inbound_lost"),
    ("replies at simulator", "replies_at_simulator"),
    ("replies lost", "replies_lost"),
    ("replies sent twice", "duplicate_replies"),
    ("seconds", "seconds"),
)


def _other_answers(counts: Mapping[str, Any]) -> int | None:
    keys = [k for k in counts if k.startswith("answered_") and k not in ("answered_200",)]
    keys = [k for k in keys if k != "answered_503" and isinstance(counts[k], int)]
    if "webhook_posts" not in counts:
        return None
    return sum(int(counts[k]) for k in keys)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render(document: Mapping[str, Any]) -> str:
    scenarios: Mapping[str, Mapping[str, Any]] = document["scenarios"]
    ordered = sorted(scenarios.items(), key=lambda item: str(item[1].get("nodeid")))
    lines = [
        f"# Fault suite, {document['scale']} size ({document['finished_at']})",
        "",
        "| scenario | outcome | " + " | ".join(title for title, _ in _COLUMNS) + " |",
        "|---|---|" + "---:|" * len(_COLUMNS),
    ]
    for name, counts in ordered:
        cells = [
            _cell(_other_answers(counts) if key is None else counts.get(key)) for _, key in _COLUMNS
        ]
        lines.append(f"| `{name}` | {counts.get('outcome', '?')} | " + " | ".join(cells) + " |")
    lines += ["", "## Details", ""]
    for name, counts in ordered:
        lines += [f"### `{name}`: {counts.get('outcome', '?')}", ""]
        for key in ("failure", "xfail_reason", "setup_error", "teardown_error"):
            if counts.get(key):
                lines += [f"**{key.replace('_', ' ')}:** {counts[key]}", ""]
        shown = {
            k: v
            for k, v in counts.items()
            if k not in ("nodeid", "outcome", "scale", "failure", "xfail_reason")
        }
        lines += ["```json", json.dumps(shown, indent=2, sort_keys=True, default=str), "```", ""]
    return "\n".join(lines)


def _run_pytest(scale: str, results: Path, extra: Sequence[str]) -> int:
    env = {**os.environ, "FAULT_SCALE": scale, "FAULT_RESULTS": str(results)}
    # The full size runs for hours: the per-test timeouts are in the tests themselves.
    command = [sys.executable, "-m", "pytest", "tests/faults", "-m", "faults"]
    return subprocess.call([*command, *extra], cwd=REPO_ROOT, env=env)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", choices=("short", "full"), default="short")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR)
    parser.add_argument("--render", type=Path, help="only render this results JSON as markdown")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)

    if args.render is not None:
        document = json.loads(args.render.read_text())
        stem = args.render.stem.replace("results", "summary", 1)
        target = args.render.with_name(
            f"{stem if stem != args.render.stem else 'summary-' + stem}.md"
        )
        target.write_text(render(document))
        print(target)
        return 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results = args.output_dir / f"results-{args.scale}.json"
    results.unlink(missing_ok=True)
    status = _run_pytest(args.scale, results, args.pytest_args)
    if not results.exists():
        print(f"no results written (pytest exit status {status})", file=sys.stderr)
        return status or 1
    summary = args.output_dir / f"summary-{args.scale}.md"
    summary.write_text(render(json.loads(results.read_text())))
    print(f"results: {results}\nsummary: {summary}")
    return status


if __name__ == "__main__":
    sys.exit(main())
