"""What survives a restart (besides the eval caches): ValidatorState, its loading with
every field checked for shape, and the pure state change of a step.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from validator.adapters.files import atomic_write_json, keep_bad_copy, load_or_default
from validator.core.entries import FetchRecord
from validator.core.selection import SelectionError, SelectionState

log = logging.getLogger(__name__)


@dataclass
class ValidatorState:
    """What survives a restart, besides the eval caches."""

    step: int = 0
    ema: list[float] = field(default_factory=list)  # live's self.weights (256 entries)
    last_weights_block: int | None = None
    last_weights_at: float | None = None  # wall clock of the last successful set
    selection: dict = field(default_factory=dict)  # SelectionState.to_json(): pools, pending, held, visits
    records: dict[str, dict] = field(default_factory=dict)  # hotkey -> FetchRecord fields
    uid_hotkeys: dict[str, str] = field(default_factory=dict)  # uid -> hotkey at the last step

    @classmethod
    def load(cls, path: Path) -> "ValidatorState":
        """The saved state; a field with a value of the wrong shape (a hand-edited file) falls
        back to its default, with a warning and a `.bad` copy of the file, so it can never
        crash a later step."""
        data = load_or_default(path, None)
        if data is None:
            return cls()
        if not isinstance(data, dict):
            log.warning("state file %s is not a JSON object: starting fresh (%s)", path, keep_bad_copy(path))
            return cls()
        kept, dropped = {}, []
        for name in cls.__dataclass_fields__:
            if name not in data:
                continue
            value = _clean_state_field(name, data[name])
            if value is _BAD:
                dropped.append(name)
            else:
                kept[name] = value
                if name == "records" and len(value) != len(data[name]):
                    dropped.append(f"records of {len(data[name]) - len(value)} hotkey(s)")
        if dropped:
            log.warning("state file %s: unusable %s, using defaults for them (%s)", path, ", ".join(dropped),
                        keep_bad_copy(path))
        return cls(**kept)

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    def fetch_records(self) -> dict[str, FetchRecord]:
        """The saved fetch records. "copy" was a permanent failure in states saved before the
        live rules: a copy is scored now."""
        return {hk: FetchRecord(**r) for hk, r in self.records.items() if r.get("reason") != "copy"}

    def with_hotkeys(self, ema: list[float], uid_hotkeys: dict[str, str]) -> "ValidatorState":
        """This state after the metagraph's hotkey changes (select.hotkey_changes)."""
        return replace(self, ema=list(ema), uid_hotkeys=dict(uid_hotkeys))

    def advance(self, *, records: dict[str, FetchRecord], selection: SelectionState, ema: list[float] | None,
                weights_set_at: tuple[int, float] | None) -> "ValidatorState":
        """The state after a step: its fetch records and selection, the new moving average
        (None: kept, e.g. a step stopped mid-way or with no weight), the (block, wall clock)
        of a successful weight set (None: none), and one more step. Pure: `self` is unchanged."""
        block, at = (self.last_weights_block, self.last_weights_at) if weights_set_at is None else weights_set_at
        return replace(self, step=self.step + 1, records={hk: asdict(r) for hk, r in records.items()},
                       selection=selection.to_json(), ema=list(self.ema) if ema is None else list(ema),
                       last_weights_block=block, last_weights_at=at)


_BAD = object()
_RECORD_TYPES = {"commitment": (str,), "reason": (str, type(None)), "detail": (str,), "attempts": (int,),
                 "retry_at": (int, float, type(None)), "path": (str, type(None)), "content_hash": (str, type(None))}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _clean_state_field(name: str, v: Any) -> Any:
    """A saved ValidatorState field checked for shape: the value, or _BAD. `records` keeps its
    well-formed entries only."""
    if name == "step":
        return v if _is_int(v) and v >= 0 else _BAD
    if name == "last_weights_block":
        return v if v is None or (_is_int(v) and v >= 0) else _BAD
    if name == "last_weights_at":
        return v if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)) \
            else _BAD
    if name == "ema":
        ok = isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                         and np.isfinite(x) and x >= 0 for x in v)
        return [float(x) for x in v] if ok else _BAD
    if name == "selection":
        try:
            SelectionState.from_json(v)
        except SelectionError:
            return _BAD
        return v
    if name == "uid_hotkeys":
        return v if isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()) \
            else _BAD
    if name == "records":
        if not isinstance(v, dict):
            return _BAD
        return {hk: r for hk, r in v.items()
                if isinstance(r, dict) and "commitment" in r and set(r) <= set(_RECORD_TYPES)
                and all(isinstance(x, _RECORD_TYPES[k]) and not isinstance(x, bool) for k, x in r.items())}
    return _BAD
