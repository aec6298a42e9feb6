"""Writing the validator's files: the Saver port of a step, and how a failed save is reported.

A failed save never stops a step: its results stay in memory, count, and are written at
the next save; a full disk is said once per step.
"""
from __future__ import annotations

import errno
import logging
from pathlib import Path

from validator.adapters.evalcache import EvalCache
from validator.adapters.files import atomic_write_json
from validator.core.sanitize import printable
from validator.step.state import ValidatorState

log = logging.getLogger(__name__)


class Saver:
    """Writes the validator's files (atomically); a test passes another to fill the disk."""

    def cache(self, cache: EvalCache, path: Path) -> None:
        cache.save(path)

    def state(self, state: ValidatorState, path: Path) -> None:
        state.save(path)

    def report(self, report: dict, path: Path) -> None:
        atomic_write_json(path, report)


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def save_problem(exc: OSError, what: str) -> str:
    """The step problem of a failed save: `disk_full: ...` when the disk or quota is full."""
    if exc.errno in _NO_SPACE:
        return (f"disk_full: {what} save failed ({printable(exc)}); the results are kept in memory and count, "
                "everything is written once space is back")
    return f"{what} save failed ({printable(exc)}); kept in memory, saved again at the next save"


def note_once(problems: list[str], msg: str) -> None:
    """Add `msg` (and log it) unless it is there already; a full disk fails every save of the
    step (each model's cache save, the state, the report) and is said once."""
    if msg in problems or (msg.startswith("disk_full:") and any(p.startswith("disk_full:") for p in problems)):
        return
    log.error(msg)
    problems.append(msg)
