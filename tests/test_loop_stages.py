"""The loop's stages with fast fakes: a real LocalChain, synthetic losses, no torch."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from validator.core.failures import FetchError
import constants
from validator.core.chain import ChainError, Commitment, Metagraph
from validator.adapters.chain.local import LocalChain
from validator.core.competitions import parse_competitions
from validator.core.identity import ModelId
from validator.adapters.leaderboard import load_report, render
from validator.step.select import parse_commitments
from validator.step.validator import Settings, Validator
from validator.core.scores import ScoreResult
from validator.core.selection import SelectionState

VAL = "5Val"
COMPS = parse_competitions({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 10**6,
                                    "model_size": 10**8, "dataset": "texts", "pend_size": 10}})


def _hash(s: str) -> str:
    return base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()


def _commit(name: str, comp: str = "c00") -> str:
    return ModelId("team", name, hashlib.sha1(name.encode()).hexdigest(), _hash(name), comp).to_commitment()


def _meta(hotkeys: list[str], weights=None, stake=None) -> Metagraph:
    n = len(hotkeys)
    return Metagraph(block=1000, block_hash="0x0", uids=list(range(n)), hotkeys=hotkeys, coldkeys=[""] * n,
                     stake=stake or [0.0] * n, incentive=[0.0] * n, validator_permit=[False] * n,
                     last_update=[0] * n, weights=weights or {})


# --- pure stages -------------------------------------------------------------------------------


def test_parse_commitments_drops_bad_and_dedupes_as_live():
    meta = _meta(["a", "b", "c", "d", "e", "f", "g"])
    same = _commit("m1")
    mid = ModelId.from_commitment(same)
    other_hash = ModelId(mid.namespace, mid.name, mid.commit, _hash("other"), "c00").to_commitment()
    commits = {"a": Commitment(same, 20), "b": Commitment(same, 10), "c": Commitment("garbage", 5),
               "d": Commitment(_commit("x", "c99"), 5), "gone": Commitment(_commit("g"), 1),
               "e": Commitment(_commit("m2"), 30), "f": Commitment(other_hash, 15),
               "g": Commitment(_commit("m2"), 30)}
    entries, problems = parse_commitments(meta, commits, COMPS)
    # b holds team/m1|commit first; a (the same text, later) and f (the same repo and commit under
    # another hash, later) are dropped: the key is namespace/name|commit, not the whole text
    assert set(entries) == {"b", "e", "g"}
    assert "same model as uid 1, committed earlier" in problems["a"]
    assert "same model as uid 1, committed earlier" in problems["f"]
    assert "e" not in problems and "g" not in problems  # equal blocks keep both (live)
    assert "invalid commitment" in problems["c"] and "unknown competition 'c99'" in problems["d"]
    assert "gone" not in problems  # a deregistered hotkey's stale commitment is silently ignored
    assert entries["b"].block == 10 and entries["b"].uid == 1


# --- whole steps with fakes -------------------------------------------------------------------


class Source:
    name = "texts"

    def sample(self, seed: int, n: int):
        return [(f"s{i}", "word " * (5 + i % 7)) for i in range(min(n, 40))]


def _field(tmp_path: Path, qualities: dict[str, float]):
    chain = LocalChain(tmp_path / "chain.sqlite", hotkey=VAL, clock=lambda: 0.0)
    chain.register(VAL, stake=100.0, validator=True)
    paths = {}
    for hk, q in qualities.items():
        chain.register(hk)
        chain.commit(hk, _commit(hk))
        chain.advance(10)
        paths[hk] = tmp_path / "models" / hk
        paths[hk].mkdir(parents=True)
    chain.advance(200)
    return chain, paths


def _validator(tmp_path, chain, qualities, calls, bench=None, score_hook=None, clock=None, comps=None,
               **settings):
    def fetch(mid, hotkey, comp, deadline=None):
        return tmp_path / "models" / hotkey, _hash("content-" + hotkey)

    def score(path, samples, comp, step_samples=None):
        calls.append((path.name, len(samples)))
        if score_hook:
            score_hook(path)
        q = qualities[path.name]
        return ScoreResult({sid: q * len(t) for sid, t in samples}, {sid: len(t.split()) for sid, t in samples},
                           None, 0.0)

    from validator.adapters.candidates import BenchmarkCandidates

    s = Settings(state_dir=tmp_path / "state", eval_samples=40, step_interval_s=0, **settings)
    comps = comps or COMPS
    return Validator(chain, lambda: comps, fetch, score, lambda name, **kw: Source(), s, hotkey=VAL,
                     clock=clock or time.time, candidates=BenchmarkCandidates(bench))


def _candidate_files(cand: Path) -> None:
    """The smallest dir a validator would hash once published: a config naming a model type
    and safetensors weights (benchmark candidates are hashed over that download set)."""
    (cand / "config.json").write_text('{"model_type": "llama"}')
    (cand / "model.safetensors").write_bytes(b"v1")


class Clock:
    """The validator's wall clock, moved by the test (chain updates: every 16 minutes of it)."""

    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def _comps(**kw):
    return parse_competitions({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 10**6,
                                       "model_size": 10**8, "dataset": "texts", **kw}})


def _pool(v: Validator, cid: str = "c00") -> list[int]:
    return SelectionState.from_json(v.state.selection).competitions[cid].pool


def _by_hotkey(report: dict) -> dict[str, dict]:
    return {m["hotkey"]: m for m in report["competitions"]["c00"]["models"] if m["hotkey"]}


def _name_fetch(tmp_path: Path, calls: list[str]):
    """A hub whose content is the committed repo name: a recommit is new content."""
    def fetch(mid, hotkey, comp, deadline=None):
        calls.append(mid.name)
        return tmp_path / "models" / mid.name, _hash("content-" + mid.name)
    return fetch


UPDATE = constants.CHAIN_UPDATE_INTERVAL_S


def test_pool_stays_evaluated_newcomers_are_picked_and_a_discarded_model_waits_for_a_recommit(tmp_path):
    q = {"m1": 1.0, "m2": 0.9, "m3": 0.8, "m4": 0.7, "m1b": 0.5}  # loss per character
    chain, _ = _field(tmp_path, {k: q[k] for k in ("m1", "m2", "m3")})
    uid = {hk: chain.sync()[0].uid_of(hk) for hk in ("m1", "m2", "m3")}
    # the clock is placed so that the update of step 3, a day later, has m1's uid in its revisit slice
    period = constants.REVISIT_SLICE_PERIOD_S
    clock, fetched = Clock(period * 10 - 86_400 - 1_000), []
    v = _validator(tmp_path, chain, q, [], clock=clock, comps=_comps(pool_size=2, pend_size=2))
    v.fetch = _name_fetch(tmp_path, fetched)
    # step 1: all three are new commitments: visited, pending, evaluated (pool 0 + pending up to 4)
    r1 = v.step()
    assert {hk: m["status"] for hk, m in _by_hotkey(r1).items()} == {"m1": "scored", "m2": "scored", "m3": "scored"}
    assert sorted(_pool(v)) == sorted([uid["m2"], uid["m3"]])  # the best 2 by win rate; m1 won nothing
    assert SelectionState.from_json(v.state.selection).discarded == {f"m1/{_commit('m1')}"}
    # step 2, before the next chain update: the pool is evaluated again, from the cache; m1 is not
    clock.advance(60)
    r2 = v.step()
    assert {hk: m["status"] for hk, m in _by_hotkey(r2).items()} == {"m2": "cached", "m3": "cached"}
    assert fetched.count("m1") == 1  # no chain update: m1 is not visited (the pool is checked on disk)
    # a new miner: downloaded at the next chain update and evaluated beside the pool; m1, whose
    # win rate stayed below discard_winrate, is neither visited nor evaluated
    chain.register("m4")
    chain.commit("m4", _commit("m4"))
    chain.advance(10)
    clock.advance(86_400 + 2_340)  # a day later: m1's last visit is old enough for a revisit
    r3 = v.step()
    assert set(_by_hotkey(r3)) == {"m2", "m3", "m4"} and _by_hotkey(r3)["m4"]["status"] == "scored"
    assert fetched.count("m4") == 1 and fetched.count("m1") == 1  # visited once, not fetched again to score
    # m1 recommits: the new commitment is downloaded at the next update, evaluated, and wins
    chain.commit("m1", _commit("m1b"))
    chain.advance(10)
    clock.advance(60)
    assert "m1" not in _by_hotkey(v.step())  # between updates a recommit waits, as live
    clock.advance(UPDATE)
    r5 = v.step()
    row = _by_hotkey(r5)["m1"]
    assert fetched.count("m1b") == 1 and row["status"] == "scored" and row["commitment"] == _commit("m1b")
    assert row["chain_win_rate"] == 1.0 and uid["m1"] in _pool(v)


def test_a_top_miner_of_another_validator_is_evaluated_first_and_pending_waits_its_turn(tmp_path):
    q = {"m1": 1.0, "m2": 0.9, "m3": 0.8}
    chain, _ = _field(tmp_path, q)
    uid = {hk: chain.sync()[0].uid_of(hk) for hk in q}
    chain.register("5Big", stake=1000.0, validator=True)
    chain.set_weights_as("5Big", [uid["m1"], uid["m2"]], [0.96, 0.04], 1)  # m1 > 5%, m2 < 5% of its weight
    v = _validator(tmp_path, chain, q, [], comps=_comps(pool_size=1, pend_size=1))
    r1 = v.step()
    first = _by_hotkey(r1)
    # pool 1 + pending 1: the top miner (priority 80) and one new commitment (40 + r) of the other two
    assert len(first) == 2 and "m1" in first
    later = ({"m2", "m3"} - set(first)).pop()
    r2 = v.step()  # no chain update: the uid not picked stays pending and is evaluated now
    assert later in _by_hotkey(r2) and _by_hotkey(r2)[later]["status"] == "scored"


def test_the_chain_update_runs_every_16_minutes_of_the_validators_clock(tmp_path):
    q = {"m1": 1.0, "m2": 0.9}
    chain, _ = _field(tmp_path, q)
    clock, fetched = Clock(), []
    v = _validator(tmp_path, chain, q, [], clock=clock)
    v.fetch = _name_fetch(tmp_path, fetched)
    v.step()
    assert sorted(fetched) == ["m1", "m2"]  # a new commitment is fetched once, not again for scoring
    chain.register("m3")
    chain.commit("m3", _commit("m3"))
    q["m3"] = 0.8
    clock.advance(UPDATE - 1)
    v.step()
    assert "m3" not in fetched
    clock.advance(1)
    assert _by_hotkey(v.step())["m3"]["status"] == "scored" and fetched.count("m3") == 1




def test_benchmark_candidate_never_displaces_chain_weight(tmp_path):
    q = {"m1": 1.0, "m2": 0.9}
    chain, _ = _field(tmp_path, q)
    cand = tmp_path / "cand"
    cand.mkdir()
    _candidate_files(cand)
    q["cand"] = 0.5  # better than every chain model
    bench = tmp_path / "benchmark.json"
    bench.write_text(json.dumps({"c": {"competition": "c00", "path": str(cand), "label": "cand"}}))
    calls = []
    report = _validator(tmp_path, chain, q, calls, bench=bench).step()
    rows = {m["label"]: m for m in report["competitions"]["c00"]["models"]}
    assert rows["cand"]["win_rate"] == 1.0 and rows["cand"]["weight"] is None
    uid2 = chain.sync()[0].uid_of("m2")
    assert rows[f"uid {uid2}"]["weight"] == pytest.approx(1.0)  # the best chain model keeps the weight
    assert chain.weights_of(VAL) == {uid2: pytest.approx(1.0)}


def test_weights_rules_failed_set_is_retried_and_interval_respected(tmp_path):
    q = {"m1": 1.0, "m2": 0.9}
    chain, _ = _field(tmp_path, q)
    calls = []
    v = _validator(tmp_path, chain, q, calls)
    real = chain.set_weights
    chain.set_weights = lambda *a, **k: (_ for _ in ()).throw(ChainError("node down"))
    r1 = v.step()
    assert r1["weights_set"].startswith("not set: node down") and r1["competitions"]["c00"]["models"]
    chain.set_weights = real
    r2 = v.step()  # retried next step, scoring was not blocked
    assert r2["weights_set"].startswith("set")
    rec = chain.weights_record(VAL)
    assert rec.version_key == v.settings.version_key and abs(sum(rec.weights.values()) - 1) < 1e-9
    r3 = v.step()  # same block: within the minimum interval
    assert "interval" in r3["weights_set"]
    v.settings.offline = True
    assert "--offline" in v.step()["weights_set"]


def test_all_zero_weights_are_never_set(tmp_path):
    q = {"m1": 1.0}
    chain, _ = _field(tmp_path, q)
    v = _validator(tmp_path, chain, q, [])
    v.score = lambda path, samples, comp, **kw: ScoreResult({}, {}, "forward: boom", 0.0)
    r = v.step()
    assert r["weights_set"].startswith("not set: no model has weight this step")
    assert chain.weights_record(VAL) is None and v.state.ema == []  # no average made of nothing
    row = r["competitions"]["c00"]["models"][0]
    assert row["status"] == "failed" and "boom" in row["reason"]


def test_stale_sync_keeps_last_metagraph_and_sets_nothing(tmp_path):
    q = {"m1": 1.0, "m2": 0.9}
    chain, _ = _field(tmp_path, q)
    v = _validator(tmp_path, chain, q, [], dont_set_weights=True)
    v.step()
    v.settings.dont_set_weights = False
    chain.sync = lambda: (_ for _ in ()).throw(ChainError("unreachable"))
    r = v.step()
    assert any("unreachable" in p for p in r["problems"])
    assert r["competitions"]["c00"]["models"][0]["status"] == "cached"
    assert "stale" in r["weights_set"] and chain.weights_record(VAL) is None


def test_sigterm_mid_step_saves_state_and_sets_no_weights(tmp_path):
    q = {"m1": 1.0, "m2": 0.9, "m3": 0.8}
    chain, _ = _field(tmp_path, q)
    calls = []
    v = _validator(tmp_path, chain, q, calls,
                   score_hook=lambda path: os.kill(os.getpid(), signal.SIGTERM) if len(calls) == 1 else None)
    before = signal.getsignal(signal.SIGTERM)
    reports = list(v.run(steps=5))
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is given back
    assert len(reports) == 1 and len(calls) == 1  # stopped after the model in flight
    assert reports[0]["weights_set"] == "not set: shutting down mid-step"
    assert chain.weights_record(VAL) is None
    # the scored model's losses were saved; a restart does not recompute them
    calls2 = []
    v2 = _validator(tmp_path, chain, q, calls2)
    v2.step()
    first = calls[0][0]
    assert all(n <= 1 for name, n in calls2 if name == first), calls2


def test_leaderboard_rerenders_saved_step(tmp_path):
    q = {"m1": 1.0, "m2": 0.9}
    chain, _ = _field(tmp_path, q)
    v = _validator(tmp_path, chain, q, [], save_step_json=tmp_path / "step.json")
    report = v.step()
    saved = load_report(tmp_path / "state" / "last_step.json")
    assert saved == json.loads((tmp_path / "step.json").read_text()) == json.loads(json.dumps(report))
    from rich.console import Console

    con = Console(record=True, width=200)
    con.print(render(saved))
    text = con.export_text()
    uid2 = chain.sync()[0].uid_of("m2")
    for m in saved["competitions"]["c00"]["models"]:
        assert m["label"] in text and f"{m['win_rate']:.3f}" in text
    assert "weights above" in text and f"{saved['weights'][str(uid2)]:.4f}" in text
    from validator.cli.main import main

    assert main(["leaderboard", "--state-dir", str(tmp_path / "state")]) == 0
    assert main(["leaderboard", "--state-dir", str(tmp_path / "nothing")]) == 1
    # --out: the step as plots and one HTML page, numbers from the step's own losses
    assert main(["leaderboard", "--state-dir", str(tmp_path / "state"), "--out", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "report.json").read_text())["competitions"]["c00"]
    for m in written["models"]:
        row = next(r for r in saved["competitions"]["c00"]["models"] if r["label"] == m["label"])
        texts = Source().sample(0, 40)
        # live's loss per token: the summed loss over the token ids, n_tokens + 1 (the first is not predicted)
        expected = [q[row["hotkey"]] * len(t) / (len(t.split()) + 1) for _, t in texts]
        assert sorted(m["losses_per_token"]) == pytest.approx(sorted(expected))
    html = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/png;base64" in html and all(m["label"] in html for m in written["models"])
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {"c00_losses.png", "c00_win_rates.png",
                                                                  "c00_win_matrix.png", "consensus.png"}


def test_a_model_whose_scoring_fails_leaves_a_full_pool_and_is_not_rescored_every_step(tmp_path):
    q = {"m1": 1.0, "m2": 0.9}
    chain, _ = _field(tmp_path, q)
    calls = []
    v = _validator(tmp_path, chain, q, calls, comps=_comps(pool_size=1))
    good = v.score

    def score(path, samples, comp, step_samples=None):
        if path.name == "m1":
            calls.append((path.name, len(samples)))
            return ScoreResult({}, {}, "crashed: SIGSEGV", 0.0)
        return good(path, samples, comp, step_samples=step_samples)

    v.score = score
    r1 = v.step()
    assert _by_hotkey(r1)["m1"]["status"] == "failed" and "SIGSEGV" in _by_hotkey(r1)["m1"]["reason"]
    assert _pool(v) == [chain.sync()[0].uid_of("m2")]  # a failed model wins nothing: the pool of 1 is m2
    v.step()  # before the next chain update only the pool is evaluated (live keeps a failed model
    v.step()  # while its pool has room, and evaluates it every step, as here with pool_size 2)
    assert [c for c in calls if c[0] == "m1"] == [("m1", 40)]


def _failing_fetch(failing: set[str], calls: list[str], reason: str = "network"):

    def fetch(mid, hotkey, comp, deadline=None):
        calls.append(hotkey)
        if hotkey in failing:
            raise FetchError(reason, f"{hotkey}: hub said no")
        return Path("/nonexistent") / hotkey, _hash("content-" + hotkey)
    return fetch


def test_transient_download_failure_is_retried_after_its_backoff(tmp_path):
    q = {"m1": 1.0, "m2": 0.9}
    chain, _ = _field(tmp_path, q)
    clock = Clock()
    v = _validator(tmp_path, chain, q, [], clock=clock)
    calls: list[str] = []
    failing = {"m1"}
    v.fetch = _failing_fetch(failing, calls)
    v.retry_after = lambda reason, attempts: 1.5 * UPDATE
    r1 = v.step()
    row = _by_hotkey(r1)["m1"]  # not evaluated, but in the table with the reason
    assert row["status"] == "failed" and row["reason"].startswith("network") and row["win_rate"] is None
    clock.advance(60)
    assert _by_hotkey(v.step())["m1"]["status"] == "failed"  # the record says why, between updates too
    clock.advance(UPDATE)  # a chain update within the backoff: not tried again
    v.step()
    assert calls.count("m1") == 1
    failing.clear()
    clock.advance(UPDATE)  # backoff over: the next update downloads it, and it is evaluated at once
    r4 = v.step()
    assert calls.count("m1") == 2 and _by_hotkey(r4)["m1"]["status"] == "scored"


def test_permanent_download_failure_waits_for_a_new_commitment(tmp_path):
    q = {"m1": 1.0, "m2": 0.9}
    chain, _ = _field(tmp_path, q)
    clock = Clock()
    v = _validator(tmp_path, chain, q, [], clock=clock)
    calls: list[str] = []
    v.fetch = _failing_fetch({"m1"}, calls, reason="hash_mismatch")
    v.retry_after = lambda reason, attempts: None
    v.step()
    for _ in range(3):  # chain updates come and go: the same commitment is not downloaded again
        clock.advance(UPDATE)
        r = v.step()
    assert calls.count("m1") == 1 and _by_hotkey(r)["m1"]["reason"].startswith("hash_mismatch")
    chain.commit("m1", _commit("m1-v2"))  # a new commitment is downloaded at the next update
    clock.advance(UPDATE)
    v.step()
    assert calls.count("m1") == 2


def test_hub_taken_as_down_after_network_failures_in_a_row(tmp_path):
    q = {f"m{i}": 1.0 - i / 10 for i in range(6)}
    chain, _ = _field(tmp_path, q)
    clock = Clock()
    v = _validator(tmp_path, chain, q, [], clock=clock)
    calls: list[str] = []
    failing = set(q)
    v.fetch = _failing_fetch(failing, calls)
    v.retry_after = lambda reason, attempts: 0.0
    r = v.step()
    # one streak over the whole chain update, although it fetches one model at a time
    assert len(calls) == constants.HUB_MAX_NETWORK_FAILURES_IN_A_ROW
    rows = _by_hotkey(r)
    skipped = [m for m in rows.values() if m["status"] == "skipped"]
    assert len(rows) == len(q) and len(skipped) == len(q) - len(calls)
    assert all("hub unreachable" in m["reason"] for m in skipped)
    assert r["weights_set"].startswith("not set: no model has weight this step")
    failing.clear()  # the hub is back: the next chain update visits every model again
    clock.advance(UPDATE)
    r2 = v.step()
    assert {m["status"] for m in _by_hotkey(r2).values()} == {"scored"} and len(_by_hotkey(r2)) == len(q)
    assert r2["weights_set"].startswith("set")


def test_tampered_cached_losses_are_caught_and_recomputed(tmp_path):
    q = {"m1": 1.0, "m2": 0.9}
    chain, _ = _field(tmp_path, q)
    calls = []
    v = _validator(tmp_path, chain, q, calls)
    v.step()
    cache = next(iter(v.caches.values()))
    key = next(k for k in cache.losses.models() if k.endswith(_hash("content-m1")))
    sids = cache.losses.cached(key)
    cache.losses.put(key, {s: 0.001 for s in sids}, {s: 1 for s in sids})  # m1 would now win everything
    calls.clear()
    r = v.step()
    row = {m["hotkey"]: m for m in r["competitions"]["c00"]["models"]}["m1"]
    assert row["reason"] == "re-check mismatch: cached losses reset"
    assert [n for name, n in calls if name == "m1"] == [1, 40]  # the re-check, then the whole row again
    assert [n for name, n in calls if name == "m2"] == [1]  # the honest row: its re-check only
    assert cache.losses.get(key, sids[0]) == pytest.approx(1.0 * len(cache.db.text(sids[0])))
    assert row["win_rate"] == 0.0


def test_table_orders_ties_in_win_rate_by_loss_per_token(tmp_path):
    q = {"m1": 1.2, "m2": 1.0, "m3": 1.1, "m4": 0.5}  # m4 wins every sample
    chain, _ = _field(tmp_path, q)
    r = _validator(tmp_path, chain, q, [], dont_set_weights=True).step()
    assert [m["hotkey"] for m in r["competitions"]["c00"]["models"]] == ["m4", "m2", "m3", "m1"]


def test_benchmark_candidates_are_hashed_again_only_when_their_files_change(tmp_path):
    from validator.adapters.candidates import benchmark_entries
    from validator.core.identity import dir_hash

    cand = tmp_path / "cand"
    cand.mkdir()
    _candidate_files(cand)
    bench = tmp_path / "benchmark.json"
    bench.write_text(json.dumps({"c": {"competition": "c00", "path": str(cand)}}))
    hashed = []
    memo: dict = {}

    def counted(p: Path) -> str:
        hashed.append(p)
        return dir_hash(p)

    (e1,), _ = benchmark_entries(bench, COMPS, memo, hash_dir=counted)
    (e2,), _ = benchmark_entries(bench, COMPS, memo, hash_dir=counted)
    assert len(hashed) == 1 and e1.content_hash == e2.content_hash == dir_hash(cand)
    (cand / "model.safetensors").write_bytes(b"version 2")  # the miner rewrites the candidate
    (e3,), _ = benchmark_entries(bench, COMPS, memo, hash_dir=counted)
    assert len(hashed) == 2 and e3.content_hash == dir_hash(cand) != e1.content_hash


def test_pool_members_not_scored_this_step_keep_their_slot_and_a_partial_step_keeps_pools_and_ema(tmp_path):
    q = {"m1": 1.0, "m2": 0.9, "m3": 0.8}
    chain, _ = _field(tmp_path, q)
    calls = []
    v = _validator(tmp_path, chain, q, calls)
    v.step()
    pool, ema, selection = list(_pool(v)), list(v.state.ema), json.dumps(v.state.selection)
    assert sorted(pool) == sorted(chain.sync()[0].uid_of(hk) for hk in q) and sum(ema) > 0

    # SIGTERM arrives while the first model is re-checked: nothing of the partial step
    # moves the pool or the average
    real_score = v.score

    def stop_after_first(path, samples, comp, **kw):
        v.stopping = True
        return real_score(path, samples, comp, **kw)
    v.score = stop_after_first
    chain.advance(1)
    r = v.step()
    assert r["weights_set"] == "not set: shutting down mid-step"
    assert json.dumps(v.state.selection) == selection and v.state.ema == ema
    assert json.loads((tmp_path / "state" / "validator_state.json").read_text())["ema"] == ema

    # a step whose download budget is used up before any model: all skipped, all keep their slot
    v.stopping, v.score = False, real_score
    v.settings.download_budget_s = -1.0
    chain.advance(1)
    r = v.step()
    assert {m["status"] for m in r["competitions"]["c00"]["models"]} == {"skipped"}
    assert sorted(_pool(v)) == sorted(pool) and v.state.ema == ema  # nothing evaluated: nothing moves

    # and the next normal step visits every one of them again
    v.settings.download_budget_s = 3600.0
    chain.advance(1)
    r = v.step()
    assert {m["hotkey"] for m in r["competitions"]["c00"]["models"]} == set(q)
    assert {m["status"] for m in r["competitions"]["c00"]["models"]} == {"cached"}


def test_a_stop_during_the_chain_update_keeps_its_visits_and_leaves_the_rest_to_the_next_step(tmp_path):
    q = {"m1": 1.0, "m2": 0.9, "m3": 0.8}
    chain, _ = _field(tmp_path, q)
    v = _validator(tmp_path, chain, q, [], clock=Clock())
    fetched: list[str] = []
    name_fetch = _name_fetch(tmp_path, fetched)

    def fetch_then_stop(mid, hotkey, comp, deadline=None):
        v.stopping = True  # SIGTERM while the first model downloads
        return name_fetch(mid, hotkey, comp)
    v.fetch = fetch_then_stop
    r1 = v.step()
    assert fetched == ["m1"] and r1["weights_set"] == "not set: shutting down mid-step"
    v.stopping, v.fetch = False, name_fetch
    r2 = v.step()  # same clock: the interrupted update runs again; m1's visit was kept
    assert {hk: m["status"] for hk, m in _by_hotkey(r2).items()} == {"m1": "scored", "m2": "scored", "m3": "scored"}
    assert fetched.count("m2") == fetched.count("m3") == 1


def test_pool_is_chosen_by_chain_win_rate_a_benchmark_candidate_does_not_push_a_chain_model_out(tmp_path):
    # A is best on half the samples, B on 3 in 10, C on 2 in 10: chain-only pool of 2 = {A, B}.
    # The candidate X beats everyone exactly on B's samples: counted with X, B would win nothing.
    def group(sid: str) -> int:
        i = int(sid[1:]) % 10
        return 0 if i < 5 else (1 if i < 8 else 2)
    table = {"A": (1.0, 2.0, 2.0), "B": (2.0, 1.0, 2.0), "C": (2.0, 2.0, 1.0), "X": (3.0, 0.5, 3.0)}
    chain, _ = _field(tmp_path, {"A": 0, "B": 0, "C": 0})
    cand = tmp_path / "models" / "X"
    cand.mkdir(parents=True)
    _candidate_files(cand)
    bench = tmp_path / "benchmark.json"
    bench.write_text(json.dumps({"x": {"competition": "c00", "path": str(cand), "label": "X"}}))
    v = _validator(tmp_path, chain, {}, [], bench=bench)
    comps = parse_competitions({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 10**6,
                                        "model_size": 10**8, "dataset": "texts", "pool_size": 2}})
    v.competitions = lambda: comps
    v.score = lambda path, samples, comp, **kw: ScoreResult({sid: table[path.name][group(sid)] for sid, _ in samples},
                                                            {sid: 10 for sid, _ in samples}, None, 0.0)
    r = v.step()
    rows = {m["hotkey"] or m["label"]: m for m in r["competitions"]["c00"]["models"]}
    assert rows["B"]["win_rate"] == 0.0 and rows["C"]["win_rate"] > 0  # with X, C outranks B
    assert rows["B"]["chain_win_rate"] > rows["C"]["chain_win_rate"]
    uid = chain.sync()[0].uid_of
    assert sorted(_pool(v)) == sorted([uid("A"), uid("B")])
    assert rows["A"]["pool"] and rows["B"]["pool"] and not rows["C"]["pool"] and "pool" not in rows["X"]
    assert sum(m["weight"] or 0.0 for m in rows.values()) == pytest.approx(1.0) and rows["X"]["weight"] is None


def test_loss_rows_of_content_no_longer_committed_or_listed_are_forgotten(tmp_path):
    q = {"m1": 1.0, "m2": 0.9, "m3": 0.8, "m2b": 0.7, "cand": 0.95}  # loss per word
    chain, _ = _field(tmp_path, {"m1": 1.0, "m2": 0.9, "m3": 0.8})
    (tmp_path / "models" / "m2b").mkdir()
    cand = tmp_path / "models" / "cand"
    cand.mkdir()
    _candidate_files(cand)
    bench = tmp_path / "benchmark.json"
    bench.write_text(json.dumps({"c": {"competition": "c00", "path": str(cand), "label": "cand"}}))
    clock = Clock()
    v = _validator(tmp_path, chain, q, [], bench=bench, clock=clock)
    v.fetch = _name_fetch(tmp_path, [])
    comps = parse_competitions({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 10**6,
                                        "model_size": 10**8, "dataset": "texts", "pool_size": 1}})
    v.competitions = lambda: comps
    v.step()
    losses = v.caches["texts"].losses
    key = {name: f"c00:{comps['c00'].scoring_key}:{_hash('content-' + name)}" for name in q}
    chain_keys = {key["m1"], key["m2"], key["m3"]}
    assert chain_keys < set(losses.models()) and len(set(losses.models()) - chain_keys) == 1  # + the candidate
    chain.commit("m2", _commit("m2b"))  # m2 replaces its model
    bench.write_text("{}")  # the miner stops benchmarking the candidate
    chain.advance(10)
    clock.advance(UPDATE)  # the chain update downloads m2's new model
    assert _by_hotkey(v.step())["m2"]["status"] == "scored"
    # m2's old content and the dropped candidate are gone; m1 (out of the pool of 1, not
    # visited this step) is still committed and keeps its losses for its next visit
    assert set(losses.models()) == {key["m1"], key["m3"], key["m2b"]}
    saved = json.loads(next((tmp_path / "state" / "evalcache").glob("*.json")).read_text())
    assert key["m2"] not in json.dumps(saved)


def test_changing_a_competitions_tokenization_rescores_instead_of_mixing_old_losses(tmp_path):
    q = {"m1": 1.0, "m2": 0.9}
    chain, _ = _field(tmp_path, q)
    calls = []
    v = _validator(tmp_path, chain, q, calls)
    v.step()
    assert sorted(n for _, n in calls) == [40, 40]
    calls.clear()
    v.step()  # same rules: re-checks only
    assert all(n < 40 for _, n in calls)
    longer = parse_competitions({"c00": {**COMPS["c00"].model_dump(exclude={"id"}), "max_sequence_len": 8192}})
    assert longer["c00"].scoring_key != COMPS["c00"].scoring_key
    v.competitions = lambda: longer
    calls.clear()
    v.step()  # losses cached under 4096 tokens are not this rule's losses: every sample again
    assert sorted(n for _, n in calls) == [40, 40]
    assert all(k.startswith(f"c00:{longer['c00'].scoring_key}:") for k in v.caches["texts"].losses.models())


def test_every_scoring_job_sees_the_steps_whole_evaluation_set(tmp_path):
    q = {"m1": 1.0}
    chain, _ = _field(tmp_path, q)
    v = _validator(tmp_path, chain, q, [])
    seen = []
    real = v.score
    v.score = lambda path, samples, comp, step_samples=None: (
        seen.append((len(samples), sorted(step_samples))) or real(path, samples, comp))
    v.step()
    v.step()
    (n1, all1), (n2, all2) = seen
    assert n1 == 40 and n2 < 40  # the second job computes re-checks only...
    assert all1 == all2 and len(all2) == 40  # ...but sees all 40, with their texts
    db = v.caches["texts"].db
    assert all(db.text(sid) == text for sid, text in all2)
