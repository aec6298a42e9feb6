"""Live agreement end to end: the live-format competitions.json and hall_of_fame.json served
over HTTP on loopback (a per-validator competitions-<uid>.json too), a LocalChain field, two
validator steps; the weights on chain equal the live formulas computed here independently."""
from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

import constants
from validator.adapters.chain.local import LocalChain
from validator.adapters.competitions_source import CompetitionsConfig
from validator.adapters.halloffame import HallOfFameSource
from validator.core.identity import ModelId
from validator.core.scores import ScoreResult
from validator.step.validator import Settings, Validator

VAL = "5Validator"
# hotkey -> (competition, loss per character); the lowest loss in each competition wins every sample
MINERS = {"5MinerA": ("c00", 1.00), "5MinerB": ("c00", 0.80), "5MinerC": ("c01", 0.70), "5MinerD": ("c01", 0.95)}
HOF_HOTKEY = "5MinerD"
HOF_BLOCK = 150


def _b64(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def live_competitions(dataset: str) -> dict:
    """The live file's shape and leniency: integral floats, 0/1 booleans, comment keys."""
    return {
        "default": {"comment": "as live", "group_samples": 4, "dataset": dataset, "pool_size": 6,
                    "advantage_initial": 0.004, "advantage_decay": 0.995, "max_sequence_len": 4096,
                    "eval_pages": 16, "rows_per_page": 50, "free_tokenizer": 1, "weight_skew_factor": 2.0,
                    "eval_samples": 40},
        "c00": {"reward": 0.6, "model_types": ["LlamaForCausalLM", "SlicedLlamaForCausalLM"],
                "model_size": 4.2e10, "parameters": 2.01e10, "cap_sample_len": 17500},
        "c01": {"reward": 0.4, "model_types": ["Phi3ForCausalLM", "SlicedPhi3ForCausalLM"],
                "model_size": 4.2e10, "parameters": 2.01e10, "cap_sample_len": 15000},
    }


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test output stays readable
        return


@pytest.fixture
def config_server(tmp_path):
    """A loopback HTTP server over a directory the test writes into."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Texts:
    def sample(self, seed: int, n: int):
        return [(f"s{i}", "word " * (3 + i % 11)) for i in range(min(n, 60))]


def _field(tmp_path: Path) -> LocalChain:
    chain = LocalChain(tmp_path / "chain.sqlite", hotkey=VAL, clock=lambda: 0.0)
    chain.register(VAL, stake=100.0, validator=True)
    for i, (hk, (comp, _)) in enumerate(MINERS.items()):
        chain.register(hk)
        chain.advance(10)
        chain.commit(hk, ModelId("team", f"m{i}", hashlib.sha1(hk.encode()).hexdigest(), _b64(hk), comp)
                     .to_commitment())
    chain.advance(300)
    return chain


def _validator(tmp_path: Path, chain: LocalChain, base: str, clock) -> Validator:
    comps = CompetitionsConfig(None, uid=0, url=f"{base}/competitions.json", state_dir=tmp_path / "state")
    hof = HallOfFameSource(None, url=f"{base}/hall_of_fame.json", state_dir=tmp_path / "state")
    model_dir = tmp_path / "models"

    def competitions():
        comps.maybe_reload()
        return comps.parsed

    def fetch(mid, hotkey, comp, deadline=None):
        (model_dir / hotkey).mkdir(parents=True, exist_ok=True)
        return model_dir / hotkey, _b64("content-" + hotkey)

    def score(path, samples, comp, step_samples=None):
        q = MINERS[path.name][1]
        return ScoreResult({sid: q * len(t) for sid, t in samples}, {sid: len(t.split()) for sid, t in samples},
                           None, 0.0)

    settings = Settings(state_dir=tmp_path / "state", step_interval_s=0)
    return Validator(chain, competitions, fetch, score, lambda name, **kw: Texts(), settings, hotkey=VAL,
                     hall_of_fame=hof, clock=clock)


def expected_vector(meta, block_now: int, hof_entries: list[dict]) -> np.ndarray:
    """The live weight vector of one step, computed here from the formulas (README section 4),
    independently of validator.core.winrule: per competition the best model takes every sample
    (win rate 1, weight 1); hall-of-fame share reward/200 * 0.995 ** ((now - block) / 361);
    (1 - share) * reward per winner, shares added, normalised (float32, as live's torch vector)."""
    uid = {hk: meta.uid_of(hk) for hk in MINERS}
    share = sum(np.float32(e["reward"] / 200 * 0.995 ** ((block_now - e["block"]) / 361)) for e in hof_entries)
    vec = np.zeros(256, dtype=np.float32)
    for comp, reward in {"c00": 0.6, "c01": 0.4}.items():
        winner = min((hk for hk, (c, _) in MINERS.items() if c == comp), key=lambda hk: MINERS[hk][1])
        vec[uid[winner]] = (1 - share) * reward
    vec[uid[HOF_HOTKEY]] += share
    return vec / vec.sum()


def on_chain(vec: np.ndarray) -> dict[int, float]:
    """What the chain holds after a set: u16 = round(w / max * 65535), kept as u16 / sum."""
    top = float(vec.max())
    u16 = {u: round(float(w) / top * 65535) for u, w in enumerate(vec.tolist()) if w > 0}
    total = sum(u16.values())
    return {u: q / total for u, q in u16.items()}


def test_two_steps_with_live_config_sources_set_the_live_weights(tmp_path, config_server):
    root, base = config_server
    good = live_competitions("texts")
    (root / "competitions.json").write_text(json.dumps(live_competitions("unused-dataset")))
    # the per-validator file wins over the shared one; its c02 has a bad value: c02 is disabled alone
    per_uid = {**good, "c02": {"reward": 0.0, "model_types": ["X"], "model_size": 10, "parameters": 10,
                               "pool_size": "six"}}
    (root / "competitions-0.json").write_text(json.dumps(per_uid))
    hof_entries = [{"block": HOF_BLOCK, "reward": 2.0, "desc": "bounty", "url": ""}]
    (root / "hall_of_fame.json").write_text(json.dumps({HOF_HOTKEY: hof_entries, "5NotOnChain": hof_entries}))

    chain = _field(tmp_path)
    now = [1_000_000.0]
    validator = _validator(tmp_path, chain, base, lambda: now[0])
    first = validator.step()
    meta = chain.sync()[0]
    assert first["weights_set"].startswith("set"), first["weights_set"]
    assert set(first["competitions"]) == {"c00", "c01"}
    assert any("c02" in p and "pool_size" in p for p in first["problems"]), first["problems"]
    record = chain.weights_record(VAL)
    assert record.version_key == constants.WEIGHTS_VERSION_KEY == 1017
    v1 = expected_vector(meta, first["block"], hof_entries)
    want, got = on_chain(v1), chain.weights_of(VAL)
    assert set(got) == set(want)
    for u in want:
        assert got[u] == pytest.approx(want[u], rel=1e-9, abs=1e-12)

    # second step 40 minutes later (past the 35-minute interval): EMA 0.5 with the first vector
    chain.advance(200)
    now[0] += 40 * 60
    second = validator.step()
    assert second["weights_set"].startswith("set"), second["weights_set"]
    v2 = expected_vector(chain.sync()[0], second["block"], hof_entries)
    want, got = on_chain(np.float32(0.5) * v2 + np.float32(0.5) * v1), chain.weights_of(VAL)
    assert set(got) == set(want)
    for u in want:
        assert got[u] == pytest.approx(want[u], rel=1e-6)
    # every model of both competitions was evaluated in both steps, each in its pool
    for cid in ("c00", "c01"):
        rows = second["competitions"][cid]["models"]
        assert len(rows) == 2 and all(m["status"] in ("scored", "cached") and m["pool"] for m in rows), rows


def test_weights_are_not_set_again_within_35_minutes(tmp_path, config_server):
    root, base = config_server
    (root / "competitions.json").write_text(json.dumps(live_competitions("texts")))
    (root / "hall_of_fame.json").write_text("{}")
    chain = _field(tmp_path)
    now = [5_000.0]
    validator = _validator(tmp_path, chain, base, lambda: now[0])
    assert validator.step()["weights_set"].startswith("set")
    now[0] += 34 * 60
    assert "interval" in validator.step()["weights_set"]
    now[0] += 2 * 60
    assert validator.step()["weights_set"].startswith("set")


def test_run_without_competitions_flag_reads_the_default_url(tmp_path, config_server, monkeypatch):
    """`coldint-validator run --network local` with no --competitions: the default URL (a
    constant, pointed here at a loopback stand-in) gives the competitions."""
    from validator.cli.main import main

    root, base = config_server
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("some text to sample from " * 20)
    (root / "competitions.json").write_text(json.dumps(live_competitions(str(texts))))
    (root / "hall_of_fame.json").write_text("{}")
    monkeypatch.setattr(constants, "COMPETITIONS_URL", f"{base}/competitions.json")
    monkeypatch.setattr(constants, "HALL_OF_FAME_URL", f"{base}/hall_of_fame.json")
    rc = main(["run", "--network", "local", "--state-dir", str(tmp_path / "state"), "--steps", "1",
               "--step-interval", "0", "--device", "cpu", "--dont-set-weights", "--log-level", "WARNING"])
    assert rc == 0
    report = json.loads((tmp_path / "state" / "last_step.json").read_text())
    assert set(report["competitions"]) == {"c00", "c01"}
    assert not [p for p in report["problems"] if "competitions" in p], report["problems"]
    cached = tmp_path / "state" / constants.CONFIG_CACHE_DIR / "competitions.json"
    assert json.loads(cached.read_text()) == live_competitions(str(texts))  # the last good copy is kept
