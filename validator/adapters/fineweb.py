"""FineWeb-edu parquet shards on the hub as a sample source, drawn as live draws its pages.

Shard lists and row counts are cached in-process and on disk (they change only with the
repo's revision); every read is retried and time-boxed, and every random draw is made in the
calling thread from the seed (`validator.core.seeding`), so the samples depend only on the
seed and the files.
"""
from __future__ import annotations

import logging
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import quote

import numpy as np

import constants
from validator.adapters.data import DataError
from validator.core.seeding import Page, locate, page_start, usable_text

log = logging.getLogger(__name__)

T = TypeVar("T")


_SHARD_LISTS: dict[str, list[str]] = {}  # in-process: cache key -> sorted shard paths
_ROW_COUNTS: dict[str, dict[str, int]] = {}  # in-process: cache key -> shard -> rows in it
_CACHE_LOCK = threading.Lock()
_PATH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a dump folder or a shard file name


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
    """Pages of FineWeb-edu-score-2 rows, drawn as the live validator draws them, but seeded.

    Live (v1.0.16, neurons/dataset.py and evalstate.update_sampleset): pick a dump (a
    datasets-server "config") uniformly, then a start row uniformly in
    [0, rows(dump) - 1 - rows_per_page], fetch the `rows_per_page` rows from there (one
    `/rows?offset=start&limit=rows_per_page` request), repeat until there are enough rows,
    shuffle them, keep n.

    Here every draw comes from one Generator seeded by `seed` (validators that share a seed
    agree), and pages are read from the repo's parquet files instead of the datasets-server
    API, which tests cannot reach. The mapping: a dump is a folder `data/<dump>/`; its rows
    are the rows of its `*.parquet` shards concatenated in file-name order (the order in
    which the datasets library, and so the datasets-server, resolves the config's
    `data/<dump>/*`: /rows offset r of a config is row r of that concatenation); a dump's
    row count is the sum of its shards' row counts, read from the parquet footers. A page
    that runs past a shard's last row continues at row 0 of the next shard.

    ranged=True reads only footers and the row groups a page needs, through an fsspec
    filesystem (huggingface_hub's HfFileSystem, or `fs` for a local fake); ranged=False
    downloads whole shards (for hubs that ignore HTTP Range, like olah in tests).
    Row counts are cached in the process and, with `shard_list_cache`, on disk.
    Sample id: `<dump>/<shard file>/<row index in the shard>`, the same text forever.
    """

    def __init__(self, repo: str = constants.FINEWEB_REPO, endpoint: str | None = None,
                 revision: str = "main", *, rows_per_page: int = constants.ROWS_PER_PAGE,
                 timeout: float = constants.FINEWEB_TIMEOUT_S, retries: int = constants.FINEWEB_RETRIES,
                 backoff: float = constants.FINEWEB_RETRY_BACKOFF_S, ranged: bool = True,
                 fs: Any = None, root: str | None = None, cache_dir: str | Path | None = None,
                 shard_list_cache: str | Path | None = None, token: str | bool | None = None,
                 footer_workers: int = constants.FINEWEB_FOOTER_WORKERS):
        if retries < 1:
            raise ValueError(f"retries={retries}: need at least one attempt")
        if isinstance(rows_per_page, bool) or not isinstance(rows_per_page, int) or rows_per_page < 1:
            raise ValueError(f"rows_per_page={rows_per_page!r}: must be an integer >= 1")
        if footer_workers < 1:
            raise ValueError(f"footer_workers={footer_workers}: must be >= 1")
        self.repo, self.endpoint, self.revision = repo, endpoint, revision
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.ranged, self.rows_per_page, self.footer_workers = ranged, rows_per_page, footer_workers
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.shard_list_cache = Path(shard_list_cache) if shard_list_cache else None
        self.token = token
        self.name = f"fineweb:{repo}@{revision}"
        self.skipped = 0  # rows of drawn pages that were not usable text
        self._fs_lock = threading.Lock()
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
        repo is many paginated calls)."""
        key = self._cache_key()
        with _CACHE_LOCK:
            if key in _SHARD_LISTS:
                return _SHARD_LISTS[key]
        cached = self._disk_entry(key)["shards"]
        if not cached:
            listed = self._retry(self._list_shards, f"list shards of {self.repo}@{self.revision}")
            cached = sorted(p for p in listed if self._valid_shard(p))
            if not cached:
                raise DataError(f"{self.repo}@{self.revision}: no parquet shards under data/<dump>/")
            self._write_disk(key, shards=cached)
        with _CACHE_LOCK:
            _SHARD_LISTS[key] = cached
        return cached

    def dumps(self) -> dict[str, list[str]]:
        """dump -> its shard paths, in file-name order (the order its rows are numbered in)."""
        out: dict[str, list[str]] = {}
        for shard in self.shards():
            out.setdefault(shard.split("/")[1], []).append(shard)
        return out

    @staticmethod
    def _valid_shard(path: str) -> bool:
        parts = path.split("/")
        ok = (len(parts) == 3 and parts[0] == "data" and parts[2].endswith(".parquet")
              and all(_PATH_PART.match(p) and ".." not in p for p in parts[1:]))
        if not ok:
            log.warning("fineweb: ignoring %r (not data/<dump>/<file>.parquet with plain names)", path)
        return ok

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
            return out
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        api = HfApi(endpoint=self.endpoint, token=self.token)
        entries = api.list_repo_tree(self.repo, path_in_repo="data", recursive=True,
                                     revision=self.revision, repo_type="dataset")
        return [e.path for e in entries
                if isinstance(e, RepoFile) and e.path.endswith(".parquet") and e.path.count("/") == 2]

    # -- the on-disk cache: {key: {"shards": [...], "rows": {shard: n}}} (an older file holds
    # {key: [...]}, the shard list alone: read as such, rewritten in the new form)
    def _disk_entry(self, key: str) -> dict[str, Any]:
        empty: dict[str, Any] = {"shards": [], "rows": {}}
        if self.shard_list_cache is None:
            return empty
        from validator.adapters.files import load_or_default

        data = load_or_default(self.shard_list_cache, {})
        entry = data.get(key) if isinstance(data, dict) else None
        if isinstance(entry, list):
            entry = {"shards": entry, "rows": {}}
        if not isinstance(entry, dict):
            return empty
        shards = entry.get("shards")
        rows = entry.get("rows")
        shards = [s for s in shards if isinstance(s, str)] if isinstance(shards, list) else []
        rows = rows if isinstance(rows, dict) else {}
        known = set(shards)
        return {"shards": shards,
                "rows": {s: n for s, n in rows.items()
                         if s in known and isinstance(n, int) and not isinstance(n, bool) and n >= 0}}

    def _write_disk(self, key: str, shards: list[str] | None = None, rows: dict[str, int] | None = None,
                    drop: bool = False) -> None:
        if self.shard_list_cache is None:
            return
        from validator.adapters.files import atomic_write_json, load_or_default

        data = load_or_default(self.shard_list_cache, {})
        data = data if isinstance(data, dict) else {}
        if drop:
            data.pop(key, None)
        else:
            entry = self._disk_entry(key)
            if shards is not None:
                entry["shards"] = shards
            entry["rows"].update(rows or {})
            data[key] = entry
        atomic_write_json(self.shard_list_cache, data)

    def _forget(self, key: str) -> None:
        """The repo changed under a moving revision: list and count again next time."""
        with _CACHE_LOCK:
            _SHARD_LISTS.pop(key, None)
            _ROW_COUNTS.pop(key, None)
        self._write_disk(key, drop=True)

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

    def _filesystem(self) -> Any:
        with self._fs_lock:  # footers are read from several threads
            if self._fs is None:
                from huggingface_hub import HfFileSystem

                self._fs = HfFileSystem(endpoint=self.endpoint, token=self.token)
            return self._fs

    def _open(self, shard: str, use: Callable[[Any], T]) -> T:
        """Apply `use` to a pyarrow ParquetFile of the shard (ranged, or a downloaded copy)."""
        import pyarrow.parquet as pq

        if self._fs is None and not self.ranged:
            return use(pq.ParquetFile(self._open_local_copy(shard)))
        with self._filesystem().open(f"{self._root}/{shard}", "rb") as f:
            return use(pq.ParquetFile(f))

    def _check_text(self, pf: Any, shard: str) -> None:
        if "text" not in pf.schema_arrow.names:
            raise DataError(f"{self.repo}@{self.revision}/{shard}: no 'text' column "
                            f"(columns: {pf.schema_arrow.names})")

    def _footer_rows(self, shard: str) -> int:
        def use(pf: Any) -> int:
            self._check_text(pf, shard)
            return int(pf.metadata.num_rows)

        return self._retry(lambda: self._open(shard, use), f"read footer of {shard}")

    def dump_shards(self, dump: str) -> list[tuple[str, int]]:
        """(shard path, rows) of a dump in row order. Footers not yet counted are read (a few
        at a time); the counts are facts of the files, so the threads cannot change a draw."""
        shards = self.dumps().get(dump)
        if not shards:
            raise DataError(f"{self.name}: no dump {dump!r}")
        key = self._cache_key()
        with _CACHE_LOCK:
            counts = _ROW_COUNTS.setdefault(key, {})
            missing = [s for s in shards if s not in counts]
        if missing:
            on_disk = self._disk_entry(key)["rows"]
            found = {s: on_disk[s] for s in missing if s in on_disk}
            to_read = [s for s in missing if s not in found]
            if to_read:
                workers = min(self.footer_workers, len(to_read))
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="data:footer") as pool:
                    found.update(zip(to_read, pool.map(self._footer_rows, to_read)))
                self._write_disk(key, rows={s: found[s] for s in to_read})
            with _CACHE_LOCK:
                counts = _ROW_COUNTS.setdefault(key, {})
                counts.update(found)
        return [(s, counts[s]) for s in shards]

    def dump_rows(self, dump: str) -> int:
        return sum(n for _, n in self.dump_shards(dump))

    def _read_rows(self, shard: str, first: int, count: int, expected_total: int) -> list[Any]:
        """`count` texts of a shard from row `first`, reading only the row groups they lie in."""
        def use(pf: Any) -> list[Any]:
            self._check_text(pf, shard)
            md = pf.metadata
            if md.num_rows != expected_total:
                self._forget(self._cache_key())
                raise DataError(f"{self.name}/{shard}: holds {md.num_rows} rows, the cached count says "
                                f"{expected_total} (the repo changed under revision {self.revision!r}; "
                                f"counts are dropped and read again next time; pin a commit to avoid this)")
            groups, base, offset = [], 0, 0
            for g in range(md.num_row_groups):
                size = md.row_group(g).num_rows
                if offset < first + count and offset + size > first:
                    if not groups:
                        base = offset
                    groups.append(g)
                offset += size
            texts = pf.read_row_groups(groups, columns=["text"]).column("text").to_pylist()
            return texts[first - base:first - base + count]

        return self._retry(lambda: self._open(shard, use), f"read rows {first}..{first + count - 1} of {shard}")

    def pages(self, seed: int) -> Iterator[Page]:
        """The endless, seeded stream of pages sample() reads: a dump uniformly (not weighted
        by its size), then page_start() over its rows."""
        return self._pages(np.random.default_rng(seed))

    def _pages(self, rng: np.random.Generator) -> Iterator[Page]:
        names = sorted(self.dumps())
        while True:
            dump = names[int(rng.integers(len(names)))]
            yield Page(dump, page_start(rng, self.dump_rows(dump), self.rows_per_page))

    def read_page(self, page: Page) -> list[tuple[str, Any]]:
        """(sample id, value) of the page's rows, in order; values are checked by the caller."""
        layout = self.dump_shards(page.dump)
        out: list[tuple[str, Any]] = []
        for i, first, count in locate([n for _, n in layout], page.start, self.rows_per_page):
            shard, total = layout[i]
            name = shard.split("/", 1)[1]  # <dump>/<file>
            texts = self._read_rows(shard, first, count, total)
            out += [(f"{name}/{first + j}", text) for j, text in enumerate(texts)]
        return out

    def sample(self, seed: int, n: int) -> list[tuple[str, str]]:
        """n rows: pages from pages(seed) until n distinct usable rows, shuffled by the same
        Generator, the first n kept (live keeps the shuffled rows' first n too). Every draw is
        made in this thread (a retried or abandoned read cannot shift it): the list depends
        only on the seed, n, rows_per_page and the files at the revision."""
        if n <= 0:
            return []
        rng = np.random.default_rng(seed)
        pages = self._pages(rng)
        rows: dict[str, str] = {}
        max_pages = 2 * math.ceil(n / self.rows_per_page) + 16  # empty rows and overlaps are fine; a dead repo is not
        for _ in range(max_pages):
            if len(rows) >= n:
                break
            for sid, text in self.read_page(next(pages)):
                if not usable_text(text):
                    self.skipped += 1
                else:
                    rows.setdefault(sid, text)  # two pages may overlap: a row counts once
        if len(rows) < n:
            log.warning("%s: only %d of %d samples after %d pages", self.name, len(rows), n, max_pages)
        items = list(rows.items())
        return [items[i] for i in rng.permutation(len(items))[:n]]
