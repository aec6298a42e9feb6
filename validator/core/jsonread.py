"""Bounded reading of JSON documents: every file we parse (a repo's config, a fetched
competitions.json, the validator's own state) is read within a size, then checked for nesting
depth and value count before the parser sees it, so a hostile or damaged document cannot
exhaust memory or the parser's stack. Pure but for reading a path; no network (see
validator.adapters.config_source for URLs)."""
from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import constants


class SourceError(ValueError):
    """A config document cannot be read or decoded; the message names the location and why.
    `not_found`: the location answered that there is no such document (HTTP 404, no file)."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


def read_file(path: Path, what: str, max_bytes: int) -> bytes:
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise SourceError(f"{what}: is a directory")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
            raise SourceError(f"{what}: not a regular file")
        if st.st_size > max_bytes:
            raise SourceError(f"{what}: {st.st_size} bytes, more than the {max_bytes} allowed")
        with open(path, "rb") as f:
            body = f.read(max_bytes + 1)  # it may have grown since the stat
    except FileNotFoundError:
        raise SourceError(f"{what}: not found", not_found=True) from None
    except OSError as exc:
        raise SourceError(f"{what}: cannot read ({exc.strerror or exc})") from None
    if len(body) > max_bytes:
        raise SourceError(f"{what}: more than {max_bytes} bytes")
    return body


# One token per match, scanned left to right: a run of non-structural characters, a string
# (unrolled loop: linear), a run of openers, a run of closers. An unterminated string stops
# the scan; the JSON parser then fails on that string before reaching anything after it.
_TOKEN = re.compile(r'[^"\[\]{},]+|"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]+|[\]}]+|,+', re.DOTALL)


def check_json_shape(text: str, what: str, *, max_depth: int, max_elements: int) -> None:
    """Refuse JSON text nested deeper than `max_depth` or holding more than `max_elements`
    values, without parsing it (so a hostile document cannot exhaust the parser's stack)."""
    openers = text.count("[") + text.count("{")
    if openers <= max_depth and openers + text.count(",") <= max_elements:
        return  # upper bounds (brackets inside strings included) already within the limits
    depth = elements = pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return
        tok = m.group()
        if tok[0] in "[{":
            depth += len(tok)
            elements += len(tok)
            if depth > max_depth:
                raise SourceError(f"{what}: JSON nested deeper than {max_depth} levels (refused before parsing)")
        elif tok[0] in "]}":
            depth = max(0, depth - len(tok))
        elif tok[0] == ",":
            elements += len(tok)
        if elements > max_elements:
            raise SourceError(f"{what}: more than {max_elements} JSON values (refused before parsing)")
        pos = m.end()


def decode_json(raw: bytes, what: str, *, max_depth: int = constants.CONFIG_MAX_DEPTH,
                max_elements: int = constants.CONFIG_MAX_ELEMENTS) -> Any:
    """UTF-8 JSON (an editor's BOM tolerated) within the shape limits, or SourceError naming `what`."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{what}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    check_json_shape(text, what, max_depth=max_depth, max_elements=max_elements)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{what}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise SourceError(f"{what}: invalid JSON: {exc}") from None
