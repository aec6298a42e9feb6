"""Text from outside (a miner's repo, commitment or error message) made safe to print.

Repo ids, commitment texts, hub error details, tokenizer and scoring failure reasons end
up in the log, the console leaderboard and the step report. A control character in them
could rewrite the operator's terminal (ANSI escapes: "\\x1b[2J" clears it), forge log
lines ("\\r", "\\n") or reorder what is shown (bidi overrides such as U+202E). `printable`
escapes every character Python does not call printable, so the text stays readable and
inert, and bounds its length.
"""
from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
DEFAULT_LIMIT = 300


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, limit: int | None = DEFAULT_LIMIT) -> str:
    """`text` (str() of it when not a str) with control, format (bidi, zero-width),
    separator and unassigned characters escaped as `\\xNN` / `\\uNNNN`, cut to `limit`
    characters (an ellipsis marks a cut); None keeps the whole length."""
    s = text if isinstance(text, str) else str(text)
    cut = limit is not None and len(s) > limit
    if limit is not None:
        s = s[:limit]  # escaping only lengthens: nothing past the limit can show
    out = "".join(ch if ch == " " or ch.isprintable() else _escape(ch) for ch in s)
    if limit is not None and len(out) > limit:
        out, cut = out[:limit], True
    return out + "…" if cut else out
