"""benchmarks/bench_scoring.py runs both paths and records figures a reader can trust."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def llama_forward_params(hidden, layers, heads, kv_heads, inter, vocab) -> int:
    """Parameters of a Llama decoder + untied head, the input embedding left out."""
    head_dim = hidden // heads
    attn = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o; k, v
    return layers * (attn + 3 * hidden * inter + 2 * hidden) + hidden + vocab * hidden


def test_grouped_query_attention_and_the_measured_ceiling_are_recorded(tmp_path):
    out = tmp_path / "scoring.jsonl"
    record = bench_scoring.main(["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                                 "--vocab", "300", "--samples", "4", "--median", "16", "--max-len", "32",
                                 "--paths", "engine", "--flops", "--measure-peak", "--out", str(out)])
    eng = record["figures"]["engine"]
    assert eng["forward_params"] == llama_forward_params(64, 2, 4, 2, 256, 300)
    assert record["flags"]["kv_heads"] == 2
    ceiling = record["measured_matmul_tflops"]
    assert ceiling > 0
    achieved = 2 * eng["forward_params"] * eng["tokens_per_s"] / 1e12  # (seconds is rounded to ms)
    assert eng["fraction_of_measured_matmul"] == pytest.approx(achieved / ceiling, rel=0.02, abs=1e-4)


def test_kv_heads_must_divide_heads():
    with pytest.raises(SystemExit):
        bench_scoring.parse_args(["--hidden", "64", "--heads", "4", "--kv-heads", "3"])


def test_the_gpu_check_script_runs_its_stages_in_smoke_mode(tmp_path):
    # The script a session with a lent GPU runs in one call: its plumbing is tried here, on
    # the CPU with tiny shapes, so no device time is lost to a broken script.
    env = dict(os.environ, OUT=str(tmp_path), GPU_CHECK_SMOKE="1")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["== tests", "== bench_1b", "== bench_7b", "== streamed_7b"]
    assert all(": exit 0 " in line for line in summary)
    records = [json.loads(line) for line in (tmp_path / "scoring.jsonl").read_text().splitlines()]
    assert [r["flags"]["kv_heads"] for r in records] == [2, 4]  # grouped-query 1B shape, then full MHA
    for r in records:
        assert set(r["figures"]) == {"reference", "engine"}
        assert r["max_rel_loss_diff"] < 1e-4 and r["measured_matmul_tflops"] > 0
    assert "torch" in (tmp_path / "machine.txt").read_text()
    (streamed,) = [json.loads(line) for line in (tmp_path / "streamed.jsonl").read_text().splitlines()]
    assert streamed["max_rel_loss_diff"] < 1e-5 and streamed["groups"] >= 1
    assert streamed["predicted_streamed_s"] > 0 and streamed["peak_rss_streamed_mib"] > 0


def test_a_childs_peak_memory_leaves_out_the_parents():
    # The benchmark's paths run in children of a parent that may hold hundreds of MiB
    # (pytest, or torch after --measure-peak): a child's peak must be its own.
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"\1" * len(ballast[::4096])  # resident, not only reserved
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from peakmem import peak_rss_bytes; "
            "x = bytearray(50 * 2**20); x[::4096] = b'\\1' * len(x[::4096]); print(peak_rss_bytes())")
    child_peak = int(subprocess.run([sys.executable, "-c", code, str(ROOT / "benchmarks")], check=True,
                                    capture_output=True, text=True).stdout)
    assert 50 * 2**20 <= child_peak < 300 * 2**20
    del ballast
