"""Fail when azure-functions-doctor reports any failed check (warnings are allowed)."""

import json
import sys
from pathlib import Path

summary = json.loads(Path(sys.argv[1]).read_text())
print(f"azure-functions-doctor summary: {summary}")
failed = summary.get("failed", summary.get("fails", 0))
sys.exit(1 if failed else 0)
