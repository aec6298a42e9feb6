"""The fast scoring engine equals the reference loop per sample (fp32 CPU, tiny models)."""
from __future__ import annotations

import logging
import math
import random

import pytest
import torch
import torch.nn.functional as F

from tests.factories import make_model
from validator.scoring.engine import (
    ScoringError,
    _engine_run,
    chunked_ce_sums,
    engine_losses,
    engine_supported,
    reference_losses,
)
from validator.scoring.model_load import load_model

VOCAB = 300


def token_lists(seed: int = 0) -> list[list[int] | None]:
    """Mixed lengths (padding), a 2-token and a 1-token sample, a failed (None) sample,
    and one sample longer than all the others together."""
    rng = random.Random(seed)
    lengths = [2, 7, 33, 33, 12, 64, 5, 1, 90, 3]
    lists: list[list[int] | None] = [[rng.randrange(VOCAB) for _ in range(n)] for n in lengths]
    lists.insert(4, None)
    lists.append([rng.randrange(VOCAB) for _ in range(sum(lengths) + 10)])
    return lists


def assert_same(engine, reference, rel=1e-4):
    assert len(engine) == len(reference)
    for i, (e, r) in enumerate(zip(engine, reference)):
        if math.isinf(r) or r == 0.0:
            assert e == r, f"sample {i}"
        else:
            assert e == pytest.approx(r, rel=rel), f"sample {i}"


# The equality tests run on CUDA too where there is a GPU (never in CI): the same models,
# in fp32 (the 1e-4 rule) and in bf16 as load_model gives them there.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA GPU"))]
EQUALITY_ARCHS = ["llama", "phi3", "qwen2", "mistral", "gpt_neox"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    dirs = {}

    def get(arch, **extra):
        key = (arch, tuple(sorted(extra.items())))
        if key not in dirs:
            dirs[key] = make_model(root / f"{arch}_{len(dirs)}", arch, vocab_size=VOCAB, **extra)
        return dirs[key]

    return get


@pytest.fixture(scope="module")
def models(model_dirs):
    """fp32 models on a device, one saved copy per architecture for every device."""
    cache = {}

    def get(arch, device="cpu", **extra):
        key = (arch, device, tuple(sorted(extra.items())))
        if key not in cache:
            cache[key] = load_model(model_dirs(arch, **extra), "cpu").to(device)
        return cache[key]

    return get


class CountingForward:
    """Wraps a base model's forward: records batch shapes, optionally raises OOM first."""

    def __init__(self, module, oom_times: int = 0):
        self.inner = module.forward
        self.shapes: list[tuple[int, int]] = []
        self.oom_times = oom_times

    def __call__(self, *args, **kwargs):
        ids = kwargs["input_ids"]
        if self.oom_times:
            self.oom_times -= 1
            raise torch.OutOfMemoryError("simulated out of memory")
        self.shapes.append(tuple(ids.shape))
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", EQUALITY_ARCHS + ["phi", "gpt2", "opt"])
def test_engine_equals_reference(models, arch, device):
    model = models(arch, device)  # phi: an lm_head with a bias
    ok, reason = engine_supported(model)
    assert ok, reason
    lists = token_lists()
    ref = reference_losses(model, lists, device)
    assert_same(engine_losses(model, lists, device), ref)
    # A tiny budget: many batches, the longest sample alone.
    assert_same(engine_losses(model, lists, device, token_budget=16), ref)


def test_batches_respect_the_token_budget(models, monkeypatch):
    model = models("llama")
    spy = CountingForward(model.model)
    monkeypatch.setattr(model.model, "forward", spy)
    lists = token_lists(1)
    engine_losses(model, lists, "cpu", token_budget=70, verify=False)
    scored = [ids for ids in lists if ids is not None and len(ids) >= 2]
    assert sum(b for b, _ in spy.shapes) == len(scored)
    assert all(b * n <= 70 or b == 1 for b, n in spy.shapes)
    assert len(spy.shapes) < len(scored)  # samples do share batches
    spy.shapes.clear()
    engine_losses(model, lists, "cpu", token_budget=1_000_000, verify=False)
    assert len(spy.shapes) == 1


def test_out_of_memory_halves_the_budget_and_retries(models, monkeypatch):
    model = models("llama")
    lists = token_lists(2)[:-1]  # longest 90 tokens: the first batch holds two samples
    ref = reference_losses(model, lists, "cpu")
    spy = CountingForward(model.model, oom_times=1)
    monkeypatch.setattr(model.model, "forward", spy)
    budget = 4 * 64
    out = engine_losses(model, lists, "cpu", token_budget=budget, verify=False)
    assert_same(out, ref)
    rows, width = spy.shapes[0]  # the retried first batch
    assert width == 90 and rows * width <= budget // 2


def test_out_of_memory_on_a_single_sample_is_a_scoring_error(models, monkeypatch):
    model = models("llama")
    monkeypatch.setattr(model.model, "forward", CountingForward(model.model, oom_times=1))
    with pytest.raises(ScoringError) as err:
        engine_losses(model, [[1, 2, 3, 4]], "cpu", verify=False)
    assert err.value.reason == "oom"


def plain_head_losses(model, lists):
    """Losses as if the head were only lm_head (no soft-capping or scaling)."""
    out = []
    with torch.no_grad():
        for ids in lists:
            t = torch.tensor([ids])
            logits = model.get_output_embeddings()(model.base_model(input_ids=t).last_hidden_state)[0]
            out.append(F.cross_entropy(logits[:-1], t[0, 1:], reduction="sum").item())
    return out


@pytest.mark.parametrize("arch,extra,word", [
    ("gemma2", {"final_logit_softcapping": 1.0, "initializer_range": 0.5}, "soft-capping"),
    ("cohere", {"logit_scale": 4.0}, "scale"),
    ("granite", {"logits_scaling": 8.0}, "logits_scaling"),
])
def test_transformed_heads_are_applied_exactly(models, arch, extra, word):
    model = models(arch, **extra)
    ok, reason = engine_supported(model)
    assert ok and word in reason
    lists = [ids for ids in token_lists(3) if ids is not None and len(ids) > 1]
    ref = reference_losses(model, lists, "cpu")
    assert_same(engine_losses(model, lists, "cpu", token_budget=64, verify=False), ref)
    # The transform matters here: a plain-head computation would be off.
    plain = plain_head_losses(model, lists[:3])
    assert any(abs(p - r) > 1e-2 * r for p, r in zip(plain, ref[:3]))


def test_unlisted_architecture_falls_back_to_reference(models):
    model = models("bloom")
    ok, reason = engine_supported(model)
    assert not ok and "BloomForCausalLM" in reason
    lists = token_lists(4)
    assert engine_losses(model, lists, "cpu") == reference_losses(model, lists, "cpu")


def test_a_disagreeing_engine_falls_back_to_reference(tmp_path, caplog):
    # A forward hook changes what lm_head returns; the engine reads the weight directly and
    # would miss it: the verify probe must notice and use the reference numbers.
    model = load_model(make_model(tmp_path / "hooked", "llama", vocab_size=VOCAB), "cpu")
    model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out * 3.0)
    lists = token_lists(5)
    ref = reference_losses(model, lists, "cpu")
    with caplog.at_level(logging.WARNING, logger="validator.scoring.job"):
        out = engine_losses(model, lists, "cpu")
    assert out == ref
    assert "differs from the reference" in caplog.text


def test_chunked_ce_sums_equals_cross_entropy():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(11, 8, generator=g)
    weight = torch.randn(50, 8, generator=g)
    bias = torch.randn(50, generator=g)
    targets = torch.randint(0, 50, (11,), generator=g)
    owner = torch.tensor([0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2])
    sums = chunked_ce_sums(hidden, targets, owner, 3, weight, bias, transform=lambda x: x * 0.5, chunk=3)
    per_token = F.cross_entropy((F.linear(hidden, weight, bias) * 0.5), targets, reduction="none")
    expected = torch.zeros(3, dtype=torch.float64).index_add_(0, owner, per_token.double())
    assert torch.allclose(sums, expected, rtol=1e-6)
    assert sums[1] == 0.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", EQUALITY_ARCHS)
def test_bf16_engine_agrees_with_the_bf16_reference(model_dirs, models, arch, device, caplog):
    # bf16 is what the engine runs on CUDA (load_model: bf16, flash-attention 2 or SDPA);
    # CPU bf16 exercises the same code path (bf16 logits chunks upcast to fp32,
    # low-precision probe tolerance) without a GPU.
    import constants

    path = model_dirs(arch)
    model = load_model(path, "cuda") if device == "cuda" else load_model(path, "cpu").to(torch.bfloat16)
    assert model.dtype == torch.bfloat16
    lists = token_lists(6)
    fp32 = reference_losses(models(arch, device), lists, device)
    ref = reference_losses(model, lists, device)
    with caplog.at_level(logging.WARNING, logger="validator.scoring.job"):
        out, used = _engine_run(model, lists, device, token_budget=128)
    assert used.startswith("engine"), used  # the engine's numbers were kept, not the reference's
    assert "differs from the reference" not in caplog.text
    assert_same(out, ref, rel=constants.ENGINE_VERIFY_RTOL_LOWP)
    # and bf16 rounding moves the summed loss by far less than models differ by
    assert_same(out, fp32, rel=1e-2)


def test_a_nan_model_keeps_the_engine_path_instead_of_rescoring_every_sample(tmp_path, monkeypatch):
    import validator.scoring.engine as scoring

    model = load_model(make_model(tmp_path / "nan", "llama", vocab_size=VOCAB), "cpu")
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")  # one broken weight: every logit is NaN
    lists = [ids for ids in token_lists(7) if ids is not None and len(ids) > 1]
    reference_calls = []
    real = scoring.reference_losses
    monkeypatch.setattr(scoring, "reference_losses", lambda m, t, d: reference_calls.append(len(t)) or real(m, t, d))
    out, used = scoring._engine_run(model, lists, "cpu")
    assert all(math.isnan(x) for x in out)
    assert reference_calls == [1]  # the probe only, not the whole model again
    assert used.startswith("engine") and "non-finite" in used
