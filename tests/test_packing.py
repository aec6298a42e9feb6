"""Engine batch layouts: right padding without its mask, and exact packing, equal the reference."""
from __future__ import annotations

import random

import pytest
import torch

import constants
from tests import test_engine
from tests.test_engine import DEVICES, VOCAB, CountingForward, assert_same, token_lists
from validator.scoring import packing
from validator.scoring.engine import _engine_run, engine_losses, reference_losses
from validator.scoring.model_load import load_model

# test_engine's fixtures, shared (an assignment: pytest finds them by name in this module)
model_dirs, models = test_engine.model_dirs, test_engine.models

# Every architecture tests/test_engine.py covers; gemma2 attends with soft-capping: not packable.
EXTRA = {"gemma2": {"final_logit_softcapping": 1.0, "initializer_range": 0.5}, "cohere": {"logit_scale": 4.0},
         "granite": {"logits_scaling": 8.0}}
PACKED = ["llama", "phi3", "qwen2", "mistral", "gpt_neox", "phi", "gpt2", "opt", "cohere", "granite"]
ALL = PACKED + ["gemma2"]


@pytest.mark.parametrize("arch", ALL)
def test_right_padding_without_its_mask_is_bit_identical(models, arch):
    model = models(arch, **EXTRA.get(arch, {}))
    lists = token_lists(8)
    for budget in (None, 64):
        masked, _ = _engine_run(model, lists, "cpu", budget, verify=False, pad_mask=True)
        plain, used = _engine_run(model, lists, "cpu", budget, verify=False)
        assert "no mask" in used
        assert plain == masked  # exact, fp32: padding sits after every real token


# CUDA (never in CI) runs the per-sample loop in fp32 and flash-attn varlen in bf16 when installed.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", PACKED)
def test_packed_equals_reference_fp32(models, arch, device):
    model = models(arch, device, **EXTRA.get(arch, {}))
    lists = token_lists(9)
    ref = reference_losses(model, lists, device)
    for budget in (None, 40):  # one row; many rows, the longest sample alone
        out, used = _engine_run(model, lists, device, budget, packed=True)
        assert "packed rows" in used and used.startswith("engine"), used
        assert_same(out, ref, rel=1e-4)
    assert model.config._attn_implementation == "sdpa"  # the model is left as it was


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "phi3"])
def test_packed_bf16_agrees_with_the_bf16_reference(model_dirs, arch, device):
    path = model_dirs(arch)
    model = load_model(path, "cuda") if device == "cuda" else load_model(path, "cpu").to(torch.bfloat16)
    before = model.config._attn_implementation
    lists = token_lists(10)
    ref = reference_losses(model, lists, device)
    out, used = _engine_run(model, lists, device, 128, packed=True)
    assert model.config._attn_implementation == before
    assert used.startswith("engine") and "packed rows" in used, used
    assert_same(out, ref, rel=constants.ENGINE_VERIFY_RTOL_LOWP)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_a_packed_sample_never_sees_its_neighbours(models, arch):
    model = models(arch)
    rng = random.Random(11)
    sample = [rng.randrange(VOCAB) for _ in range(30)]
    alone = engine_losses(model, [sample], "cpu", verify=False, packed=True)[0]
    assert alone == pytest.approx(reference_losses(model, [sample], "cpu")[0], rel=1e-5)
    for _ in range(3):  # different neighbours, before and after it in the row
        others = [[rng.randrange(VOCAB) for _ in range(rng.randrange(2, 60))] for _ in range(4)]
        lists = others[:2] + [sample] + others[2:]
        packed = engine_losses(model, lists, "cpu", token_budget=10_000, verify=False, packed=True)
        assert packed[2] == pytest.approx(alone, rel=1e-5)


def test_packed_batches_hold_real_tokens_under_the_budget(models, monkeypatch):
    model = models("llama")
    spy = CountingForward(model.model)
    monkeypatch.setattr(model.model, "forward", spy)
    lists = token_lists(12)
    scored = [ids for ids in lists if ids is not None and len(ids) >= 2]
    engine_losses(model, lists, "cpu", token_budget=100, verify=False, packed=True)
    assert all(rows == 1 for rows, _ in spy.shapes)
    assert sum(n for _, n in spy.shapes) == sum(len(s) for s in scored)  # no padding at all
    assert all(n <= 100 or n == max(len(s) for s in scored) for _, n in spy.shapes)
    assert len(spy.shapes) < len(scored)


def test_packing_falls_back_with_a_reason(models):
    model = models("gemma2", **EXTRA["gemma2"])
    ok, why = packing.packing_support(model, 10)
    assert not ok and "Gemma2ForCausalLM" in why
    lists = token_lists(13)
    out, used = _engine_run(model, lists, "cpu", packed=True)
    assert "packing not used: Gemma2ForCausalLM" in used and "no mask" in used
    assert_same(out, reference_losses(model, lists, "cpu"))


def test_a_sliding_window_shorter_than_a_sample_keeps_padding(models):
    model = models("mistral", sliding_window=16)
    lists = token_lists(14)
    out, used = _engine_run(model, lists, "cpu", packed=True)
    assert "packing not used" in used and "sliding window of 16" in used
    assert_same(out, reference_losses(model, lists, "cpu"))
    # short samples fit the window: packing is exact there
    short = [ids[:16] for ids in lists if ids is not None]
    out, used = _engine_run(model, short, "cpu", packed=True)
    assert "packed rows" in used
    assert_same(out, reference_losses(model, short, "cpu"))


def test_packed_attention_outside_segments_fails_loudly():
    q = torch.zeros(1, 2, 5, 4)
    with pytest.raises(RuntimeError, match="outside"):
        packing.packed_attention(torch.nn.Module(), q, q, q, None)
    with packing.segments([2, 3], "cpu"), pytest.raises(RuntimeError, match="does not match"):
        packing.packed_attention(torch.nn.Module(), q[:, :, :4], q[:, :, :4], q[:, :, :4], None)
    with pytest.raises(ValueError, match="positive"):
        with packing.segments([2, 0], "cpu"):
            pass


def test_the_benchmark_runs_the_masked_and_packed_paths(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_scoring

    with pytest.raises(SystemExit):
        bench_scoring.parse_args(["--paths", "engine,dense"])
    record = bench_scoring.main(["--hidden", "32", "--layers", "1", "--vocab", "300", "--samples", "6",
                                 "--median", "20", "--max-len", "64", "--paths", "reference,masked,packed",
                                 "--no-record"])
    tokens = {f["tokens"] for f in record["figures"].values()}
    assert tokens == {sum(bench_scoring.sample_lengths(6, 20, 0.9, 64, 0))}
    assert record["max_rel_loss_diff_masked"] < 1e-4 and record["max_rel_loss_diff_packed"] < 1e-4
