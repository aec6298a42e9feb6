"""Two CPU "devices": the validator's step scores a competition's models on two workers at
once, and the merged loss matrix equals the one of a single worker."""
from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from tests.factories import make_model, make_tokenizer
from validator.adapters.chain.local import LocalChain
from validator.core.competitions import parse_competitions
from validator.core.identity import ModelId
from validator.step.validator import Settings, Validator
from validator.scoring.dispatch import make_score_fn

VOCAB = 300


class Texts:
    def sample(self, seed: int, n: int):
        return [(f"s{i}", "the model of the chain and its river " * (1 + i % 4)) for i in range(min(n, 10))]


def _step(tmp: Path, models: dict[str, Path], tok: Path, devices: list[str] | None) -> dict:
    comps = parse_competitions({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 10**9,
                                        "model_size": 10**9, "dataset": "x", "tokenizer": str(tok)}})
    chain = LocalChain(tmp / "chain.sqlite", hotkey="5Val", clock=lambda: 0.0)
    chain.register("5Val", stake=10.0, validator=True)
    for i, hk in enumerate(models):
        chain.register(hk)
        digest = base64.b64encode(hashlib.sha256(hk.encode()).digest()).decode()
        chain.commit(hk, ModelId("team", f"m{i}", f"{i:040x}", digest, "c00").to_commitment())
        chain.advance(10)
    score = make_score_fn("cpu", tmp / "tok", devices=devices)
    try:
        v = Validator(chain, lambda: comps, lambda mid, hk, comp, deadline=None: (models[hk], "c-" + hk), score,
                      lambda name, **kw: Texts(), Settings(state_dir=tmp / "state", eval_samples=10, offline=True),
                      hotkey="5Val")
        return v.step()
    finally:
        score.close()


def test_two_cpu_devices_give_the_single_worker_losses(tmp_path):
    tok = tmp_path / "tokenizer"
    make_tokenizer(tok, vocab_size=VOCAB)
    models = {f"5Miner{i}": make_model(tmp_path / f"m{i}", "llama", vocab_size=VOCAB, seed=i, layers=1 + i % 2)
              for i in range(3)}
    one = _step(tmp_path / "one", models, tok, None)
    two = _step(tmp_path / "two", models, tok, ["cpu", "cpu"])
    rows_one = {m["uid"]: m for m in one["competitions"]["c00"]["models"]}
    rows_two = {m["uid"]: m for m in two["competitions"]["c00"]["models"]}
    assert set(rows_one) == set(rows_two) and len(rows_one) == 3
    for uid, r in rows_one.items():
        assert r["status"] == rows_two[uid]["status"] == "scored", (r, rows_two[uid])
        assert rows_two[uid]["losses_per_token"] == r["losses_per_token"]  # the same matrix, merged
        assert rows_two[uid]["chain_win_rate"] == r["chain_win_rate"]
    assert one["weights"] == two["weights"]
