"""The real validator loop, two steps, against LocalChain + olah on loopback + local text.

Four tiny Llama models trained for different numbers of steps are published to a local
mirror and committed at different blocks; a fifth hotkey commits a copy of the best one,
and benchmark.json injects one more candidate.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from validator.publish import publish_and_commit
from tests.factories import make_texts, make_tokenizer
from validator.adapters.chain.local import LocalChain
from validator.app import build_validator
from validator.cli.main import build_parser
from validator.cli.run import config_from_args
from validator.adapters.competitions_source import load_competitions
from validator.demo.field import train_model
from validator.adapters.evalcache import EvalCache
from validator.adapters.hub.localhub import LocalHub

VALIDATOR = "5ValidatorHotkey"
MINERS = {f"5Miner{i}": steps for i, steps in enumerate((0, 8, 25, 60))}
COPIER = "5CopierHotkey"
N_TEXTS = 48
TRAIN = dict(hidden=32, layers=1, heads=2, seq_len=48, batch=8, lr=5e-3)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    root = tmp_path_factory.mktemp("field")
    texts = make_texts(400, seed=1, min_words=10, max_words=60)
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:-N_TEXTS]))
    (corpus / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[-N_TEXTS:]))
    make_tokenizer(root / "tok", texts, vocab_size=300)
    models = {s: train_model(corpus, root / "tok", root / f"m{s}", steps=s, seed=0, **TRAIN)
              for s in sorted(set(MINERS.values()) | {40})}
    comps = {"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 1_000_000,
                     "model_size": 50_000_000, "dataset": str(corpus / "eval.jsonl"), "tokenizer": str(root / "tok"),
                     "pend_size": 5, "max_sequence_len": 512}}
    (root / "competitions.json").write_text(json.dumps(comps))
    (root / "benchmark.json").write_text(json.dumps({
        "cand": {"competition": "c00", "path": str(models[40]), "label": "candidate-40"},
        "broken": {"competition": "c00", "path": str(root / "nowhere")}}))
    return {"root": root, "models": models, "comps": root / "competitions.json", "bench": root / "benchmark.json"}


def _publish_field(field, root: Path, hub: LocalHub) -> LocalChain:
    comp = load_competitions(str(field["comps"]))["c00"]
    chain = LocalChain(root / "chain.sqlite", hotkey=VALIDATOR)
    chain.register(VALIDATOR, stake=1000.0, validator=True)
    for hk, steps in MINERS.items():
        chain.register(hk)
        publish_and_commit(field["models"][steps], comp, hub_spec=f"local:{root / 'mirror'}", chain=chain,
                           signer=hk, hotkey=hk, repo=f"team/m-{steps}", endpoint=hub.endpoint,
                           readback_tries=3, readback_wait_s=0.1, log=lambda m: None)
        chain.advance(50)
    # the copier re-uploads the best model under its own repo and hotkey, later
    chain.register(COPIER)
    publish_and_commit(field["models"][60], comp, hub_spec=f"local:{root / 'mirror'}", chain=chain, signer=COPIER,
                       hotkey=COPIER, repo="thief/m-60", endpoint=hub.endpoint, readback_tries=3,
                       readback_wait_s=0.1, log=lambda m: None)
    chain.advance(150)  # past the weight-setting interval? no: weights may be set on step 1
    return chain


def _args(field, root: Path, hub: LocalHub, *extra: str):
    return build_parser().parse_args([
        "run", "--network", "local", "--chain-db", str(root / "chain.sqlite"), "--hotkey", VALIDATOR,
        "--competitions", str(field["comps"]), "--benchmark", str(field["bench"]),
        "--state-dir", str(root / "state"), "--hf-endpoint", hub.endpoint, "--device", "cpu",
        "--eval-samples", str(N_TEXTS), "--step-interval", "0", *extra])


def test_two_steps_end_to_end(field, tmp_path):
    with LocalHub(tmp_path / "mirror") as hub:
        chain = _publish_field(field, tmp_path, hub)
        validator = build_validator(config_from_args(_args(field, tmp_path, hub)))
        first, second = list(validator.run(2))

    uid = {hk: chain.sync()[0].uid_of(hk) for hk in list(MINERS) + [COPIER]}
    rows = {m["label"]: m for m in first["competitions"]["c00"]["models"]}
    # every model scored; the copy too, as live scores it, with a note naming the original. Its
    # content is the original's: whichever of the two is evaluated second reuses the losses
    for hk in list(MINERS)[:-1]:
        assert rows[f"uid {uid[hk]}"]["status"] == "scored", rows[f"uid {uid[hk]}"]
    copy_row, original = rows[f"uid {uid[COPIER]}"], rows[f"uid {uid['5Miner3']}"]
    assert {copy_row["status"], original["status"]} == {"scored", "cached"}, (copy_row, original)
    assert copy_row["reason"].startswith("copy:") and not original["reason"], copy_row
    assert copy_row["content_hash"] == original["content_hash"]
    # identical losses never beat the older original (strict <): the copy wins nothing
    assert copy_row["loss_per_token"] == pytest.approx(original["loss_per_token"])
    assert copy_row["chain_win_rate"] == 0.0 and copy_row["weight"] == 0.0
    # better-trained models rank above worse ones (ordered by mean loss and by win rate)
    by_steps = {steps: rows[f"uid {uid[hk]}"] for hk, steps in MINERS.items()}
    lpt = [by_steps[s]["loss_per_token"] for s in sorted(by_steps)]
    assert lpt == sorted(lpt, reverse=True), lpt
    assert by_steps[60]["win_rate"] > 0.5
    # the benchmark entry appears, ranked, with no weight; the broken one is reported
    cand = rows["candidate-40"]
    assert cand["uid"] is None and cand["weight"] is None and cand["win_rate"] is not None
    assert any("broken" in p for p in first["problems"])
    # weights written to LocalChain as the validator, none to the copier
    on_chain = chain.weights_of(VALIDATOR)
    assert on_chain and abs(sum(on_chain.values()) - 1) < 1e-6
    assert max(on_chain, key=on_chain.get) == uid["5Miner3"]
    assert on_chain.get(uid[COPIER], 0.0) == 0.0
    assert first["weights_set"].startswith("set")
    # step 2: same samples, so only the re-checks are computed
    n_models = len(MINERS) + 1
    assert 0 < second["forward_samples"] <= n_models * 10
    assert second["forward_samples"] < first["forward_samples"] / 4
    second_rows = {m["label"]: m for m in second["competitions"]["c00"]["models"]}
    chain_labels = {f"uid {uid[hk]}" for hk in list(MINERS) + [COPIER]}
    assert {second_rows[lab]["status"] for lab in chain_labels | {"candidate-40"}} == {"cached"}
    assert second_rows[f"uid {uid[COPIER]}"]["reason"].startswith("copy:")  # still known as the copy
    # the whole field stays in the pool (7 places) and keeps its verified snapshot
    state = json.loads((tmp_path / "state" / "validator_state.json").read_text())
    assert sorted(state["selection"]["competitions"]["c00"]["pool"]) == sorted(uid.values())
    assert all(state["records"][hk]["reason"] is None and state["records"][hk]["content_hash"]
               for hk in list(MINERS) + [COPIER])


def test_killed_mid_step_resumes_without_losing_cached_losses(field, tmp_path):
    with LocalHub(tmp_path / "mirror") as hub:
        _publish_field(field, tmp_path, hub)
        args = ["run", "--network", "local", "--chain-db", str(tmp_path / "chain.sqlite"), "--hotkey", VALIDATOR,
                "--competitions", str(field["comps"]), "--state-dir", str(tmp_path / "state"),
                "--hf-endpoint", hub.endpoint, "--device", "cpu", "--eval-samples", str(N_TEXTS),
                "--step-interval", "0", "--steps", "1", "--dont-set-weights", "--log-level", "WARNING"]
        cache_file = tmp_path / "state" / "evalcache"
        proc = subprocess.Popen([sys.executable, "-m", "validator.cli.main", *args], stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / "stderr.txt", "w"), start_new_session=True)
        deadline = time.monotonic() + 240
        saved = None
        while time.monotonic() < deadline and proc.poll() is None:
            files = [f for f in cache_file.glob("*.json") if not f.name.endswith(".samples.json")] \
                if cache_file.exists() else []
            if files:
                cache = EvalCache.load(files[0])
                if cache.losses.models():
                    saved = {k: {sid: cache.losses.get(k, sid) for sid in cache.losses.cached(k)}
                             for k in cache.losses.models()}
                    break
            time.sleep(0.2)
        if proc.poll() is None:  # one that finished on its own fails the asserts below, with their reason
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert saved, "the validator saved no losses before it was killed"
        assert len(saved) < len(MINERS), "killed too late: every model was already scored"

        # restart: resumes from the saved state and keeps every saved loss
        validator = build_validator(config_from_args(build_parser().parse_args(args)))
        (report,) = list(validator.run(1))
        cache = EvalCache.load(files[0])
        for key, losses in saved.items():
            for sid, value in losses.items():
                after = cache.losses.get(key, sid)
                assert after == value or (np.isnan(value) and np.isnan(after))
        n_all = len(MINERS) * N_TEXTS
        assert report["forward_samples"] <= n_all - sum(len(v) for v in saved.values()) + 10 * len(saved)
