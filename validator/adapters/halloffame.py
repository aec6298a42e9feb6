"""hall_of_fame.json: where it comes from (the source only; parsing is validator.core.halloffame's).

As live (`neurons/validator.py:update_dynamic_config`): fetched from constants.HALL_OF_FAME_URL
every 15 minutes, a failed fetch keeps the copy in force. Here an explicit location (file or
URL) replaces the URL, the last good copy is also kept in the state dir for a restart or
`--offline`, and a document `validator.core.halloffame.parse_hall_of_fame` refuses as a whole (a top
level that is not an object) is a failed fetch; the entries it skips are in `problems()`.
Live has no per-validator hall_of_fame-<uid>.json, so none is tried.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import constants
from validator.core import halloffame
from validator.adapters.config_source import ConfigSource, SourceBacked


@dataclass(frozen=True)
class HallOfFameDoc:
    entries: Any  # what halloffame.parse_hall_of_fame returns
    problems: tuple[str, ...]  # the entries it skipped, and why


def parse_document(data: Any) -> HallOfFameDoc:
    """A decoded hall_of_fame.json; ValueError (HallOfFameError) only when it is unusable as a whole."""
    problems: list[str] = []
    entries = halloffame.parse_hall_of_fame(data, problems)
    return HallOfFameDoc(entries, tuple(problems))


class HallOfFameSource(SourceBacked):
    """The hall of fame in force, refreshed; empty until a copy was ever read."""

    def __init__(self, location: str | Path | None = None, *, url: str = constants.HALL_OF_FAME_URL,
                 state_dir: Path | None = None, offline: bool = False,
                 refresh_s: float = constants.HALL_OF_FAME_REFRESH_S,
                 timeout: float = constants.HALL_OF_FAME_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source: ConfigSource[HallOfFameDoc] = ConfigSource(
            "hall of fame", [str(location) if location is not None else url], parse_document,
            state_dir=state_dir, cache_name="hall_of_fame.json", offline=offline, refresh_s=refresh_s,
            timeout=timeout, max_bytes=constants.HALL_OF_FAME_MAX_BYTES, clock=clock)
        self.reload()

    @property
    def hall_of_fame(self) -> Any:
        """What `halloffame.parse_hall_of_fame` made of the copy in force; of `{}` before any."""
        value = self.source.value
        return halloffame.parse_hall_of_fame({}) if value is None else value.entries

    def problems(self) -> list[str]:
        """Fetch failures (and what stays in force), then the entries the copy in force skips."""
        value = self.source.value
        return self.source.problems() + ([] if value is None else list(value.problems))
