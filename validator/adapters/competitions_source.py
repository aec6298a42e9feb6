"""competitions.json's source: read once from a path or URL, or held refreshed with a last
good copy (`CompetitionsConfig`).

As live (`neurons/validator.py:update_dynamic_config`): the default URL, with
`competitions-<uid>.json` beside it tried first (live: any failure of that one, 404
included, silently falls back to the shared file); re-read every 15 minutes; an explicit
location replaces both. The last good copy stays in force (and on disk in the state dir)
when a fetch fails; before any copy exists the file shipped in `constants/` (sn29 80b4226)
stands in for the default URL. The schema and the parse are `validator.core.competitions`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import constants
from validator.adapters.config_source import ConfigSource, SourceBacked, describe, read_location
from validator.core.competitions import (Competition, CompetitionsError, CompetitionsFile, ValidatorDefaults,
                                         parse_config)
from validator.core.jsonread import SourceError, decode_json

log = logging.getLogger(__name__)

SHIPPED_COMPETITIONS = Path(constants.__file__).with_name("competitions.json")  # sn29 80b4226


def load_config(location: str | Path, timeout: float = constants.COMPETITIONS_TIMEOUT_S) -> CompetitionsFile:
    """Read and parse competitions.json from a path, a file:// URL or an https:// URL
    (http:// only on loopback), once; CompetitionsError names the location and the reason."""
    text = str(location)
    what = describe(text, "competitions")
    try:
        raw = read_location(text, "competitions", max_bytes=constants.COMPETITIONS_MAX_BYTES, timeout=timeout)
        data = decode_json(raw, what)
    except SourceError as exc:
        raise CompetitionsError(str(exc)) from None
    try:
        return parse_config(data)
    except CompetitionsError as exc:
        raise CompetitionsError(f"{what}: {exc}") from None


def load_competitions(location: str | Path,
                      timeout: float = constants.COMPETITIONS_TIMEOUT_S) -> dict[str, Competition]:
    """The competitions in force at `location` (see `load_config`); problems go to the log."""
    parsed = load_config(location, timeout)
    for problem in parsed.problems:
        log.warning("%s: %s", location, problem)
    return parsed.competitions


def per_validator_url(url: str, uid: int) -> str:
    """competitions.json -> competitions-<uid>.json (live: url.replace('.json', f'-{uid}.json'),
    here only the last '.json', so a '.json' elsewhere in the URL is left alone)."""
    if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
        raise ValueError(f"uid: expected a non-negative integer, got {uid!r}")
    head, dot, tail = url.rpartition(".json")
    return f"{head}-{uid}.json{tail}" if dot else f"{url}-{uid}"


_SHIPPED = object()


class CompetitionsConfig(SourceBacked):
    """The competitions in force, refreshed; a failed reload keeps the last good config (a
    validator must not stop because GitHub hiccupped or someone pushed a typo).

    `location` given: only that file or URL. Otherwise `url` (default: constants.COMPETITIONS_URL),
    after `competitions-<uid>.json` beside it when `uid` is given. `state_dir`: the last good
    copy is also kept there, for a restart or `offline`. `fallback` (default: the copy shipped
    in constants/, only without an explicit `location`) stands in while nothing else ever loaded."""

    def __init__(self, location: str | Path | None = None, timeout: float = constants.COMPETITIONS_TIMEOUT_S,
                 refresh_s: float | None = None, *, uid: int | None = None,
                 url: str = constants.COMPETITIONS_URL, state_dir: Path | None = None, offline: bool = False,
                 fallback: Any = _SHIPPED, clock: Callable[[], float] = time.monotonic) -> None:
        if location is not None:
            candidates = [str(location)]
        else:
            candidates = ([per_validator_url(url, uid)] if uid is not None else []) + [url]
        if fallback is _SHIPPED:
            fallback = SHIPPED_COMPETITIONS if location is None else None
        self.source: ConfigSource[CompetitionsFile] = ConfigSource(
            "competitions", candidates, parse_config, state_dir=state_dir, cache_name="competitions.json",
            fallback=fallback, offline=offline,
            refresh_s=constants.COMPETITIONS_REFRESH_S if refresh_s is None else refresh_s,
            timeout=timeout, max_bytes=constants.COMPETITIONS_MAX_BYTES, clock=clock)
        self.reload()

    @property
    def refresh_s(self) -> float:
        return self.source.refresh_s

    @property
    def attempted_at(self) -> Optional[float]:
        return self.source.attempted_at

    @property
    def parsed(self) -> Optional[CompetitionsFile]:
        return self.source.value

    @property
    def competitions(self) -> Optional[dict[str, Competition]]:
        """The config in force; None only when no load has ever succeeded (see `last_error`)."""
        parsed = self.source.value
        return None if parsed is None else dict(parsed.competitions)

    @property
    def settings(self) -> ValidatorDefaults:
        """Validator-wide settings of the config in force (our defaults before any)."""
        parsed = self.source.value
        return ValidatorDefaults() if parsed is None else parsed.settings

    @property
    def paused(self) -> bool:
        parsed = self.source.value
        return parsed is not None and parsed.paused

    def problems(self) -> list[str]:
        """What a step report should show: fetch failures, what stays in force, coercions,
        disabled competitions, a paused subnet."""
        out = self.source.problems()
        parsed = self.source.value
        if parsed is not None:
            out += [f"competitions {self.location}: {p}" for p in parsed.problems]
            if parsed.paused:
                out.append(f"competitions {self.location}: every reward is 0: the subnet is paused")
        return out
