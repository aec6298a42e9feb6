"""The token cache: a sample's token ids under one tokenizer and one competition's caps, kept
across models and steps in one .npz file (no pickle).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import constants
from validator.core.competitions import Competition
from validator.scoring.tokens import TokenizedSample

log = logging.getLogger(__name__)


class TokenCache:
    """(tokenizer key, tokenization params, sample id) -> token ids, across models and steps.

    The tokenizer key is validator.scoring.tokens' TokenizerPlan.key: the rules version, the role
    (model / competition), the tokenizer files' hashes and the class 4.44 builds; the params
    are cap_sample_len and max_sequence_len. Together: everything the ids depend on.

    A short digest of the text is stored with each entry, so a sample id that now names a
    different text is a miss rather than a wrong answer. Saved as one .npz: all ids in one
    integer array (int32 when every id fits, else int64), the index (key -> digest, offset,
    length, failure, capped) as JSON bytes; read with allow_pickle=False, written atomically
    and only when something was added; the oldest entries go beyond `max_entries`.

    In memory the ids stay numpy (views into the loaded array, or the array `put` made):
    loading does Python work per entry, not per token, and an entry becomes a Python list
    only when `get` returns it.
    """

    VERSION = 2  # the layout is unchanged since version 2; only the ids dtype may now be int64

    def __init__(self, max_entries: int = constants.TOKEN_CACHE_MAX_ENTRIES) -> None:
        # key -> (text digest, ids as a 1-D integer array or None, failure, capped)
        self._entries: dict[str, tuple[str, Any, str | None, bool]] = {}
        self.max_entries = max_entries
        self.dirty = False
        self._added: set[str] = set()  # keys put since load: what `added` hands the parent

    @staticmethod
    def _key(tokenizer_key: str, comp: Competition, sample_id: str) -> str:
        return f"{tokenizer_key}|{comp.cap_sample_len}|{comp.max_sequence_len}|{sample_id}"

    @staticmethod
    def _digest(text: str) -> str:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tokenizer_key: str, comp: Competition, sample_id: str, text: str) -> TokenizedSample | None:
        entry = self._entries.get(self._key(tokenizer_key, comp, sample_id))
        if entry is None or entry[0] != self._digest(text):
            return None
        ids = entry[1].tolist() if entry[1] is not None else None  # a fresh list of Python ints
        return TokenizedSample(sample_id, ids, entry[2], entry[3])

    def put(self, tokenizer_key: str, comp: Competition, sample_id: str, text: str, ts: TokenizedSample) -> None:
        key = self._key(tokenizer_key, comp, sample_id)
        ids = None if ts.ids is None else _token_array(ts.ids)
        self._entries.pop(key, None)  # re-inserted last: the oldest entries are the first to go
        self._entries[key] = (self._digest(text), ids, ts.failure, ts.capped)
        self._added.add(key)
        self._trim()
        self.dirty = True

    def _trim(self) -> None:
        while len(self._entries) > self.max_entries:
            self._added.discard(old := next(iter(self._entries)))
            self._entries.pop(old)

    def added(self) -> "TokenCache":
        """Only the entries put since this cache was made or loaded (a job's share, for `merge`)."""
        new = TokenCache(self.max_entries)
        new._entries = {k: v for k, v in self._entries.items() if k in self._added}
        new.dirty = bool(new._entries)
        return new

    def merge(self, other: "TokenCache") -> None:
        """Take every entry of `other` (newest last, so the oldest of ours go first beyond max_entries)."""
        for k, v in other._entries.items():
            self._entries.pop(k, None)
            self._entries[k] = v
        if other._entries:
            self._trim()
            self.dirty = True

    def save(self, path: str | os.PathLike, *, write_bytes: Callable[[Path, bytes], None] | None = None) -> None:
        """Write the cache atomically (write_bytes: state.atomic_write_bytes unless given); OSError
        (disk full, read-only dir) propagates: see save_token_cache."""
        import io

        import numpy as np

        from validator.adapters.files import atomic_write_bytes

        index, arrays, offset = {}, [], 0
        for k, (digest, ids, failure, capped) in self._entries.items():
            n = -1 if ids is None else len(ids)
            index[k] = [digest, offset, n, failure, capped]
            if n > 0:
                arrays.append(ids)
                offset += n
        if not arrays:
            flat = np.zeros(0, np.int32)
        elif all(a.dtype == np.int32 for a in arrays):
            flat = np.concatenate(arrays)
        else:  # an int64 entry (a loaded int64 file, or a put beyond int32): int32 again if all fit
            flat = np.concatenate(arrays, dtype=np.int64)
            if flat.max() <= _INT32_MAX:
                flat = flat.astype(np.int32)
        buf = io.BytesIO()
        # Uncompressed: savez_compressed makes the file 1.5-2.5x smaller but the save ~100x
        # slower (13 s vs 0.1 s for 20M ids) and the load ~10x (benchmarks/bench_token_cache.py).
        np.savez(buf, ids=flat,
                 index=np.frombuffer(json.dumps({"version": self.VERSION, "entries": index}).encode(), np.uint8))
        (write_bytes or atomic_write_bytes)(Path(path), buf.getvalue())
        self.dirty = False

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TokenCache":
        """Load a saved cache; a missing file is an empty cache, a corrupt one is an error."""
        import numpy as np

        cache = cls()
        p = Path(path)
        if not p.exists():
            return cache
        try:
            with np.load(p, allow_pickle=False) as f:  # reading a member checks its CRC
                ids, data = f["ids"], json.loads(f["index"].tobytes())
            if data.get("version") != cls.VERSION:
                log.warning("token cache %s has version %r, starting empty", p, data.get("version"))
                return cache
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype} of shape {ids.shape}")
            if ids.size and ids.min() < 0:
                raise ValueError("negative token id")
            ids.flags.writeable = False  # entries are views into it
            total = len(ids)
            entries = cache._entries
            for k, (digest, offset, n, failure, capped) in data["entries"].items():
                if n < 0:
                    entries[k] = (digest, None, failure, bool(capped))
                elif 0 <= offset and offset + n <= total:
                    entries[k] = (digest, ids[offset:offset + n], failure, bool(capped))
                else:
                    raise ValueError(f"entry {k!r} ({offset}, {n}) lies outside the {total} ids")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as e:
            # (a truncated or damaged .npz is a BadZipFile, which is none of the others)
            raise ValueError(f"token cache {p} is not a valid cache file: {e}") from e
        return cache


class TokenCacheFile:
    """The token cache file of a scorer, with one writer: the parent. Each job reads the file as it is
    and writes only what it added to a file of its own (a delta); `merge` folds a delta in and saves,
    so jobs on several devices never overwrite each other's entries. The merged cache stays in memory.
    Deltas a killed validator left next to the file are folded in at the first merge: nothing is lost."""

    DELTA_GLOB = "tokens-new-*.npz"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._cache: TokenCache | None = None

    def delta_path(self) -> Path:
        """A fresh path for one job's new entries, beside the file."""
        import uuid

        return self.path.parent / f"tokens-new-{uuid.uuid4().hex}.npz"

    def merge(self, delta: str | os.PathLike) -> list[str]:
        """Fold a job's delta (if it wrote one) into the file; notes for the operator when something
        could not be read or saved (never the model's fault)."""
        notes: list[str] = []
        todo = [Path(delta)] if Path(delta).exists() else []
        if self._cache is None:
            todo = sorted(set(self.path.parent.glob(self.DELTA_GLOB)) - set(todo)) + todo
            self._cache, notes = load_or_rebuild(self.path)
        for d in todo:
            try:
                self._cache.merge(TokenCache.load(d))
            except ValueError as e:
                notes.append(f"token cache: a job's new entries were unreadable: {e}")
            finally:
                d.unlink(missing_ok=True)
        if self._cache.dirty:
            note = save_token_cache(self._cache, self.path)
            if note:
                notes.append(note)
        return notes


def load_or_rebuild(path: str | os.PathLike) -> tuple[TokenCache, list[str]]:
    """The cache at `path`, or an empty one and a note when it is damaged (a damaged cache must not
    fail every model: it is rebuilt from what the jobs add)."""
    try:
        return TokenCache.load(path), []
    except ValueError as e:
        log.warning("%s; starting an empty token cache", e)
        return TokenCache(), [f"token cache rebuilt: {e}"]


def save_token_cache(cache: TokenCache, path: str | os.PathLike, *,
                     write_bytes: Callable[[Path, bytes], None] | None = None) -> str | None:
    """Save the cache; None when saved, else a note for the operator. Disk full (ENOSPC, EDQUOT)
    or any other OSError costs only the cache (the next visit tokenizes again), never the model."""
    try:
        cache.save(path, write_bytes=write_bytes)
    except OSError as e:
        what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else type(e).__name__
        log.warning("token cache %s not saved (%s): %s", path, what, e)
        return f"token cache not saved ({what}): {e}"
    return None


_INT32_MAX = 2**31 - 1


def _token_array(ids: Sequence[int]):
    """A TokenizedSample's ids as a 1-D array: int32 when every id fits, else int64."""
    import numpy as np

    arr = np.array(ids, dtype=np.int64)  # a copy: later changes to the caller's list don't leak in
    if arr.ndim != 1:
        raise ValueError(f"token ids must be a flat sequence, got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ValueError("token ids must be non-negative")
    return arr.astype(np.int32) if not arr.size or arr.max() <= _INT32_MAX else arr
