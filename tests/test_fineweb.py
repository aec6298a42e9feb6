"""validator/adapters/fineweb.py: FineWeb-style parquet shards on a hub (olah on loopback) or
local files through fsspec, drawn as live draws its pages, seeded and stable."""
import json
import math
import subprocess
import threading
from itertools import islice
from types import SimpleNamespace

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import constants
import validator.adapters.fineweb as fineweb
from validator.adapters.data import DataError
from validator.adapters.evalcache import EvalCache
from validator.adapters.fineweb import FineWebSource
from validator.adapters.sampledb import SampleDB
from validator.core.seeding import Page
from tests.factories import make_texts

# --- FineWeb layout: pages of rows, the live draw, seeded ----------------------------------------

# two dumps of very different sizes; shards of different row counts, row groups of 8
SHARD_ROWS = {"CC-MAIN-2023-50": [7, 13], "CC-MAIN-2024-10": [40, 3, 25, 61]}
SMALL, BIG = "CC-MAIN-2023-50", "CC-MAIN-2024-10"
GARBAGE_SHARD, GARBAGE_ROWS = f"data/{BIG}/000_00000.parquet", (5, 17)  # "" and None, as a real dump may hold
RPP = 5


def shard_texts(dump, s, rows):
    texts = [f"{dump} shard {s} row {r}: " + t
             for r, t in enumerate(make_texts(rows, seed=10 * s + len(dump), max_words=12))]
    if f"data/{dump}/000_{s:05d}.parquet" == GARBAGE_SHARD:
        texts[GARBAGE_ROWS[0]] = ""
        texts[GARBAGE_ROWS[1]] = None
    return texts


def write_fineweb(root):
    """data/<dump>/000_0000N.parquet, like FineWeb-edu-score-2; returns {shard path: texts}."""
    out = {}
    for dump, sizes in SHARD_ROWS.items():
        for s, rows in enumerate(sizes):
            rel = f"data/{dump}/000_{s:05d}.parquet"
            texts = shard_texts(dump, s, rows)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            table = pa.table({"text": pa.array(texts, pa.string()), "score": list(range(rows))})
            pq.write_table(table, root / rel, row_group_size=8)
            out[rel] = texts
    (root / "README.md").write_text("tiny fineweb")
    (root / "data" / BIG / "notes.txt").write_text("not a shard")
    pq.write_table(pa.table({"text": ["not in a dump folder"]}), root / "data" / "stray.parquet")
    return out


def dump_order(files):
    """dump -> [(sample id, value)] in the dump's row order, computed from what was written:
    shards in file-name order, rows in file order."""
    out = {}
    for shard in sorted(files):
        _, dump, name = shard.split("/")
        out.setdefault(dump, []).extend((f"{dump}/{name}/{r}", t) for r, t in enumerate(files[shard]))
    return out


def clear_process_caches():
    fineweb._SHARD_LISTS.clear()
    fineweb._ROW_COUNTS.clear()


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin",
                        "HOME": str(cwd)})
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def hub(olah_mirror, olah_hub, tmp_path_factory):
    """The fake FineWeb repo served by olah on loopback; `make()` builds a source over it
    (whole-shard downloads: olah ignores HTTP Range)."""
    repo_dir = olah_mirror / "datasets" / "testorg" / "fineweb-tiny"
    repo_dir.mkdir(parents=True)
    files = write_fineweb(repo_dir)
    git(repo_dir, "init", "-b", "main")
    git(repo_dir, "add", "-A")
    sha = git(repo_dir, "commit", "-m", "shards")
    cache = tmp_path_factory.mktemp("hf-cache")

    def make(**kw):
        args = dict(endpoint=olah_hub.endpoint, revision=sha, ranged=False, rows_per_page=RPP,
                    cache_dir=cache, timeout=30, backoff=0)
        args.update(kw)
        return FineWebSource("testorg/fineweb-tiny", **args)

    return SimpleNamespace(make=make, files=files, rows=dump_order(files), repo_dir=repo_dir, sha=sha)


def local_fineweb(root, **kw):
    return FineWebSource(fs=fsspec.filesystem("file"), root=str(root), rows_per_page=RPP, backoff=0, **kw)


def check_against_files(samples, rows):
    """Every sample id names exactly its text in the files written by the test."""
    text_of = {sid: t for dump in rows.values() for sid, t in dump}
    for sid, text in samples:
        assert text_of[sid] == text


def test_dumps_and_row_counts_come_from_the_footers(hub):
    src = hub.make()
    assert src.shards() == sorted(hub.files)  # the stray file and notes.txt are not shards
    assert src.dumps() == {d: [f"data/{d}/000_{s:05d}.parquet" for s in range(len(n))] for d, n in SHARD_ROWS.items()}
    for dump, sizes in SHARD_ROWS.items():
        assert [n for _, n in src.dump_shards(dump)] == sizes
        assert src.dump_rows(dump) == sum(sizes)
    with pytest.raises(DataError, match="no dump 'CC-MAIN-1999-01'"):
        src.dump_shards("CC-MAIN-1999-01")


def test_dump_choice_is_uniform_not_weighted_by_size(hub):
    src = hub.make()
    pages = [p for seed in range(50) for p in islice(src.pages(seed), 10)]
    small = sum(p.dump == SMALL for p in pages) / len(pages)
    # uniform over the two dumps: ~0.5 (sd 0.022 over 500 pages); by rows it would be 20/149 = 0.13
    assert 0.4 < small < 0.6
    for p in pages:  # the live bound on the start row, per dump
        assert 0 <= p.start <= sum(SHARD_ROWS[p.dump]) - 1 - RPP
    big_starts = [p.start for p in pages if p.dump == BIG]
    assert min(big_starts) < 30 and max(big_starts) > 95  # spread over the whole dump, every shard


def test_pages_are_consecutive_rows_and_cross_shards(hub):
    src = hub.make()
    crossed = 0
    for seed in range(30):
        page = next(src.pages(seed))
        got = src.read_page(page)
        assert got == hub.rows[page.dump][page.start:page.start + RPP]  # raw values, garbage included
        crossed += len({sid.rsplit("/", 1)[0] for sid, _ in got}) > 1
    assert crossed > 0  # some drawn page ran past a shard's last row
    # explicitly: row 39 of shard 0, all 3 rows of shard 1, row 0 of shard 2
    got = src.read_page(Page(BIG, 39))
    assert [sid for sid, _ in got] == [f"{BIG}/000_00000.parquet/39"] + \
        [f"{BIG}/000_00001.parquet/{r}" for r in range(3)] + [f"{BIG}/000_00002.parquet/0"]
    assert got == hub.rows[BIG][39:44]
    assert src.read_page(Page(SMALL, 18)) == hub.rows[SMALL][18:20]  # the dump's end


def test_sample_is_the_shuffled_rows_of_the_seeded_pages(hub):
    src = hub.make()
    n = 23
    got = src.sample(7, n)
    assert len(got) == n and len({sid for sid, _ in got}) == n
    check_against_files(got, hub.rows)
    # the live procedure, computed here from the page stream and the written files:
    # whole pages until n usable distinct rows, then n of them
    usable, pages_used = {}, 0
    for page in src.pages(7):
        pages_used += 1
        rows = hub.rows[page.dump][page.start:page.start + RPP]
        usable.update((sid, t) for sid, t in rows if t)
        if len(usable) >= n:
            break
    assert {sid for sid, _ in got} <= set(usable)
    assert [sid for sid, _ in got] != list(usable)[:n]  # shuffled, not in page order
    assert pages_used >= math.ceil(n / RPP)


def test_same_seed_same_samples_on_every_access_path(hub):
    clear_process_caches()
    a = hub.make().sample(11, 20)
    clear_process_caches()  # a restart: nothing cached in the process
    assert hub.make().sample(11, 20) == a
    assert hub.make().sample(12, 20) != a
    assert hub.make(rows_per_page=4).sample(11, 20) != a  # the page size is part of the draw
    # the same files read off disk, and ranged reads through HfFileSystem (olah ignores Range,
    # which only works here because these shards fit in one read block; it exercises the
    # production client path)
    assert local_fineweb(hub.repo_dir).sample(11, 20) == a
    assert hub.make(ranged=True, cache_dir=None).sample(11, 20) == a
    check_against_files(a, hub.rows)


def test_garbage_rows_are_skipped(hub):
    src = hub.make()
    got = [s for seed in range(20) for s in src.sample(seed, 30)]
    check_against_files(got, hub.rows)
    assert all(t for _, t in got)
    garbage = {f"{BIG}/000_00000.parquet/{r}" for r in GARBAGE_ROWS}
    assert not garbage & {sid for sid, _ in got}
    assert src.skipped > 0  # pages holding them were drawn


def test_sample_db_extends_after_the_interval_and_trims_at_max(hub):
    src = hub.make()
    cache = EvalCache(SampleDB(min_samples=12, max_samples=30, extend_samples=8, extend_interval=3600))
    r = cache.refresh(src, seed=1, now=0.0)
    assert len(cache.db) == 12 and r.added == [sid for sid, _ in src.sample(1, 12)]
    cache.losses.put("m", {sid: 1.0 for sid in cache.db.ids()})
    assert cache.refresh(src, seed=2, now=3600.0).added == []  # exactly the interval: not yet
    sizes = [12]
    for step, now in enumerate((3600.5, 7201.0, 10801.5, 14402.0), start=2):
        before = cache.db.ids()
        batch = [sid for sid, _ in src.sample(step, 8)]
        r = cache.refresh(src, seed=step, now=now)
        assert r.added == [sid for sid in batch if sid not in before]
        sizes.append(len(cache.db))
        # the oldest of those not drawn again leave first, with their losses
        assert r.dropped == [sid for sid in before if sid not in batch][:len(r.dropped)]
        assert not set(r.dropped) & set(cache.losses.cached("m"))
    assert sizes[-1] == 30 and sizes == sorted(sizes) and sizes[1] > 12
    check_against_files([(i, cache.db.text(i)) for i in cache.db.ids()], hub.rows)


# --- row counts cached, the repo changing, failures (local files through fsspec) ----------------


@pytest.fixture
def fineweb_dir(tmp_path):
    root = tmp_path / "fineweb"
    files = write_fineweb(root)
    return root, dump_order(files)


class CountingFS:
    """A local filesystem that counts opens; optionally refuses to list, or fails/hangs on open."""

    def __init__(self, failures=0, hang=False, can_list=True):
        self.fs = fsspec.filesystem("file")
        self.failures, self.hang, self.can_list, self.opens = failures, hang, can_list, 0
        self.release = threading.Event()

    def ls(self, *a, **k):
        if not self.can_list:
            raise AssertionError("listing should come from the cache")
        return self.fs.ls(*a, **k)

    def open(self, *a, **k):
        self.opens += 1
        if self.hang:
            self.release.wait(30)
        if self.opens <= self.failures:
            raise ConnectionError("connection reset by peer")
        return self.fs.open(*a, **k)


def test_shard_list_and_row_counts_cached_on_disk(fineweb_dir, tmp_path):
    root, rows = fineweb_dir
    cache = tmp_path / "shards.json"
    first = local_fineweb(root, shard_list_cache=cache, revision="rev-a")
    assert [first.dump_rows(d) for d in sorted(SHARD_ROWS)] == [20, 129]
    saved = json.loads(cache.read_text())
    (entry,) = saved.values()
    assert entry["rows"] == {f"data/{d}/000_{s:05d}.parquet": n for d, sizes in SHARD_ROWS.items()
                             for s, n in enumerate(sizes)}
    clear_process_caches()  # a restart: only the disk cache is left
    fs = CountingFS(can_list=False)
    second = FineWebSource(fs=fs, root=str(root), shard_list_cache=cache, revision="rev-a", rows_per_page=RPP)
    assert [second.dump_rows(d) for d in sorted(SHARD_ROWS)] == [20, 129] and fs.opens == 0  # no footer read
    got = second.sample(1, 5)
    check_against_files(got, rows)
    assert 1 <= fs.opens <= 4  # only the shards the pages lie in


def test_shard_list_cache_of_the_older_form_is_read(fineweb_dir, tmp_path):
    root, rows = fineweb_dir
    cache = tmp_path / "shards.json"
    key = f"fs:{root}|{constants.FINEWEB_REPO}@rev-b"
    listed = sorted(p for p in (f"data/{d}/000_{s:05d}.parquet" for d, sz in SHARD_ROWS.items() for s in range(len(sz))))
    cache.write_text(json.dumps({key: listed}))  # {key: [shards]}, the list alone
    clear_process_caches()
    src = FineWebSource(fs=CountingFS(can_list=False), root=str(root), shard_list_cache=cache, revision="rev-b",
                        rows_per_page=RPP)
    assert src.shards() == listed
    check_against_files(src.sample(3, 6), rows)
    assert json.loads(cache.read_text())[key]["shards"] == listed  # rewritten in the new form, counts added


def test_a_shard_that_changed_under_a_moving_revision_is_detected(fineweb_dir):
    root, _ = fineweb_dir
    src = local_fineweb(root, revision="moving")
    assert src.dump_rows(BIG) == 129
    shard = root / "data" / BIG / "000_00001.parquet"
    pq.write_table(pa.table({"text": ["new 0", "new 1", "new 2", "new 3"]}), shard)  # 3 rows -> 4
    with pytest.raises(DataError, match="holds 4 rows, the cached count says 3.*repo changed"):
        src.read_page(Page(BIG, 39))
    assert src.dump_rows(BIG) == 130  # counted again
    assert [t for _, t in src.read_page(Page(BIG, 39))] == [shard_texts(BIG, 0, 40)[39], "new 0", "new 1",
                                                            "new 2", "new 3"]


def test_fineweb_retries_transient_failures(fineweb_dir):
    root, _ = fineweb_dir
    want = local_fineweb(root).sample(seed=9, n=10)
    clear_process_caches()
    flaky = CountingFS(failures=2)
    got = FineWebSource(fs=flaky, root=str(root), retries=3, backoff=0, rows_per_page=RPP,
                        footer_workers=1).sample(seed=9, n=10)
    assert got == want  # retries redraw nothing
    assert flaky.opens > 2


def test_fineweb_gives_up_with_clear_error(fineweb_dir):
    root, _ = fineweb_dir
    src = FineWebSource(fs=CountingFS(failures=100), root=str(root), retries=2, backoff=0)
    with pytest.raises(DataError, match=r"data/CC-MAIN-.*failed after 2 attempts.*connection reset"):
        src.sample(seed=1, n=3)


def test_fineweb_read_timeout(fineweb_dir):
    root, _ = fineweb_dir
    hanging = CountingFS(hang=True)
    src = FineWebSource(fs=hanging, root=str(root), retries=1, timeout=0.2, backoff=0)
    try:
        with pytest.raises(DataError, match="no answer within 0.2 s"):
            src.sample(seed=1, n=3)
    finally:
        hanging.release.set()


def test_fineweb_missing_text_column_is_not_retried(tmp_path):
    root = tmp_path / "bad"
    (root / "data" / "D").mkdir(parents=True)
    pq.write_table(pa.table({"body": ["x"]}), root / "data" / "D" / "000.parquet")
    fs = CountingFS()
    with pytest.raises(DataError, match="no 'text' column"):
        FineWebSource(fs=fs, root=str(root), retries=3, backoff=0).sample(0, 1)
    assert fs.opens == 1
    (root / "data" / "D" / "000.parquet").unlink()
    with pytest.raises(DataError, match="no parquet shards"):
        FineWebSource(fs=fs, root=str(root), revision="other").shards()
