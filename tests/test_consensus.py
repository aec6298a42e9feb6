"""Consensus with the other validators: Yuma's stake-weighted median, our trust against it,
where we differ, the warning across steps, and the `consensus` command on a LocalChain file."""
import argparse
import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

import constants
from validator.core import consensus as C
from validator.cli import consensus as consensus_cli
from validator.adapters.chain.local import LocalChain

KAPPA = constants.CONSENSUS_KAPPA


# --- an independent computation -----------------------------------------------------------------


def brute_median(stakes: list[float], values: list[float], kappa: float = KAPPA) -> float:
    """Sort the distinct values; the consensus is the first whose cumulative stake share (of
    validators giving at most that value) exceeds 1 - kappa."""
    total = sum(stakes)
    for v in sorted(set(values)):
        if sum(s for s, x in zip(stakes, values) if x <= v) / total > 1 - kappa:
            return v
    return 0.0


def expected(validators: dict[str, tuple[float, dict[int, float]]], uids: list[int]) -> dict[int, float]:
    """Consensus per uid from the raw rows (each divided by its own sum here)."""
    stakes = [s for s, _ in validators.values()]
    rows = [{u: w / sum(r.values()) for u, w in r.items()} for _, r in validators.values()]
    return {u: brute_median(stakes, [r.get(u, 0.0) for r in rows]) for u in uids}


def norm(row: dict[int, float]) -> dict[int, float]:
    return {u: w / sum(row.values()) for u, w in row.items()}


# --- a LocalChain with miners and validators ------------------------------------------------------

N_MINERS = 12


def make_chain(tmp_path, validators: dict[str, tuple[float, dict[int, float]]], us: float = 10.0,
               our_chain_row: dict[int, float] | None = None, **kwargs) -> LocalChain:
    """Miners take uids 0..N_MINERS-1, then the validators in order, then "us"."""
    chain = LocalChain(tmp_path / "chain.sqlite", clock=lambda: 1_000.0, **kwargs)
    for i in range(N_MINERS):
        chain.register(f"miner{i}")
    for hk, (stake, _) in validators.items():
        chain.register(hk, stake=stake, validator=True)
    chain.register("us", stake=us, validator=True)
    chain.advance(50)
    for hk, (_, row) in validators.items():
        chain.set_weights_as(hk, list(row), list(row.values()), 1)
    if our_chain_row:
        chain.set_weights_as("us", list(our_chain_row), list(our_chain_row.values()), 1)
    return chain


def random_field(seed: int, n_validators: int = 5) -> tuple[dict, dict[int, float]]:
    rng = np.random.default_rng(seed)
    validators = {}
    for v in range(n_validators):
        uids = sorted(rng.choice(N_MINERS, size=int(rng.integers(3, N_MINERS)), replace=False).tolist())
        validators[f"val{v}"] = (float(rng.uniform(5, 200)), {u: float(rng.uniform(0.01, 1)) for u in uids})
    ours = {u: float(rng.uniform(0.01, 1)) for u in rng.choice(N_MINERS, size=6, replace=False).tolist()}
    return validators, ours


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_consensus_and_trust_equal_a_brute_force_median(tmp_path, seed):
    validators, ours = random_field(seed)
    chain = make_chain(tmp_path, validators, our_chain_row={0: 1.0})  # our old row must not count
    meta, _ = chain.sync()
    report = C.consensus_report(meta, {str(u): w for u, w in ours.items()}, hotkey="us")

    cons = expected(validators, list(range(N_MINERS)))
    got = {int(u): c for u, c in report["consensus_weights"].items()}
    assert set(got) == {u for u, c in cons.items() if c > 0}
    for u, c in cons.items():
        assert got.get(u, 0.0) == pytest.approx(c, abs=1e-12)
    mine = norm(ours)
    vtrust = sum(min(w, cons[u]) for u, w in mine.items())
    assert 0 < vtrust < 1
    assert report["vtrust"] == pytest.approx(vtrust, abs=1e-12)
    assert report["l1_to_consensus"] == pytest.approx(sum(abs(mine.get(u, 0) - cons[u]) for u in cons), abs=1e-12)
    assert report["uid"] == N_MINERS + len(validators) and report["ours"] == pytest.approx(
        {str(u): w for u, w in mine.items()})

    # each validator: its similarity to us and its own chain trust against the consensus
    ours_vec = np.array([mine.get(u, 0.0) for u in range(N_MINERS)])
    by_hotkey = {v["hotkey"]: v for v in report["validators"]}
    assert set(by_hotkey) == set(validators)
    total = sum(s for s, _ in validators.values())
    for hk, (stake, row) in validators.items():
        theirs = np.array([norm(row).get(u, 0.0) for u in range(N_MINERS)])
        v = by_hotkey[hk]
        assert v["cosine"] == pytest.approx(ours_vec @ theirs / np.linalg.norm(ours_vec) / np.linalg.norm(theirs))
        assert v["l1"] == pytest.approx(np.abs(ours_vec - theirs).sum())
        assert v["vtrust"] == pytest.approx(sum(min(w, cons[u]) for u, w in norm(row).items()))
        assert v["stake_share"] == pytest.approx(stake / total)
    assert [v["stake"] for v in report["validators"]] == sorted((s for s, _ in validators.values()), reverse=True)

    # with our row and stake in the median (what the chain computes once we set these weights)
    with_us = dict(validators, us=(10.0, ours))
    cons_us = expected(with_us, list(range(N_MINERS)))
    assert report["vtrust_if_set"] == pytest.approx(sum(min(w, cons_us[u]) for u, w in mine.items()), abs=1e-12)


def test_weighted_median_is_the_chains_partition_search():
    rng = np.random.default_rng(7)
    for _ in range(500):
        n = int(rng.integers(1, 9))
        stakes = rng.uniform(0.1, 5, size=n)
        values = rng.choice([0.0, 0.05, 0.1, 0.3, 0.5, 0.9], size=n).tolist()  # repeats: ties in value
        share = (stakes / stakes.sum()).tolist()
        assert C.weighted_median(share, values) == brute_median(stakes.tolist(), values)
    # kappa = 32767/65535 is just under 0.5: half the stake giving 0.6 carries it; at 0.6 it does not
    assert C.weighted_median([0.5, 0.5], [0.2, 0.6]) == 0.6
    assert C.weighted_median([0.5, 0.5], [0.2, 0.6], kappa=0.6) == 0.2
    assert C.weighted_median([], []) == 0.0


def test_an_agreeing_validator_gets_full_trust(tmp_path):
    row = {0: 0.5, 3: 0.3, 7: 0.2}
    chain = make_chain(tmp_path, {"a": (100.0, row), "b": (60.0, row), "c": (20.0, {0: 5, 3: 3, 7: 2})})
    report = C.consensus_report(chain.sync()[0], row, hotkey="us")
    assert report["vtrust"] == pytest.approx(1.0) and report["vtrust_if_set"] == pytest.approx(1.0)
    assert report["l1_to_consensus"] == pytest.approx(0.0, abs=1e-12)
    assert report["agreement"] == pytest.approx(1.0) and report["consensus_sum"] == pytest.approx(1.0)
    assert report["top_differences"] == [] and report["notes"] == []


STEP = {"competitions": {"c00": {"models": [
    {"uid": 8, "label": "m8", "status": "scored", "reason": None, "win_rate": 0.8},
    {"uid": 7, "label": "m7", "status": "cached", "reason": None, "win_rate": 0.1},
    {"uid": 5, "label": "m5", "status": "failed", "reason": "hash: secure hash does not match", "win_rate": None},
    {"uid": 6, "label": "m6", "status": "scored", "reason": None, "win_rate": 0.1},
]}}, "weights": {"8": 0.5, "6": 0.3, "7": 0.2}}


def test_disagreeing_on_the_top_uid_costs_its_weight_and_is_named(tmp_path):
    row = {5: 0.5, 6: 0.3, 7: 0.1, 9: 0.1}
    chain = make_chain(tmp_path, {"a": (100.0, row), "b": (50.0, row), "c": (30.0, row)})
    meta, _ = chain.sync()
    report = C.consensus_report(meta, STEP["weights"], STEP, hotkey="us", top_n=4)
    # we give uid 8 the 0.5 the others give uid 5: only 0.3 (uid 6) + 0.1 (uid 7, clipped) is trusted
    assert report["vtrust"] == pytest.approx(0.4)
    assert report["l1_to_consensus"] == pytest.approx(1.2)
    top = report["top_differences"]
    assert [d["uid"] for d in top[:2]] == [5, 8] and {d["uid"] for d in top[2:]} == {7, 9}
    by_uid = {d["uid"]: d for d in top}
    assert by_uid[5]["ours"] == 0 and by_uid[5]["consensus"] == pytest.approx(0.5)
    assert by_uid[5]["diff"] == pytest.approx(-0.5) and by_uid[8]["diff"] == pytest.approx(0.5)
    assert (by_uid[5]["status"], by_uid[5]["reason"]) == ("failed", "hash: secure hash does not match")
    assert (by_uid[8]["status"], by_uid[8]["win_rate"], by_uid[8]["competition"]) == ("scored", 0.8, "c00")
    assert by_uid[7]["status"] == "scored" and by_uid[7]["win_rate"] == 0.1  # cached counts as scored
    assert by_uid[9]["status"] == "not visited" and by_uid[9]["win_rate"] is None
    assert by_uid[8]["hotkey"] == "miner8"
    assert len(C.consensus_report(meta, STEP["weights"], STEP, hotkey="us", top_n=1)["top_differences"]) == 1
    assert json.loads(json.dumps(report, allow_nan=False)) == report  # JSON-able as it is


def test_only_active_permitted_staked_validators_count(tmp_path):
    row = {1: 0.7, 2: 0.3}
    chain = LocalChain(tmp_path / "chain.sqlite", clock=lambda: 1_000.0)
    for i in range(N_MINERS):
        chain.register(f"miner{i}")
    big_stale = chain.register("stale", stake=1_000.0, validator=True)
    chain.register("nopermit", stake=1_000.0, validator=False)
    chain.register("nostake", stake=0.0, validator=True)
    chain.register("a", stake=100.0, validator=True)
    self_weighting = chain.register("b", stake=80.0, validator=True)
    chain.register("us", stake=10.0, validator=True)
    chain.set_weights_as("stale", [4], [1.0], 1)
    chain.advance(constants.CONSENSUS_ACTIVITY_CUTOFF_BLOCKS + 1)
    for hk in ("nopermit", "nostake", "a"):
        chain.set_weights_as(hk, [4] if hk != "a" else [1, 2], [1.0] if hk != "a" else [0.7, 0.3], 1)
    # b gives half to itself: the chain drops the self-weight and renormalises the rest
    chain.set_weights_as("b", [self_weighting, 1, 2], [1.0, 0.7, 0.3], 1)
    meta, _ = chain.sync()
    report = C.consensus_report(meta, row, hotkey="us")
    assert {v["hotkey"] for v in report["validators"]} == {"a", "b"}
    assert [(x["uid"], x["hotkey"]) for x in report["left_out"]] == [(big_stale, "stale")]
    assert "inactive" in report["left_out"][0]["why"]
    assert report["consensus_weights"] == pytest.approx({"1": 0.7, "2": 0.3})
    assert report["vtrust"] == pytest.approx(1.0)


def test_a_validator_with_stake_and_no_weights_counts_as_zeros(tmp_path):
    chain = make_chain(tmp_path, {"a": (60.0, {1: 1.0})})
    chain.register("silent", stake=40.0, validator=True)  # active (just registered), never set weights
    report = C.consensus_report(chain.sync()[0], {1: 1.0}, hotkey="us")
    # 60 % of the stake gives uid 1 all its weight: still a majority
    assert report["consensus_weights"] == {"1": 1.0} and report["vtrust"] == pytest.approx(1.0)
    assert any("hold no weights" in n for n in report["notes"])
    chain.register("silent2", stake=40.0, validator=True)  # now 60 of 140: no majority for uid 1
    report = C.consensus_report(chain.sync()[0], {1: 1.0}, hotkey="us")
    assert report["consensus_weights"] == {} and report["vtrust"] == 0.0


def test_no_other_validator_and_no_weights_give_no_estimate(tmp_path):
    chain = make_chain(tmp_path, {})
    report = C.consensus_report(chain.sync()[0], {1: 1.0}, hotkey="us")
    assert report["vtrust"] is None and report["l1_to_consensus"] is None
    assert any("nothing to agree with" in n for n in report["notes"])
    chain = make_chain(tmp_path / "b", {"a": (5.0, {1: 1.0})})
    report = C.consensus_report(chain.sync()[0], {}, hotkey="us")
    assert report["vtrust"] is None and report["validators"][0]["cosine"] is None
    report = C.consensus_report(chain.sync()[0], {1: 1.0}, hotkey="stranger")
    assert report["uid"] is None and report["vtrust_if_set"] is None
    assert any("not registered" in n for n in report["notes"])


def test_bad_weights_are_named():
    from validator.core.chain import Metagraph

    meta = Metagraph(block=1, block_hash="0x", uids=[0], hotkeys=["h"], coldkeys=[""], stake=[0.0],
                     incentive=[0.0], validator_permit=[False], last_update=[0])
    with pytest.raises(ValueError, match="uid 3.*finite"):
        C.consensus_report(meta, {3: -1.0})
    with pytest.raises(ValueError, match="uid 'x'"):
        C.consensus_report(meta, {"x": 1.0})
    with pytest.raises(ValueError, match="uid 2.*not a number"):
        C.consensus_report(meta, {2: "lots"})
    with pytest.raises(ValueError, match="top_n"):
        C.consensus_report(meta, {0: 1.0}, top_n=-1)


# --- across steps -----------------------------------------------------------------------------


def test_watch_warns_after_two_steps_below_the_threshold():
    watch = C.ConsensusWatch(threshold=0.8)
    seen = []
    for vtrust in (0.9, 0.5, 0.6, 0.7, 0.95, 0.4, None, 0.3):
        report = {"block": 1, "vtrust": vtrust, "top_differences": [{"uid": 4}, {"uid": 9}]}
        msg = watch.observe(report)
        seen.append(msg is not None)
        if msg:
            assert report["warning"] == msg and "below 0.8" in msg and "uids 4, 9" in msg
        if vtrust == 0.7:
            assert "for 3 steps in a row" in msg
    # the run of 0.5, 0.6, 0.7; 0.95 ends it; 0.4 then (no estimate) then 0.3 is two in a row
    assert seen == [False, False, True, True, False, False, False, True]
    assert watch.last["vtrust"] == 0.3 and len(watch.history) == 8
    with pytest.raises(ValueError, match="threshold"):
        C.ConsensusWatch(threshold=2)


def test_watch_uses_the_default_threshold():
    watch = C.ConsensusWatch()
    low = constants.CONSENSUS_VTRUST_WARN - 0.01
    assert [watch.observe({"vtrust": low}) is not None for _ in range(constants.CONSENSUS_WARN_STEPS)][-1]
    assert watch.observe({"vtrust": constants.CONSENSUS_VTRUST_WARN}) is None  # at the threshold: fine


# --- the command ------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="coldint-validator")
    consensus_cli.register_consensus_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    rc = consensus_cli.run_consensus_command(parse(argv), Console(file=out, width=200, color_system=None))
    return rc, out.getvalue()


@pytest.fixture
def chain_file(tmp_path):
    row = {5: 0.5, 6: 0.3, 7: 0.1, 9: 0.1}
    # the command opens the file with the real clock; so does this chain
    chain = LocalChain(tmp_path / "chain.sqlite")
    for i in range(N_MINERS):
        chain.register(f"miner{i}")
    for hk, stake in (("a", 100.0), ("b", 50.0)):
        chain.register(hk, stake=stake, validator=True)
        chain.set_weights_as(hk, list(row), list(row.values()), 1)
    chain.register("us", stake=10.0, validator=True)
    chain.register("idle", stake=10.0, validator=True)
    chain.set_weights_as("us", [8, 6, 7], [0.5, 0.3, 0.2], 1)
    return tmp_path / "chain.sqlite"


def test_command_prints_our_trust_from_the_chain(chain_file):
    rc, text = run(["consensus", "--chain-db", str(chain_file), "--hotkey", "us"])
    assert rc == 0, text
    assert "estimated vtrust 0.400" in text
    lines = {line.split()[1]: line for line in text.splitlines() if line.startswith("│") and len(line.split()) > 2}
    assert "-0.5000" in lines["5"] and "+0.5000" in lines["8"]  # uid: the two largest differences
    assert "miner5" in text and "validators in the consensus" in text


def test_command_json_equals_the_report_of_the_chain_state(chain_file):
    rc, text = run(["consensus", "--chain-db", str(chain_file), "--hotkey", "us", "--json", "--top", "2"])
    assert rc == 0
    report = json.loads(text)
    assert report["vtrust"] == pytest.approx(0.4) and [d["uid"] for d in report["top_differences"]] == [5, 8]
    assert report["ours"] == pytest.approx({"8": 0.5, "6": 0.3, "7": 0.2})
    assert all(d["status"] is None for d in report["top_differences"])  # nothing scored: no reasons


@pytest.mark.parametrize("argv,message", [
    (["--hotkey", "nobody"], "not registered"),
    (["--hotkey", "idle"], "holds no weights"),
    ([], "needs --hotkey"),
])
def test_command_refuses_with_a_reason(chain_file, argv, message):
    rc, text = run(["consensus", "--chain-db", str(chain_file)] + argv)
    assert rc == 1 and message in text


def test_command_does_not_create_a_missing_chain(tmp_path):
    rc, text = run(["consensus", "--chain-db", str(tmp_path / "none.sqlite"), "--hotkey", "us"])
    assert rc == 1 and "no local chain" in text and not (tmp_path / "none.sqlite").exists()


def test_command_through_the_cli_entry(chain_file, capsys):
    from validator.cli import main as cli

    try:
        args = cli.build_parser().parse_args(["consensus", "--chain-db", str(chain_file), "--hotkey", "us", "--json"])
    except SystemExit:
        pytest.skip("`consensus` is not registered in validator/cli/main.py yet")
    assert cli.main(["consensus", "--chain-db", str(chain_file), "--hotkey", "us", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vtrust"] == pytest.approx(0.4) and args.func is not None


def test_numbers_are_finite_in_every_case(tmp_path):
    validators, ours = random_field(5, n_validators=3)
    report = C.consensus_report(make_chain(tmp_path, validators).sync()[0], ours, hotkey="us")
    for key in ("vtrust", "vtrust_if_set", "l1_to_consensus", "agreement", "consensus_sum"):
        assert math.isfinite(report[key]), key
