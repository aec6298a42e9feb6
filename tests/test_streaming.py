"""Layer-streamed scoring equals the resident engine (fp32, 1e-5 relative) under a memory cap
that forces several groups and one decoder layer at a time."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from tests.factories import make_model
from validator.scoring import engine
from validator.scoring import stream_plan, streaming
from validator.scoring.engine import ScoringError
from validator.scoring.model_load import load_model

VOCAB = 300
TOKEN_BUDGET = 64


def _tokens(n: int = 40, seed: int = 0) -> list:
    rng = random.Random(seed)
    out = [[rng.randrange(VOCAB) for _ in range(rng.randrange(2, 60))] for _ in range(n)]
    return out + [None, [7]]  # a failed sample (inf) and one with nothing to predict (0)


def _shape(model_dir: Path) -> stream_plan.Shape:
    """The model's sizes as the planner sees them (from a run under an ample cap)."""
    _, info = streaming.streamed_losses(model_dir, [[1, 2, 3]], "cpu", max_device_bytes=10**10,
                                        token_budget=TOKEN_BUDGET)
    import json

    cfg = json.loads((model_dir / "config.json").read_text())
    hidden = cfg.get("hidden_size") or cfg.get("n_embd")
    inter = cfg.get("intermediate_size") or cfg.get("ffn_dim") or 4 * hidden
    return stream_plan.Shape(hidden, inter, VOCAB, 4, info.resident_bytes, info.layer_bytes)


def _cap_for_groups(model_dir: Path, tokens: list, at_least: int) -> int:
    """The largest cap (searched on the planner itself) that still splits the samples into
    `at_least` groups: the run then cannot hold them all."""
    shape = _shape(model_dir)
    lengths = {i: len(t) for i, t in enumerate(tokens) if t is not None and len(t) >= 2}
    chunk = TOKEN_BUDGET
    lo = shape.resident_bytes + shape.layer_bytes + chunk * VOCAB * 4 + 1
    hi = lo * 100
    best = None
    for _ in range(60):
        mid = (lo + hi) // 2
        try:
            _, _, groups = stream_plan.plan(lengths, shape, mid, TOKEN_BUDGET, chunk)
        except MemoryError:
            lo = mid + 1
            continue
        if len(groups) >= at_least:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    assert best is not None, "no cap gives that many groups"
    return best


ARCHS = [("llama", {}), ("phi3", {}), ("llama", {"tie_word_embeddings": True}), ("qwen2", {}), ("mistral", {}),
         ("phi", {}), ("gpt2", {}), ("opt", {})]


@pytest.mark.parametrize("arch,extra", ARCHS, ids=[a + ("-tied" if e else "") for a, e in ARCHS])
def test_streamed_losses_equal_the_resident_engine(tmp_path, arch, extra):
    model_dir = make_model(tmp_path / arch, arch, vocab_size=VOCAB, layers=3, **extra)
    tokens = _tokens()
    resident = engine.engine_losses(load_model(model_dir, "cpu"), tokens, "cpu")
    cap = _cap_for_groups(model_dir, tokens, at_least=3)
    streamed, info = streaming.streamed_losses(model_dir, tokens, "cpu", max_device_bytes=cap,
                                               token_budget=TOKEN_BUDGET)
    assert info.groups >= 3 and info.max_layers_resident == 1, info
    assert info.weight_bytes_read == info.groups * info.layers * info.layer_bytes  # read once per group
    assert streamed[-2] == math.inf and streamed[-1] == 0.0
    for s, r in zip(streamed[:-2], resident[:-2]):
        assert s == pytest.approx(r, rel=1e-5)
    assert info.describe() == f"streamed ({info.groups} groups)"


def test_a_layer_that_does_not_fit_is_oom_with_the_sizes(tmp_path):
    model_dir = make_model(tmp_path / "m", "llama", vocab_size=VOCAB, layers=2)
    with pytest.raises(ScoringError) as err:
        streaming.streamed_losses(model_dir, _tokens(5), "cpu", max_device_bytes=50_000, token_budget=TOKEN_BUDGET)
    assert err.value.reason == "oom"
    assert "one decoder layer" in str(err.value) and "MiB" in str(err.value)


def test_a_crash_mid_stream_returns_nothing(tmp_path):
    model_dir = make_model(tmp_path / "m", "llama", vocab_size=VOCAB, layers=3)
    tokens = _tokens()
    cap = _cap_for_groups(model_dir, tokens, at_least=3)
    seen = []

    def crash(group: int, layer: int) -> None:
        seen.append((group, layer))
        if (group, layer) == (1, 1):
            raise RuntimeError("killed mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        streaming.streamed_losses(model_dir, tokens, "cpu", max_device_bytes=cap, token_budget=TOKEN_BUDGET,
                                  on_layer=crash)
    assert seen[-1] == (1, 1) and (0, 2) in seen  # the first group had finished: still nothing returned


def test_an_architecture_whose_checkpoint_names_differ_falls_back_with_a_reason(tmp_path):
    model_dir = make_model(tmp_path / "m", "gpt_neox", vocab_size=VOCAB, layers=2)
    with pytest.raises(stream_plan.Unsupported) as err:
        streaming.streamed_losses(model_dir, _tokens(5), "cpu", max_device_bytes=10**9)
    assert "lm_head" in str(err.value)


def test_should_stream_follows_the_cap(tmp_path):
    model_dir = make_model(tmp_path / "m", "llama", vocab_size=VOCAB, layers=2)
    size = stream_plan.model_bytes(model_dir)
    assert stream_plan.should_stream(model_dir, "cpu", None) is None  # no cap on CPU: resident
    assert stream_plan.should_stream(model_dir, "cpu", size * 10) is None  # fits with room to spare
    assert stream_plan.should_stream(model_dir, "cpu", size // 2) == size // 2


def test_the_cost_model_takes_the_slower_of_copies_and_compute():
    info = stream_plan.StreamInfo(groups=3, layers=10, layer_bytes=1000)
    assert stream_plan.predicted_seconds(info, copy_bandwidth=1000.0, flops=10.0, achieved_flops=1.0) == 30.0
    assert stream_plan.predicted_seconds(info, copy_bandwidth=1000.0, flops=100.0, achieved_flops=1.0) == 100.0


def test_a_model_over_the_cap_is_scored_streamed_through_the_scoring_job(tmp_path):
    """score_model_job (what the isolated worker runs) streams a model too large for the cap and
    says so; its losses equal the resident job's."""
    from tests.factories import make_tokenizer
    from validator.core.competitions import Competition
    from validator.scoring.job import score_model_job

    tok = tmp_path / "tok"
    make_tokenizer(tok, vocab_size=VOCAB)
    model_dir = make_model(tmp_path / "m", "llama", vocab_size=VOCAB, layers=3)
    comp = Competition(id="c00", reward=1.0, model_types=["LlamaForCausalLM"], parameters=10**9, model_size=10**9,
                       dataset="x", tokenizer=str(tok)).model_dump(mode="json")
    samples = [[f"s{i}", "the model of the chain " * (1 + i % 5)] for i in range(12)]
    resident = score_model_job(str(model_dir), samples, comp, tokenizer_path=str(tok))
    cap = stream_plan.model_bytes(model_dir)  # the weights do not fit with room to spare: streamed
    streamed = score_model_job(str(model_dir), samples, comp, tokenizer_path=str(tok), max_device_bytes=cap)
    assert resident["failure"] is None and streamed["failure"] is None
    assert streamed["engine"].startswith("streamed (") and not resident["engine"].startswith("streamed")
    for sid, loss in resident["losses"].items():
        assert streamed["losses"][sid] == pytest.approx(loss, rel=1e-5)


def test_a_validator_step_under_a_device_cap_reports_the_model_streamed(tmp_path):
    """The validator's scoring port with a device cap (what `run --max-device-memory` wires):
    the step's row says how the model was scored."""
    import base64
    import hashlib

    from tests.factories import make_tokenizer
    from validator.adapters.chain.local import LocalChain
    from validator.core.competitions import parse_competitions
    from validator.core.identity import ModelId
    from validator.step.validator import Settings, Validator
    from validator.scoring.dispatch import make_score_fn

    tok = tmp_path / "tok"
    make_tokenizer(tok, vocab_size=VOCAB)
    model_dir = make_model(tmp_path / "m", "llama", vocab_size=VOCAB, layers=3)
    comps = parse_competitions({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 10**9,
                                        "model_size": 10**9, "dataset": "x", "tokenizer": str(tok)}})
    chain = LocalChain(tmp_path / "chain.sqlite", hotkey="5Val", clock=lambda: 0.0)
    chain.register("5Val", stake=10.0, validator=True)
    chain.register("5Miner")
    digest = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    chain.commit("5Miner", ModelId("team", "big", "a" * 40, digest, "c00").to_commitment())
    chain.advance(10)

    class Texts:
        def sample(self, seed: int, n: int):
            return [(f"s{i}", "the model of the chain " * (1 + i % 5)) for i in range(min(n, 12))]

    score = make_score_fn("cpu", tmp_path / "tokcache", isolate=False,
                          max_device_bytes=stream_plan.model_bytes(model_dir))
    v = Validator(chain, lambda: comps, lambda mid, hk, comp, deadline=None: (model_dir, "content"), score,
                  lambda name, **kw: Texts(), Settings(state_dir=tmp_path / "state", eval_samples=12, offline=True),
                  hotkey="5Val")
    (row,) = v.step()["competitions"]["c00"]["models"]
    assert row["status"] == "scored" and row["engine"].startswith("streamed ("), row
