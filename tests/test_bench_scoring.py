"""benchmarks/bench_scoring.py runs both paths and records figures a reader can trust."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_scoring  # noqa: E402


def test_lengths_follow_the_requested_distribution():
    lengths = bench_scoring.sample_lengths(4000, median=700, sigma=0.9, max_len=4096, seed=0)
    lengths.sort()
    assert 650 <= lengths[len(lengths) // 2] <= 750
    assert min(lengths) >= 2 and max(lengths) == 4096  # the cap is reached, never passed


def test_a_tiny_run_records_both_paths_and_their_agreement(tmp_path):
    out = tmp_path / "scoring.jsonl"
    record = bench_scoring.main(["--hidden", "32", "--layers", "1", "--vocab", "500", "--samples", "6",
                                 "--median", "20", "--max-len", "64", "--out", str(out)])
    saved = json.loads(out.read_text().strip())
    assert saved == json.loads(json.dumps(record))
    ref, eng = saved["figures"]["reference"], saved["figures"]["engine"]
    expected_tokens = sum(bench_scoring.sample_lengths(6, 20, 0.9, 64, 0))
    assert ref["tokens"] == eng["tokens"] == expected_tokens
    assert saved["max_rel_loss_diff"] < 1e-4  # same model, same tokens: the same losses
    assert saved["time_ratio_engine_over_reference"] == round(eng["seconds"] / ref["seconds"], 4)
    assert saved["device"] and saved["flags"]["vocab"] == 500 and saved["flags"]["intermediate"] == 128
