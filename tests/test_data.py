"""validator/adapters/data.py, sources.py and validator/core/seeding.py: the local-files source,
choosing a source, and the seeded page rules."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import constants
from validator.ports import SampleSource
from validator.adapters.data import DataError, LocalSource
from validator.adapters.fineweb import FineWebSource
from validator.adapters.sources import source_for
from validator.core.seeding import locate, page_start, rows_per_page_setting, seed_from_block_hash
from tests.factories import make_texts

RPP = 5  # rows per page

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
        src = source_for(name, endpoint="http://127.0.0.1:1", rows_per_page=50)
        assert isinstance(src, FineWebSource) and src.endpoint == "http://127.0.0.1:1"
        assert src.rows_per_page == 50
    assert isinstance(source_for(str(local_dir), rows_per_page=50), LocalSource)  # pages are FineWeb's
    with pytest.raises(ValueError, match="'nonsense'.*fineweb2"):
        source_for("nonsense")


def test_seed_from_block_hash():
    h = "0x" + "ab" * 32
    assert seed_from_block_hash(h) == seed_from_block_hash(h.upper().replace("0X", "0x"))
    assert seed_from_block_hash(h) != seed_from_block_hash("0x" + "ac" * 32)
    assert 0 <= seed_from_block_hash(h) < 2**63
    with pytest.raises(ValueError, match="block hash"):
        seed_from_block_hash("")


# --- page rules ------------------------------------------------------------------------------


def test_locate_splits_a_page_over_shards():
    assert locate([7, 13], 2, 5) == [(0, 2, 5)]
    assert locate([7, 13], 5, 5) == [(0, 5, 2), (1, 0, 3)]  # crosses into the next shard
    assert locate([40, 3, 25], 39, 5) == [(0, 39, 1), (1, 0, 3), (2, 0, 1)]  # through a 3-row shard
    assert locate([3, 0, 4], 2, 3) == [(0, 2, 1), (2, 0, 2)]  # an empty shard holds no rows
    assert locate([7, 13], 18, 5) == [(1, 11, 2)]  # stops at the dump's end
    assert locate([7, 13], 20, 5) == []
    with pytest.raises(ValueError, match="must be >= 0"):
        locate([7], -1, 5)


def test_page_start_follows_the_live_bounds():
    rng = np.random.default_rng(0)
    starts = [page_start(rng, 129, RPP) for _ in range(5000)]
    # live: randint(0, rows - 1 - rows_per_page), both ends included
    assert min(starts) == 0 and max(starts) == 129 - 1 - RPP
    counts = np.bincount(starts, minlength=124)
    assert counts.min() > 10 and counts.max() < 80  # ~40 each: uniform, loosely
    assert page_start(rng, RPP, RPP) == 0 and page_start(rng, 2, RPP) == 0 and page_start(rng, 0, RPP) == 0


def test_rows_per_page_setting():
    assert rows_per_page_setting({}) == constants.ROWS_PER_PAGE == 25  # live constants.defaults
    assert rows_per_page_setting({"rows_per_page": 50}) == 50  # live competitions.json
    assert rows_per_page_setting({"rows_per_page": 50.0}) == 50
    for bad in ("50", 0, True, 2.5, None):
        with pytest.raises(ValueError, match="rows_per_page"):
            rows_per_page_setting({"rows_per_page": bad})
    with pytest.raises(ValueError, match="rows_per_page=0"):
        FineWebSource(rows_per_page=0)
