"""Sample sources: where evaluation text comes from.

Every source answers `sample(seed, n) -> [(sample_id, text)]`. The same seed gives the
same list (validators seeded from the same block hash agree on what they score), and a
sample id names the same text forever, so the loss cache can key on it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote

import numpy as np

import constants

log = logging.getLogger(__name__)

T = TypeVar("T")

FINEWEB_NAMES = ("fineweb2", "fineweb-edu", "fineweb-edu-score-2")
LOCAL_SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".txt": "text"}


class DataError(Exception):
    """A source cannot deliver samples (missing shard, unreadable file, hub unreachable)."""


@runtime_checkable
class SampleSource(Protocol):
    name: str

    def sample(self, seed: int, n: int) -> list[tuple[str, str]]: ...


def seed_from_block_hash(block_hash: str) -> int:
    """A 63-bit seed from a block hash, so every validator seeded at that block agrees."""
    if not isinstance(block_hash, str) or not block_hash.strip():
        raise ValueError(f"block hash {block_hash!r}: must be a non-empty string")
    text = block_hash.strip().lower()
    text = text[2:] if text.startswith("0x") else text
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _usable(text: Any) -> bool:
    return isinstance(text, str) and bool(text.strip())


def _choose(rng: np.random.Generator, count: int, k: int) -> list[int]:
    """k distinct indices out of `count` (all of them, shuffled, when k >= count)."""
    k = min(k, count)
    if k <= 0:
        return []
    return [int(i) for i in rng.choice(count, size=k, replace=False)]


# --- local files ------------------------------------------------------------------------------


class LocalSource:
    """Parquet (`text` column), jsonl (`text` field) or plain text (blank-line separated
    documents) in a file or a directory tree. Garbage rows are skipped and counted."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"local dataset {self.path}: no such file or directory")
        self.name = f"local:{self.path}"
        self.skipped = 0  # rows that were not a non-empty string (or did not parse)
        self.skipped_files: list[str] = []  # files that could not be read at all
        self._docs: list[tuple[str, str]] | None = None

    def _files(self) -> list[tuple[str, Path, str]]:
        """(relative name, path, kind), in a stable order."""
        if self.path.is_file():
            kind = LOCAL_SUFFIXES.get(self.path.suffix.lower(), "text")
            return [(self.path.name, self.path, kind)]
        out = []
        for p in sorted(self.path.rglob("*")):
            rel = p.relative_to(self.path)
            if not p.is_file() or any(part.startswith(".") for part in rel.parts):
                continue
            kind = LOCAL_SUFFIXES.get(p.suffix.lower())
            if kind is not None:
                out.append((rel.as_posix(), p, kind))
        return out

    def _read_file(self, p: Path, kind: str) -> list[tuple[int, Any]]:
        """(row, value) pairs; values are checked by the caller."""
        if kind == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(p)
            if "text" not in pf.schema_arrow.names:
                raise DataError(f"no 'text' column (columns: {pf.schema_arrow.names})")
            return list(enumerate(pf.read(columns=["text"]).column("text").to_pylist()))
        raw = p.read_text(encoding="utf-8", errors="replace")
        if kind == "jsonl":
            rows = []
            for i, line in enumerate(raw.splitlines()):
                if not line.strip():
                    continue  # blank lines are layout, not rows
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    rows.append((i, None))
                    continue
                rows.append((i, obj.get("text") if isinstance(obj, dict) else None))
            return rows
        blocks = [b.strip() for b in raw.replace("\r\n", "\n").split("\n\n")]
        return list(enumerate(b for b in blocks if b))

    def documents(self) -> list[tuple[str, str]]:
        """Every usable (sample_id, text), read once."""
        if self._docs is not None:
            return self._docs
        docs: list[tuple[str, str]] = []
        for rel, p, kind in self._files():
            try:
                rows = self._read_file(p, kind)
            except Exception as e:  # one bad file must not take the others down
                log.warning("local dataset: skipping %s: %s", p, e)
                self.skipped_files.append(rel)
                continue
            for row, value in rows:
                if _usable(value):
                    docs.append((f"{rel}/{row}", value))
                else:
                    self.skipped += 1
        if self.skipped:
            log.info("local dataset %s: skipped %d empty or unparsable rows", self.path, self.skipped)
        self._docs = docs
        return docs

    def sample(self, seed: int, n: int) -> list[tuple[str, str]]:
        docs = self.documents()
        if not docs:
            raise DataError(f"local dataset {self.path}: no usable documents "
                            f"({self.skipped} rows skipped, {len(self.skipped_files)} files unreadable)")
        if n > len(docs):
            log.info("local dataset %s: asked for %d samples, only %d exist", self.path, n, len(docs))
        rng = np.random.default_rng(seed)
        return [docs[i] for i in _choose(rng, len(docs), n)]


# --- FineWeb-edu parquet shards on the hub ------------------------------------------------------

_SHARD_LISTS: dict[str, list[str]] = {}  # in-process cache: the shard list of a revision is fixed
_SHARD_LISTS_LOCK = threading.Lock()


def _with_timeout(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run fn in a daemon thread and give up after `timeout` seconds. The hub client has
    no per-call deadline covering a whole ranged read, so a stalled connection would
    otherwise hang the validator step; the abandoned thread dies with its socket."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    t = threading.Thread(target=run, name=f"data:{what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{what}: no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class FineWebSource:
    """Rows of FineWeb-edu-score-2 (`data/<dump>/<shard>.parquet`), picked by a seeded RNG.

    ranged=True reads only the `text` column of the row groups it needs, through an
    fsspec filesystem (huggingface_hub's HfFileSystem, or `fs` for a local fake);
    ranged=False downloads the whole shard first (for hubs that ignore HTTP Range).
    Sample id: `<dump>/<shard file>/<row index in the shard>`.
    """

    def __init__(self, repo: str = constants.FINEWEB_REPO, endpoint: str | None = None,
                 revision: str = "main", *, timeout: float = constants.FINEWEB_TIMEOUT_S,
                 retries: int = constants.FINEWEB_RETRIES,
                 backoff: float = constants.FINEWEB_RETRY_BACKOFF_S,
                 ranged: bool = True, rows_per_group: int = constants.FINEWEB_ROWS_PER_GROUP,
                 fs: Any = None, root: str | None = None, cache_dir: str | Path | None = None,
                 shard_list_cache: str | Path | None = None, token: str | bool | None = None):
        if retries < 1:
            raise ValueError(f"retries={retries}: need at least one attempt")
        if rows_per_group < 1:
            raise ValueError(f"rows_per_group={rows_per_group}: must be >= 1")
        self.repo, self.endpoint, self.revision = repo, endpoint, revision
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.ranged, self.rows_per_group = ranged, rows_per_group
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.shard_list_cache = Path(shard_list_cache) if shard_list_cache else None
        self.token = token
        self.name = f"fineweb:{repo}@{revision}"
        self.skipped = 0  # rows of chosen groups that were not usable text
        self._counts: dict[str, list[int]] = {}
        if fs is not None:
            if root is None:
                raise ValueError("FineWebSource: an injected filesystem needs `root` (the repo's folder)")
            self._fs, self._root = fs, root.rstrip("/")
        else:
            self._fs, self._root = None, f"datasets/{repo}@{quote(revision, safe='')}"

    # -- listing ---------------------------------------------------------------------------
    def _cache_key(self) -> str:
        where = f"fs:{self._root}" if self._fs is not None else (self.endpoint or "default")
        return f"{where}|{self.repo}@{self.revision}"

    def shards(self) -> list[str]:
        """Sorted `data/<dump>/<file>.parquet` paths at the revision (cached: listing a big
        repo is many paginated calls, and the files at a revision do not change)."""
        key = self._cache_key()
        with _SHARD_LISTS_LOCK:
            if key in _SHARD_LISTS:
                return _SHARD_LISTS[key]
        cached = self._read_list_cache(key)
        if cached is None:
            cached = self._retry(self._list_shards, f"list shards of {self.repo}@{self.revision}")
            if not cached:
                raise DataError(f"{self.repo}@{self.revision}: no parquet shards under data/<dump>/")
            self._write_list_cache(key, cached)
        with _SHARD_LISTS_LOCK:
            _SHARD_LISTS[key] = cached
        return cached

    def _list_shards(self) -> list[str]:
        if self._fs is not None:
            out = []
            for dump in self._fs.ls(f"{self._root}/data", detail=True):
                if dump.get("type") != "directory":
                    continue
                for f in self._fs.ls(dump["name"], detail=True):
                    name = f["name"].rstrip("/")
                    if f.get("type") == "file" and name.endswith(".parquet"):
                        out.append("data/" + "/".join(name.split("/")[-2:]))
            return sorted(out)
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        api = HfApi(endpoint=self.endpoint, token=self.token)
        entries = api.list_repo_tree(self.repo, path_in_repo="data", recursive=True,
                                     revision=self.revision, repo_type="dataset")
        return sorted(e.path for e in entries
                      if isinstance(e, RepoFile) and e.path.endswith(".parquet") and e.path.count("/") == 2)

    def _read_list_cache(self, key: str) -> list[str] | None:
        if self.shard_list_cache is None:
            return None
        from validator.state import load_or_default

        entry = load_or_default(self.shard_list_cache, {}).get(key)
        return list(entry) if isinstance(entry, list) and entry else None

    def _write_list_cache(self, key: str, shards: list[str]) -> None:
        if self.shard_list_cache is None:
            return
        from validator.state import atomic_write_json, load_or_default

        data = load_or_default(self.shard_list_cache, {})
        data = data if isinstance(data, dict) else {}
        data[key] = shards
        atomic_write_json(self.shard_list_cache, data)

    # -- reading ---------------------------------------------------------------------------
    def _retry(self, fn: Callable[[], T], what: str) -> T:
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                return _with_timeout(fn, self.timeout, what)
            except DataError:
                raise  # the data itself is wrong; asking again will not help
            except Exception as e:
                if attempt == self.retries:
                    raise DataError(f"{what}: failed after {attempt} attempts: {type(e).__name__}: {e}") from e
                log.warning("%s: attempt %d failed (%s: %s); retrying in %.1f s",
                            what, attempt, type(e).__name__, e, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _open_local_copy(self, shard: str) -> str:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(self.repo, shard, repo_type="dataset", revision=self.revision,
                               endpoint=self.endpoint, cache_dir=self.cache_dir, token=self.token,
                               etag_timeout=self.timeout)

    def _open(self, shard: str, use: Callable[[Any], T]) -> T:
        """Apply `use` to a pyarrow ParquetFile of the shard (ranged, or a downloaded copy)."""
        import pyarrow.parquet as pq

        if self._fs is None and not self.ranged:
            return use(pq.ParquetFile(self._open_local_copy(shard)))
        if self._fs is None:
            from huggingface_hub import HfFileSystem

            self._fs = HfFileSystem(endpoint=self.endpoint, token=self.token)
        with self._fs.open(f"{self._root}/{shard}", "rb") as f:
            return use(pq.ParquetFile(f))

    def _row_counts(self, shard: str) -> list[int]:
        """Rows per row group of a shard (cached: the footer of a file at a revision is fixed)."""
        if shard not in self._counts:
            def use(pf: Any) -> list[int]:
                if "text" not in pf.schema_arrow.names:
                    raise DataError(f"{self.repo}@{self.revision}/{shard}: no 'text' column "
                                    f"(columns: {pf.schema_arrow.names})")
                return [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]

            self._counts[shard] = self._retry(lambda: self._open(shard, use), f"read footer of {shard}")
        return self._counts[shard]

    def _read_group(self, shard: str, group: int) -> list[Any]:
        def use(pf: Any) -> list[Any]:
            return pf.read_row_group(group, columns=["text"]).column("text").to_pylist()

        return self._retry(lambda: self._open(shard, use), f"read row group {group} of {shard}")

    def sample(self, seed: int, n: int) -> list[tuple[str, str]]:
        """Draw n rows: a shard, a row group, then up to rows_per_group rows of it, repeated.
        Every draw comes from one Generator seeded by `seed` (drawn in this thread only, so a
        retried or abandoned read cannot shift it): the list depends only on the seed and the
        files at the revision, and sample(seed, k) is a prefix of sample(seed, n > k)."""
        shards = self.shards()
        rng = np.random.default_rng(seed)
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        max_draws = 4 * (n // self.rows_per_group + 1) + 16  # a few empty groups are fine; a dead repo is not
        for _ in range(max_draws):
            if len(out) >= n:
                break
            shard = shards[int(rng.integers(len(shards)))]
            counts = self._row_counts(shard)
            if not counts:
                continue
            group = int(rng.integers(len(counts)))
            texts = self._read_group(shard, group)
            offset = sum(counts[:group])
            dump_file = shard.split("/", 1)[1]
            for i in _choose(rng, len(texts), self.rows_per_group):
                sid = f"{dump_file}/{offset + i}"
                if not _usable(texts[i]):
                    self.skipped += 1
                elif sid not in seen and len(out) < n:
                    seen.add(sid)
                    out.append((sid, texts[i]))
        if len(out) < n:
            log.warning("%s: only %d of %d samples after %d draws", self.name, len(out), n, max_draws)
        return out


# --- choosing a source ------------------------------------------------------------------------


def source_for(dataset: str, endpoint: str | None = None, **kwargs: Any) -> SampleSource:
    """A competition's `dataset` value -> its source: a FineWeb name, or a local path."""
    if not isinstance(dataset, str) or not dataset.strip():
        raise ValueError(f"dataset {dataset!r}: must be a non-empty string")
    if dataset.strip().lower() in FINEWEB_NAMES:
        return FineWebSource(endpoint=endpoint, **kwargs)
    if Path(dataset).expanduser().exists():
        return LocalSource(Path(dataset).expanduser())
    raise ValueError(f"dataset {dataset!r}: neither a known dataset name ({', '.join(FINEWEB_NAMES)}) "
                     f"nor an existing file or directory")
