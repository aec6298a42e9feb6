"""The sample database: the texts a step scores, filled and extended from a sample source as
live (`min_samples` at once, then `extend_samples` per interval, never past `max_samples`).

Held in memory; `validator.adapters.evalcache.EvalCache` persists it beside the losses.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import constants

log = logging.getLogger(__name__)


# --- the sample database -------------------------------------------------------------------


@dataclass
class Refresh:
    added: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


class SampleDB:
    """sample_id -> (text, time added or last re-added), oldest first. Filled up to
    `min_samples` at once, then extended by `extend_samples` once more than
    `extend_interval` seconds have passed since the last fill (live: 500 every 4 h), capped
    at `max_samples` by dropping the oldest (the evaluation slowly moves onto fresh text).
    The four numbers are competitions.json's `db_*` keys: see sample_db_settings()."""

    def __init__(self, min_samples: int = constants.DB_MIN_SAMPLES,
                 max_samples: int = constants.DB_MAX_SAMPLES,
                 extend_samples: int = constants.DB_EXTEND_SAMPLES,
                 extend_interval: float = constants.DB_EXTEND_INTERVAL_S):
        self._items: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.changes = 0  # bumped on every add/drop/load: EvalCache rewrites the texts only then
        self.last_extend: float | None = None
        self.min_samples, self.max_samples = min_samples, max_samples
        self.extend_samples, self.extend_interval = extend_samples, extend_interval
        self._check()

    def _check(self) -> None:
        counts = {"min_samples": self.min_samples, "max_samples": self.max_samples,
                  "extend_samples": self.extend_samples}
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"SampleDB: {name}={value!r} must be an integer")
        if not 0 < self.min_samples <= self.max_samples:
            raise ValueError(f"SampleDB: need 0 < min_samples ({self.min_samples}) <= max_samples ({self.max_samples})")
        if self.extend_samples < 0:
            raise ValueError(f"SampleDB: extend_samples={self.extend_samples} must be >= 0")
        interval = self.extend_interval
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 <= interval < math.inf:
            raise ValueError(f"SampleDB: extend_interval={interval!r} must be a finite number of seconds >= 0")

    def configure(self, min_samples: int | None = None, max_samples: int | None = None,
                  extend_samples: int | None = None, extend_interval: float | None = None) -> Refresh:
        """Take new sizes (None keeps one), e.g. after competitions.json changed them. A
        smaller cap drops the oldest samples at once; bad values raise ValueError and change
        nothing."""
        old = (self.min_samples, self.max_samples, self.extend_samples, self.extend_interval)
        new = tuple(o if v is None else v for o, v in zip(old, (min_samples, max_samples, extend_samples,
                                                                  extend_interval)))
        self.min_samples, self.max_samples, self.extend_samples, self.extend_interval = new
        try:
            self._check()
        except ValueError:
            self.min_samples, self.max_samples, self.extend_samples, self.extend_interval = old
            raise
        return Refresh(dropped=self._trim())

    def _trim(self) -> list[str]:
        dropped = []
        while len(self._items) > self.max_samples:
            dropped.append(self._items.popitem(last=False)[0])
        if dropped:
            self.changes += 1
        return dropped

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._items

    def ids(self) -> list[str]:
        return list(self._items)

    def text(self, sample_id: str) -> str:
        try:
            return self._items[sample_id][0]
        except KeyError:
            raise KeyError(f"sample {sample_id!r} is not in the sample database") from None

    def texts(self, ids: Iterable[str]) -> list[str]:
        return [self.text(i) for i in ids]

    def wanted(self, now: float) -> int:
        """How many samples a refresh at `now` asks the source for (never more than the cap
        holds: add() refuses a bigger batch). Live extends when `now - last > interval`,
        strictly: at exactly the interval nothing is asked yet."""
        if len(self) < self.min_samples:
            return self.min_samples - len(self)
        if self.last_extend is None or now - self.last_extend > self.extend_interval:
            return min(self.extend_samples, self.max_samples)
        return 0

    @staticmethod
    def usable_rows(samples: Iterable[Any]) -> dict[str, str]:
        """sample id -> text of the (id, non-empty text) rows, in order, the first text of an id
        repeated in the batch: what add() stores. A source may misbehave: other rows are
        counted and skipped."""
        rows: dict[str, str] = {}
        garbage = 0
        for item in samples:
            sid, text = item if isinstance(item, (tuple, list)) and len(item) == 2 else (None, None)
            if not isinstance(sid, str) or not sid or not isinstance(text, str) or not text.strip():
                garbage += 1
                continue
            rows.setdefault(sid, text)
        if garbage:
            log.warning("sample db: skipped %d rows that were not (sample id, non-empty text)", garbage)
        return rows

    def add(self, samples: Iterable[tuple[str, str]], now: float) -> Refresh:
        """Add samples, then drop the oldest beyond the cap. A known id keeps its text (an id
        names one text forever) but becomes newest, like a new one: what a caller adds is
        what it is about to use, so it must never be what the cap drops. ValueError (and
        nothing changed) when the batch alone exceeds the cap."""
        batch = self.usable_rows(samples)
        if len(batch) > self.max_samples:
            raise ValueError(f"sample db: {len(batch)} samples at once exceed the cap of {self.max_samples}")
        result = Refresh()
        for sid, text in batch.items():
            if sid in self._items:
                # touch: keep the text, renew the age
                self._items[sid] = (self._items[sid][0], float(now))
                self._items.move_to_end(sid)
            else:
                self._items[sid] = (text, float(now))
                result.added.append(sid)
        # the batch is now the newest len(batch) <= max_samples items: trimming cannot reach it
        result.dropped = self._trim()
        if batch:  # order and ages are saved too, not only the set of ids
            self.changes += 1
        return result

    def refresh(self, source: Any, seed: int, now: float) -> Refresh:
        """Pull what `wanted(now)` says from a SampleSource."""
        k = self.wanted(now)
        if k <= 0:
            return Refresh()
        # [:k]: a source that returns more than asked must not push the batch past the cap
        result = self.add(list(source.sample(seed, k))[:k], now)
        self.last_extend = float(now)
        if len(result.added) < k:
            log.info("sample db: asked %s for %d samples, %d were new", getattr(source, "name", source),
                     k, len(result.added))
        return result

    def to_json(self) -> dict:
        return {"last_extend": self.last_extend,
                "samples": [[sid, text, added] for sid, (text, added) in self._items.items()]}

    def load_json(self, data: dict) -> None:
        self._items = OrderedDict((str(sid), (str(text), float(added))) for sid, text, added in data["samples"])
        self.changes += 1
        self.last_extend = None if data["last_extend"] is None else float(data["last_extend"])


# competitions.json's validator-wide keys (its `default` block) -> SampleDB arguments
DB_SETTING_KEYS = {"db_min_samples": "min_samples", "db_max_samples": "max_samples",
                   "db_extend_samples": "extend_samples", "db_extend_interval": "extend_interval"}


def sample_db_settings(config: Mapping[str, Any]) -> dict[str, int | float]:
    """The sample database's sizes from competitions.json's `db_min_samples`,
    `db_max_samples`, `db_extend_samples` and `db_extend_interval` (seconds, as live), the
    constants where a key is absent: keyword arguments for SampleDB, EvalCache.load and
    EvalCache.configure. Integral floats count as integers (live reads JSON leniently);
    anything else wrong raises ValueError naming the key."""
    defaults = {"min_samples": constants.DB_MIN_SAMPLES, "max_samples": constants.DB_MAX_SAMPLES,
                "extend_samples": constants.DB_EXTEND_SAMPLES, "extend_interval": constants.DB_EXTEND_INTERVAL_S}
    out: dict[str, int | float] = {}
    for key, arg in DB_SETTING_KEYS.items():
        value = config.get(key, defaults[arg])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{key} {value!r}: must be a number")
        if arg != "extend_interval":
            if not float(value).is_integer():
                raise ValueError(f"{key} {value!r}: must be a whole number of samples")
            value = int(value)
        minimum = 1 if arg in ("min_samples", "max_samples") else 0
        if value < minimum:
            raise ValueError(f"{key} {value!r}: must be >= {minimum}")
        out[arg] = value
    if out["min_samples"] > out["max_samples"]:
        raise ValueError(f"db_min_samples {out['min_samples']} exceeds db_max_samples {out['max_samples']}")
    return out
