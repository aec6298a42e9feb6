"""What was already computed: the sample database, the loss matrix, first-seen content.

Losses are keyed by model *content* (the directory hash), not by hotkey or commit, so a
model re-committed or copied is never scored twice, and by a stable sample id, so a
sample scored in an earlier step is not scored again. A few cached losses are recomputed
each step (rechecks); a mismatch means the cache, or the model, cannot be trusted and the
model's row is dropped.
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, overload

import numpy as np

import constants
from validator.adapters.files import StateError, atomic_write_json, read_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _tiebreak(seed: int, *parts: str) -> bytes:
    """A seeded, order-independent sort key: validators with the same seed agree even when
    their databases were filled in a different order."""
    return hashlib.sha256("\x00".join((str(seed),) + parts).encode()).digest()


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

    def samples(self, ids: Iterable[str]) -> list[tuple[str, str]]:
        """(sample_id, text) pairs, the form scoring takes."""
        return [(i, self.text(i)) for i in ids]

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


# --- the loss matrix ----------------------------------------------------------------------


def _enc(x: float) -> float | str:
    """JSON has no inf/nan: spell them out."""
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _dec(x: Any) -> float:
    if isinstance(x, str):
        if x not in ("inf", "-inf", "nan"):
            raise ValueError(f"bad loss value {x!r}")
        return float(x)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"bad loss value {x!r}")
    return float(x)


def _same_loss(a: float, b: float, rel_tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rel_tol * max(abs(a), abs(b)) or a == b


class LossCache:
    """model key (content hash) -> sample id -> (summed loss, n_tokens). inf = the sample
    failed for that model (e.g. tokenization); a present entry, whatever its value, is
    computed and never asked for again."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, tuple[float, int]]] = {}

    def models(self) -> list[str]:
        return list(self._rows)

    def cached(self, model_key: str) -> list[str]:
        return list(self._rows.get(model_key, {}))

    def get(self, model_key: str, sample_id: str) -> float | None:
        entry = self._rows.get(model_key, {}).get(sample_id)
        return None if entry is None else entry[0]

    @overload
    def missing(self, model_keys: str, sample_ids: Iterable[str]) -> list[str]: ...

    @overload
    def missing(self, model_keys: Iterable[str], sample_ids: Iterable[str]) -> dict[str, list[str]]: ...

    def missing(self, model_keys, sample_ids):
        """For each model, the sample ids (in the given order) it has no loss for.
        One model key (a str) gives that model's list directly."""
        sample_ids = list(sample_ids)
        if isinstance(model_keys, str):
            return self.missing([model_keys], sample_ids)[model_keys]
        out = {}
        for key in model_keys:
            row = self._rows.get(key, {})
            out[key] = [s for s in sample_ids if s not in row]
        return out

    def put(self, model_key: str, losses: dict[str, float], n_tokens: dict[str, int] | None = None) -> None:
        n_tokens = n_tokens or {}
        row = self._rows.setdefault(model_key, {})
        for sid, loss in losses.items():
            if isinstance(loss, bool) or not isinstance(loss, (int, float, np.floating, np.integer)):
                raise ValueError(f"loss of model {model_key} on sample {sid}: {loss!r} is not a number")
            row[sid] = (float(loss), int(n_tokens.get(sid, 0)))

    def get_matrix(self, model_keys: list[str], sample_ids: list[str]) -> np.ndarray:
        """[M, S] float64 losses, nan where missing."""
        m = np.full((len(model_keys), len(sample_ids)), np.nan)
        for i, key in enumerate(model_keys):
            row = self._rows.get(key)
            if row:
                for j, sid in enumerate(sample_ids):
                    entry = row.get(sid)
                    if entry is not None:
                        m[i, j] = entry[0]
        return m

    def get_ntokens(self, model_keys: list[str], sample_ids: list[str]) -> np.ndarray:
        """[M, S] int64 token counts, -1 where missing."""
        m = np.full((len(model_keys), len(sample_ids)), -1, dtype=np.int64)
        for i, key in enumerate(model_keys):
            row = self._rows.get(key, {})
            for j, sid in enumerate(sample_ids):
                if sid in row:
                    m[i, j] = row[sid][1]
        return m

    def reset_model(self, model_key: str) -> None:
        self._rows.pop(model_key, None)

    def drop_samples(self, sample_ids: Iterable[str]) -> None:
        """Forget samples that left the database."""
        gone = set(sample_ids)
        if gone:
            for row in self._rows.values():
                for sid in gone & row.keys():
                    del row[sid]

    def keep_models(self, model_keys: Iterable[str]) -> list[str]:
        """Forget every model not in `model_keys`; returns the dropped keys."""
        keep = set(model_keys)
        dropped = [k for k in self._rows if k not in keep]
        for k in dropped:
            del self._rows[k]
        return dropped

    def to_json(self) -> dict:
        return {key: {sid: [_enc(loss), ntok] for sid, (loss, ntok) in row.items()}
                for key, row in self._rows.items()}

    def load_json(self, data: dict) -> None:
        self._rows = {str(key): {str(sid): (_dec(v[0]), int(v[1])) for sid, v in row.items()}
                      for key, row in data.items()}


def pick_eval_samples(db: SampleDB, cache: LossCache, model_keys: list[str], n: int, seed: int) -> list[str]:
    """n sample ids of the database, those missing for the most models in play first (the
    computed part of the matrix grows until the database is covered, then stays free);
    ties are broken by a seeded hash, so the choice does not depend on insertion order."""
    ids = db.ids()
    rows = [set(cache.cached(k)) for k in model_keys]
    n_missing = {sid: sum(sid not in r for r in rows) for sid in ids}
    ids.sort(key=lambda sid: (-n_missing[sid], _tiebreak(seed, sid)))
    return ids[:max(n, 0)]


def n_rechecks(n_cached: int) -> int:
    return min(math.ceil(constants.RECHECK_FRACTION * n_cached), constants.RECHECK_MAX)


def pick_rechecks(cache: LossCache, model_key: str, sample_ids: Iterable[str], seed: int) -> list[str]:
    """Of `sample_ids`, the few already cached for the model that are recomputed anyway:
    min(RECHECK_FRACTION of them, RECHECK_MAX), at least one if any is cached."""
    cached = [s for s in dict.fromkeys(sample_ids) if cache.get(model_key, s) is not None]
    cached.sort(key=lambda sid: _tiebreak(seed, model_key, sid))
    return cached[:n_rechecks(len(cached))]


def verify_rechecks(cache: LossCache, model_key: str, recomputed: dict[str, float],
                    rel_tol: float = constants.RECHECK_TOLERANCE) -> bool:
    """Compare recomputed losses with the cached ones. On any mismatch the model's row is
    reset (every loss of it is recomputed next time) and False is returned."""
    for sid, new in recomputed.items():
        old = cache.get(model_key, sid)
        if old is None:
            continue
        if not _same_loss(old, float(new), rel_tol):
            log.warning("recheck failed for model %s on sample %s: cached %r, recomputed %r; "
                        "dropping its %d cached losses", model_key, sid, old, new, len(cache.cached(model_key)))
            cache.reset_model(model_key)
            return False
    return True


# --- first seen content ---------------------------------------------------------------------


class FirstSeen:
    """content hash -> (hotkey, block) of its earliest commitment: a later commitment of
    the same content is a copy and earns nothing."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, int]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def get(self, content_hash: str) -> tuple[str, int] | None:
        return self._seen.get(content_hash)

    def observe(self, content_hash: str, hotkey: str, block: int) -> str:
        """Record a commitment; returns the hotkey that owns the content (the earliest block;
        on the same block the smaller hotkey, so every validator picks the same one)."""
        block = int(block)
        prev = self._seen.get(content_hash)
        if prev is None or (block, hotkey) < (prev[1], prev[0]):
            self._seen[content_hash] = (hotkey, block)
        return self._seen[content_hash][0]

    def to_json(self) -> dict:
        return {h: [hk, b] for h, (hk, b) in self._seen.items()}

    def load_json(self, data: dict) -> None:
        self._seen = {str(h): (str(hk), int(b)) for h, (hk, b) in data.items()}


# --- all of it, persisted --------------------------------------------------------------------


def cache_file(state_dir: str | Path, dataset: str) -> Path:
    """Where a state dir keeps the evaluation cache of one dataset (one file per dataset:
    sample ids of different sources must not mix)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dataset)[-80:]
    return Path(state_dir) / "evalcache" / f"{safe}.json"


class EvalCache:
    """SampleDB + LossCache + FirstSeen, saved to one JSON file atomically."""

    def __init__(self, db: SampleDB | None = None, losses: LossCache | None = None,
                 first_seen: FirstSeen | None = None):
        # `is None`, not `or`: an empty SampleDB is falsy (len 0)
        self.db = SampleDB() if db is None else db
        self.losses = LossCache() if losses is None else losses
        self.first_seen = FirstSeen() if first_seen is None else first_seen

    def refresh(self, source: Any, seed: int, now: float) -> Refresh:
        """Refresh the sample database and forget the losses of samples that left it."""
        result = self.db.refresh(source, seed, now)
        self.losses.drop_samples(result.dropped)
        return result

    def configure(self, **db_settings: Any) -> Refresh:
        """New sample database sizes (SampleDB.configure's arguments, e.g. from
        sample_db_settings()); the losses of samples a smaller cap drops go with them."""
        result = self.db.configure(**db_settings)
        self.losses.drop_samples(result.dropped)
        return result

    def to_json(self) -> dict:
        """Everything in one document (the texts included)."""
        return {**self._index_json(), "db": self.db.to_json()}

    def _index_json(self) -> dict:
        # losses of samples that left the db are useless (they can never be picked again);
        # a caller that refreshed db directly, not through refresh(), left them behind
        known = set(self.db.ids())
        self.losses.drop_samples({s for k in self.losses.models() for s in self.losses.cached(k)} - known)
        return {"version": FORMAT_VERSION, "losses": self.losses.to_json(), "first_seen": self.first_seen.to_json()}

    @staticmethod
    def samples_path(path: str | Path) -> Path:
        path = Path(path)
        return path.with_name(path.stem + ".samples" + path.suffix)

    def save(self, path: str | Path) -> None:
        """Losses and first-seen to `path`; the sample texts (tens of MB at 20k FineWeb
        samples) to a sibling file, rewritten only when the database changed. The texts go
        first: a crash between the two writes leaves a newer database beside older losses,
        and loading drops the losses of samples no longer in it."""
        if getattr(self, "_saved_changes", None) != (str(path), self.db.changes) \
                or not self.samples_path(path).exists():
            atomic_write_json(self.samples_path(path), self.db.to_json())
            self._saved_changes = (str(path), self.db.changes)
        atomic_write_json(path, self._index_json())

    @classmethod
    def load(cls, path: str | Path, **db_kwargs: Any) -> "EvalCache":
        """Load a saved cache; a missing file gives an empty one, a corrupt one raises
        StateError naming the file (the caller decides whether to start over)."""
        data = read_json(path, None)
        cache = cls(SampleDB(**db_kwargs))
        if data is None:
            return cache
        try:
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {data.get('version')!r}, expected {FORMAT_VERSION}")
            db = data["db"] if "db" in data else read_json(cls.samples_path(path), {"samples": [], "last_extend": None})
            cache.db.load_json(db)
            cache.losses.load_json(data["losses"])
            cache.first_seen.load_json(data["first_seen"])
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise StateError(path, f"not an evaluation cache: {type(e).__name__}: {e}") from e
        cache._saved_changes = None
        cache.db.add([], now=0.0)  # trims to this run's max_samples, oldest first
        # losses of samples no longer in the db (trimmed just now, or a hand-edited file)
        known = set(cache.db.ids())
        cache.losses.drop_samples({s for k in cache.losses.models() for s in cache.losses.cached(k)} - known)
        return cache
