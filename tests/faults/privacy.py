"""Finds what must never be in a log: secrets, message texts, phone numbers and wamids.

Meta's wamids are ``wamid.HBgL`` + base64 of a structure that holds the user's phone number, so
a wamid in a log is a phone number in a log; so is any base64 token that decodes to one. Findings
are reported masked: the report itself must not become the leak.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.faults.harness import Sensitive

__all__ = ["Finding", "Scanner"]

_DIGIT_RUN = re.compile(r"\d{8,}")
_TEXT_TOKEN = re.compile(r"tx[0-9a-f]{12}")
_WAMID = re.compile(r"wamid\.[A-Za-z0-9+/=_-]*")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")


@dataclass(frozen=True)
class Finding:
    kind: str
    where: str
    sample: str

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "where": self.where, "sample": self.sample}


def _mask(value: str) -> str:
    return value[:4] + "…" + f"({len(value)} chars)"


def _phones_in(text: str, wa_ids: set[str], lengths: set[int]) -> Iterator[str]:
    for match in _DIGIT_RUN.finditer(text):
        run = match.group(0)
        for size in lengths:
            for start in range(len(run) - size + 1):
                if run[start : start + size] in wa_ids:
                    yield run[start : start + size]


def _decoded(token: str) -> Iterator[str]:
    bare = token.rstrip("=")
    for offset in range(4):
        # A token cut out of a longer string may start mid-quantum: try each alignment.
        chunk = bare[offset:]
        chunk = chunk[: len(chunk) - len(chunk) % 4] if len(chunk) % 4 == 1 else chunk
        padded = chunk + "=" * (-len(chunk) % 4)
        for altchars in (None, b"-_"):
            try:
                raw = base64.b64decode(padded, altchars=altchars, validate=False)
            except (binascii.Error, ValueError):
                continue
            yield raw.decode("latin-1")


class Scanner:
    """Holds the session's sensitive values in lookup form; scans text and files."""

    def __init__(self, sensitive: Sensitive) -> None:
        self._secrets = sorted(sensitive.secrets)
        self._wa_ids = set(sensitive.wa_ids)
        self._lengths = {len(w) for w in self._wa_ids}
        self._text_tokens = {t for text in sensitive.texts for t in _TEXT_TOKEN.findall(text)}
        self._wamid_tails = {w.removeprefix("wamid.").rstrip("=") for w in sensitive.wamids}

    def scan_text(self, text: str, where: str) -> list[Finding]:
        findings: list[Finding] = []
        for secret in self._secrets:
            if secret in text:
                findings.append(Finding("secret", where, _mask(secret)))
        for token in set(_TEXT_TOKEN.findall(text)) & self._text_tokens:
            findings.append(Finding("message text", where, _mask(token)))
        for phone in set(_phones_in(text, self._wa_ids, self._lengths)):
            findings.append(Finding("phone number", where, _mask(phone)))
        for wamid in set(_WAMID.findall(text)):
            findings.append(Finding("wamid", where, _mask(wamid)))
        # A wamid found above is not counted again as base64.
        for token in set(_BASE64.findall(_WAMID.sub(" ", text))):
            if token.rstrip("=") in self._wamid_tails:
                findings.append(Finding("wamid without its prefix", where, _mask(token)))
                continue
            for decoded in _decoded(token):
                if any(_phones_in(decoded, self._wa_ids, self._lengths)):
                    findings.append(Finding("base64 of a phone number", where, _mask(token)))
                    break
        return findings

    def scan_file(self, path: Path) -> list[Finding]:
        findings: list[Finding] = []
        text = path.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            findings += self.scan_text(line, f"{path.name}:{number}")
        return findings
