"""Logging for a terminal and for an unattended box.

- level: the flag's, else INFO on a terminal and WARNING when stderr is not one (a log file,
  journald): a validator runs for weeks and its log must stay readable;
- the HTTP client libraries log each request at INFO/DEBUG: they stay at WARNING unless the
  level is DEBUG;
- huggingface_hub's tqdm bars fill a log file with carriage returns: off (the validator
  shows its own progress); HF_HUB_DISABLE_PROGRESS_BARS=0 in the environment keeps them;
- a retry warning ("retrying in 2 s", urllib3's "Retrying (...)") is shown once per
  RETRY_WARNING_WINDOW_S for the same message shape, not once per attempt.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Callable, TextIO

if TYPE_CHECKING:
    import argparse

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
HTTP_LOGGERS = ("httpx", "httpcore", "urllib3", "huggingface_hub", "filelock", "websockets", "asyncio")
RETRY_WARNING_WINDOW_S = 3600.0
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_RETRY = re.compile(r"retr(y|ies|ying)", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(\.\d+)?")


def log_level(value: str) -> str:
    """argparse type of --log-level: one of LEVELS, any case."""
    import argparse

    upper = str(value).upper()
    if upper not in LEVELS:
        raise argparse.ArgumentTypeError(f"{value!r} is not a log level; valid: {', '.join(LEVELS)}")
    return upper


def add_log_level(p: "argparse.ArgumentParser", default: str | None) -> None:
    """--log-level on a command's parser; `default` None: by terminal (see the module doc)."""
    p.add_argument("--log-level", type=log_level, default=default, metavar="LEVEL",
                   help=f"{', '.join(LEVELS)} (default: "
                        + (default if default else "INFO on a terminal, WARNING when stderr is not one") + ")")


def default_level(stream: TextIO | None = None) -> str:
    stream = sys.stderr if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream: treat as unattended
        tty = False
    return "INFO" if tty else "WARNING"


class RetryOnce(logging.Filter):
    """Lets a retry warning through once per `window_s` for its shape (logger, message with
    the numbers taken out): attempt counts and back-off seconds differ, the news does not."""

    def __init__(self, window_s: float = RETRY_WARNING_WINDOW_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self.seen: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: let logging report it
            return True
        if not _RETRY.search(text):
            return True
        key = (record.name, _NUMBER.sub("N", text))
        now = self.clock()
        last = self.seen.get(key)
        if last is not None and now - last < self.window_s:
            return False
        self.seen[key] = now
        return True


def setup_logging(level: str | None = None, stream: TextIO | None = None) -> str:
    """Configure the root logger (replacing what an earlier call added); returns the level used."""
    stream = sys.stderr if stream is None else stream
    chosen = log_level(level) if level is not None else default_level(stream)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by huggingface_hub and by workers
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] not in ("0", "false", "False", ""):
        _silence_hf_bars()
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_coldint", False)]:
        root.removeHandler(h)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RetryOnce())
    handler._coldint = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(chosen)
    # a child logger's own level decides for the records it propagates: never below the root's
    quiet = logging.DEBUG if chosen == "DEBUG" else max(logging.WARNING, logging.getLevelName(chosen))
    for name in HTTP_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    return chosen


def _silence_hf_bars() -> None:
    if "huggingface_hub" not in sys.modules:
        return  # the environment variable covers a later import
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
