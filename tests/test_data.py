"""validator/data.py: local and FineWeb-style sources, seeded and stable."""
import json
import subprocess
import threading

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from validator.data import (DataError, FineWebSource, LocalSource, SampleSource, seed_from_block_hash,
                            source_for)
from tests.factories import make_texts

# --- local files ---------------------------------------------------------------------------


@pytest.fixture
def local_dir(tmp_path):
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["p0", None, "", "p3", "  "], "other": [1, 2, 3, 4, 5]}),
                   root / "a.parquet")
    lines = [json.dumps({"text": "j0"}), "{not json", json.dumps({"text": 5}), "",
             json.dumps(["list"]), json.dumps({"text": "j5", "x": 1})]
    (root / "sub" / "b.jsonl").write_text("\n".join(lines) + "\n")
    (root / "c.txt").write_text("first doc\nstill first\n\n\n   \n\nsecond doc\n")
    pq.write_table(pa.table({"body": ["no text column"]}), root / "d.parquet")
    (root / "notes.md").write_text("ignored: unknown suffix")
    (root / ".hidden.txt").write_text("ignored: hidden")
    return root


def test_local_source_reads_all_formats_and_skips_garbage(local_dir):
    src = LocalSource(local_dir)
    docs = dict(src.documents())
    assert docs == {"a.parquet/0": "p0", "a.parquet/3": "p3",
                    "sub/b.jsonl/0": "j0", "sub/b.jsonl/5": "j5",
                    "c.txt/0": "first doc\nstill first", "c.txt/1": "second doc"}
    # None, "", "  " in parquet; bad json, non-string text, non-dict line in jsonl
    assert src.skipped == 6
    assert src.skipped_files == ["d.parquet"]
    assert isinstance(src, SampleSource)


def test_local_source_sampling_is_seeded_without_replacement(local_dir):
    src = LocalSource(local_dir)
    a = src.sample(seed=11, n=4)
    assert a == LocalSource(local_dir).sample(seed=11, n=4)  # a fresh reader agrees
    assert len({sid for sid, _ in a}) == 4
    seeds = {tuple(src.sample(seed=s, n=4)) for s in range(10)}
    assert len(seeds) > 1
    everything = src.sample(seed=3, n=100)  # more than exist: each once
    assert sorted(everything) == sorted(src.documents())


def test_local_single_file_and_errors(tmp_path):
    f = tmp_path / "corpus.jsonl"
    texts = make_texts(30, seed=2)
    f.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    got = LocalSource(f).sample(seed=0, n=30)
    assert sorted(got) == sorted((f"corpus.jsonl/{i}", t) for i, t in enumerate(texts))
    with pytest.raises(ValueError, match="no such file"):
        LocalSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable documents"):
        LocalSource(tmp_path / "empty").sample(0, 5)


def test_source_for(tmp_path, local_dir):
    assert isinstance(source_for(str(local_dir)), LocalSource)
    for name in ("fineweb2", "fineweb-edu", "FineWeb-Edu-Score-2"):
        src = source_for(name, endpoint="http://127.0.0.1:1")
        assert isinstance(src, FineWebSource) and src.endpoint == "http://127.0.0.1:1"
    with pytest.raises(ValueError, match="'nonsense'.*fineweb2"):
        source_for("nonsense")


def test_seed_from_block_hash():
    h = "0x" + "ab" * 32
    assert seed_from_block_hash(h) == seed_from_block_hash(h.upper().replace("0X", "0x"))
    assert seed_from_block_hash(h) != seed_from_block_hash("0x" + "ac" * 32)
    assert 0 <= seed_from_block_hash(h) < 2**63
    with pytest.raises(ValueError, match="block hash"):
        seed_from_block_hash("")


# --- FineWeb layout, through an injected filesystem --------------------------------------------

DUMPS = {"CC-MAIN-2024-10": 2, "CC-MAIN-2023-50": 1}
ROWS = 57  # per shard; row groups of 10 (the last one short)


def shard_texts(dump, shard):
    texts = [f"{dump} shard {shard} row {r}: " + t for r, t in enumerate(make_texts(ROWS, seed=shard, max_words=12))]
    texts[5] = ""  # garbage rows a real dump may hold
    texts[17] = None
    return texts


def write_fineweb(root):
    """data/<dump>/000_0000N.parquet, like FineWeb-edu-score-2; returns {shard path: texts}."""
    out = {}
    for dump, n in DUMPS.items():
        for s in range(n):
            rel = f"data/{dump}/000_{s:05d}.parquet"
            texts = shard_texts(dump, s)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            table = pa.table({"text": pa.array(texts, pa.string()), "score": list(range(ROWS))})
            pq.write_table(table, root / rel, row_group_size=10)
            out[rel] = texts
    (root / "README.md").write_text("tiny fineweb")
    (root / "data" / "CC-MAIN-2024-10" / "notes.txt").write_text("not a shard")
    return out


@pytest.fixture
def fineweb_dir(tmp_path):
    root = tmp_path / "fineweb"
    return root, write_fineweb(root)


def local_fineweb(root, **kw):
    return FineWebSource(fs=fsspec.filesystem("file"), root=str(root), rows_per_group=4, backoff=0, **kw)


def check_against_files(samples, files):
    """Every sample id points at exactly its text in the parquet file (read independently)."""
    for sid, text in samples:
        dump, name, row = sid.split("/")
        assert files[f"data/{dump}/{name}"][int(row)] == text


def test_fineweb_lists_shards_and_samples_deterministically(fineweb_dir):
    root, files = fineweb_dir
    src = local_fineweb(root)
    assert src.shards() == sorted(files)
    a = src.sample(seed=123, n=20)
    assert len(a) == 20 and len({s for s, _ in a}) == 20
    check_against_files(a, files)
    assert all(t for _, t in a)
    assert local_fineweb(root).sample(seed=123, n=20) == a
    assert local_fineweb(root).sample(seed=123, n=7) == a[:7]  # a prefix: growing n keeps the start
    assert local_fineweb(root).sample(seed=124, n=20) != a
    assert len({s.split("/")[0] for s, _ in local_fineweb(root).sample(seed=5, n=60)}) == 2  # both dumps


def test_fineweb_skips_empty_rows(fineweb_dir):
    root, files = fineweb_dir
    src = FineWebSource(fs=fsspec.filesystem("file"), root=str(root), rows_per_group=10, backoff=0)
    got = src.sample(seed=0, n=150)
    check_against_files(got, files)
    assert src.skipped > 0  # groups holding rows 5 and 17 were drawn
    assert all(not s.endswith(("/5", "/17")) for s, _ in got)


def test_shard_list_cache_on_disk(fineweb_dir, tmp_path):
    root, files = fineweb_dir
    cache = tmp_path / "shards.json"
    first = local_fineweb(root, shard_list_cache=cache, revision="rev-a")
    assert first.shards() == sorted(files)
    assert cache.exists()

    class NoListing:  # a filesystem that can open files but not list them
        def __init__(self):
            self.fs = fsspec.filesystem("file")

        def ls(self, *a, **k):
            raise AssertionError("listing should come from the cache")

        def open(self, *a, **k):
            return self.fs.open(*a, **k)

    import validator.data as data
    data._SHARD_LISTS.clear()  # a restart: only the disk cache is left
    second = FineWebSource(fs=NoListing(), root=str(root), shard_list_cache=cache, revision="rev-a", rows_per_group=4)
    assert second.shards() == sorted(files)
    check_against_files(second.sample(1, 5), files)


class FlakyFS:
    """Opens fail the first `failures` times (or hang until released)."""

    def __init__(self, failures=0, hang=False):
        self.fs = fsspec.filesystem("file")
        self.failures, self.hang, self.opens = failures, hang, 0
        self.release = threading.Event()

    def ls(self, *a, **k):
        return self.fs.ls(*a, **k)

    def open(self, *a, **k):
        self.opens += 1
        if self.hang:
            self.release.wait(30)
        if self.opens <= self.failures:
            raise ConnectionError("connection reset by peer")
        return self.fs.open(*a, **k)


def test_fineweb_retries_transient_failures(fineweb_dir):
    root, files = fineweb_dir
    want = local_fineweb(root).sample(seed=9, n=10)
    flaky = FlakyFS(failures=2)
    got = FineWebSource(fs=flaky, root=str(root), retries=3, backoff=0, rows_per_group=4).sample(seed=9, n=10)
    assert got == want  # retries redraw nothing
    assert flaky.opens > 2


def test_fineweb_gives_up_with_clear_error(fineweb_dir):
    root, _ = fineweb_dir
    src = FineWebSource(fs=FlakyFS(failures=100), root=str(root), retries=2, backoff=0)
    with pytest.raises(DataError, match=r"data/CC-MAIN-.*failed after 2 attempts.*connection reset"):
        src.sample(seed=1, n=3)


def test_fineweb_read_timeout(fineweb_dir):
    root, _ = fineweb_dir
    hanging = FlakyFS(hang=True)
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
    fs = FlakyFS()
    with pytest.raises(DataError, match="no 'text' column"):
        FineWebSource(fs=fs, root=str(root), retries=3, backoff=0).sample(0, 1)
    assert fs.opens == 1
    (root / "data" / "D" / "000.parquet").unlink()
    with pytest.raises(DataError, match="no parquet shards"):
        FineWebSource(fs=fs, root=str(root), revision="other").shards()


# --- the same repo served by olah (the hub client path) -----------------------------------------


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin",
                        "HOME": str(cwd)})
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True).stdout.strip()


def test_fineweb_through_local_hub(tmp_path, olah_mirror, olah_hub):
    repo_dir = olah_mirror / "datasets" / "testorg" / "fineweb-tiny"
    repo_dir.mkdir(parents=True)
    files = write_fineweb(repo_dir)
    git(repo_dir, "init", "-b", "main")
    git(repo_dir, "add", "-A")
    sha = git(repo_dir, "commit", "-m", "shards")
    # the same files read straight from disk: what the hub path must reproduce
    want = local_fineweb(repo_dir).sample(seed=77, n=12)
    src = FineWebSource("testorg/fineweb-tiny", endpoint=olah_hub.endpoint, revision=sha, ranged=False,
                        rows_per_group=4, cache_dir=tmp_path / "hf-cache", timeout=30, backoff=0)
    assert src.shards() == sorted(files)
    got = src.sample(seed=77, n=12)
    # ranged reads through HfFileSystem: olah ignores Range, which only works here because
    # these shards fit in one read block; it exercises the production client path
    ranged = FineWebSource("testorg/fineweb-tiny", endpoint=olah_hub.endpoint, revision=sha, ranged=True,
                           rows_per_group=4, timeout=30, backoff=0).sample(seed=77, n=12)
    assert got == want and ranged == want
    check_against_files(got, files)
