"""What was already computed: the loss matrix and first-seen content, saved with the sample
database (validator.adapters.sampledb) in one file.

Losses are keyed by model *content* (the directory hash), not by hotkey or commit, so a
model re-committed or copied is never scored twice, and by a stable sample id, so a
sample scored in an earlier step is not scored again. A few cached losses are recomputed
each step (rechecks); a mismatch means the cache, or the model, cannot be trusted and the
model's row is dropped. Which samples are scored and rechecked is `validator.core.rechecks`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, overload

import numpy as np

from validator.adapters.files import StateError, atomic_write_json, read_json
from validator.adapters.sampledb import Refresh, SampleDB
from validator.core.scores import encode_float

FORMAT_VERSION = 1


# --- the loss matrix ----------------------------------------------------------------------


def _dec(x: Any) -> float:
    """`encode_float`'s inverse, strict: a cache file with anything else is damaged."""
    if isinstance(x, str):
        if x not in ("inf", "-inf", "nan"):
            raise ValueError(f"bad loss value {x!r}")
        return float(x)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"bad loss value {x!r}")
    return float(x)


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
        return {key: {sid: [encode_float(loss), ntok] for sid, (loss, ntok) in row.items()}
                for key, row in self._rows.items()}

    def load_json(self, data: dict) -> None:
        self._rows = {str(key): {str(sid): (_dec(v[0]), int(v[1])) for sid, v in row.items()}
                      for key, row in data.items()}


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
