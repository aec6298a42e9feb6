"""weights.json (tests/data/live-compat/README.md section 4): the weights the live validator
sets, replayed through halloffame.hall_of_fame_rewards, weight_vector and u16_weights. Ours is
the HEAD result (REWARDS_MAX_FRACTION 1.0, version key 1017); the v1.0.16 result (cap 0.4)
is checked too through the max_fraction parameter.

Deliberate differences, asserted as OUR behaviour:
- X14, X15: no competition weighted anyone and no hall of fame. Live divides 0 by 0 and the
  NaN becomes an all-zero vector (X15: the previous weights are wiped); ours returns None
  from weight_vector and the caller keeps its previous weights; nothing is set either way
  when there are none.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import constants
from validator.core import halloffame
from validator.core.weights import u16_weights, weight_vector

DATA = Path(__file__).parent / "data" / "live-compat" / "weights.json"
CASES = json.loads(DATA.read_text())["cases"]
BY_ID = {c["id"]: c for c in CASES}
RTOL = 1e-6  # float32
NO_WEIGHTS = {"X14", "X15"}  # live: NaN -> all zero; ours: None (keep the previous weights)
CAPS = {"v1.0.16": 0.4, "HEAD": 1.0}
VERSION_KEYS = {"v1.0.16": 1016, "HEAD": 1017}


def hotkey(uid: int) -> str:
    return f"5Golden{uid:03d}" + "x" * 38


def hotkeys_of(case) -> list[str]:
    placed = {int(u): hk for u, hk in case["hotkeys_placed"].items()}
    return [placed.get(u, hotkey(u)) for u in range(case["n_uids"])]


def vector_of(d, n=constants.SUBNET_UIDS):
    v = np.zeros(n, dtype=np.float32)
    for u, w in d.items():
        v[int(u)] = w
    return v


def run_case(case, version):
    hof = halloffame.hall_of_fame_rewards(case["hall_of_fame"], hotkeys_of(case), case["block_now"],
                                       max_fraction=CAPS[version])
    per_comp = {cid: {int(u): w for u, w in ws.items()} for cid, ws in case["uids_weight"].items()}
    rewards = {cid: c["reward"] for cid, c in case["competitions"].items()}
    prev = None if case["prev_weights"] is None else vector_of(case["prev_weights"])
    # live's vector always has 256 entries; the metagraph's n_uids is what is sent
    vec = weight_vector(per_comp, rewards, hof, constants.SUBNET_UIDS, prev)
    return hof, vec


def assert_close_dict(got: dict, want: dict):
    assert sorted(got) == sorted(int(u) for u in want)
    for u, w in want.items():
        assert got[int(u)] == pytest.approx(w, rel=RTOL, abs=0), f"uid {u}"


def assert_u16(got_uids, got_vals, want_uids, want_vals):
    assert got_uids == want_uids
    assert all(abs(a - b) <= 1 for a, b in zip(got_vals, want_vals)), (got_vals, want_vals)
    assert len(got_vals) == len(want_vals)


@pytest.mark.parametrize("version", ["HEAD", "v1.0.16"])
@pytest.mark.parametrize("cid", list(BY_ID))
def test_case(cid, version):
    case = BY_ID[cid]
    want = case["expected"][version]
    hof, vec = run_case(case, version)
    assert_close_dict(hof, want["reward_weights"])
    assert hof.total == pytest.approx(want["reward_sum"], rel=RTOL, abs=0)
    if cid in NO_WEIGHTS:
        assert not want["set"] and want["weights"] == {}
        assert vec is None  # ours: keep the previous weights (live: NaN -> zeros, X15 wipes them)
        return
    assert vec is not None and vec.dtype == np.float32 and vec.shape == (constants.SUBNET_UIDS,)
    assert_close_dict({u: float(vec[u]) for u in np.nonzero(vec)[0].tolist()}, want["weights"])
    assert float(vec.sum()) == pytest.approx(want["weights_sum"], rel=RTOL)
    uids, vals = u16_weights(vec, case["n_uids"])
    assert bool(uids) == want["set"]
    assert_u16(uids, vals, want["u16_uids"], want["u16_weights"])
    # u16 from the golden float32 vector itself: exact (README)
    golden = vector_of(want["weights"], max(constants.SUBNET_UIDS, case["n_uids"]))
    assert u16_weights(golden, case["n_uids"]) == (want["u16_uids"], want["u16_weights"])
    assert want["version_key"] == VERSION_KEYS[version]


def test_every_case_is_replayed_and_ours_is_head():
    assert len(CASES) == 15
    assert constants.WEIGHTS_VERSION_KEY == 1017 == BY_ID["X01"]["expected"]["HEAD"]["version_key"]
    assert constants.REWARDS_MAX_FRACTION == 1.0
    assert constants.MIN_WEIGHT_SET_INTERVAL_S == 35 * 60


def test_default_cap_is_head():
    case = BY_ID["X05"]  # the live file at block 6,160,000: capped at HEAD's 1.0 only partly
    hof = halloffame.hall_of_fame_rewards(case["hall_of_fame"], hotkeys_of(case), case["block_now"])
    assert hof.total == pytest.approx(case["expected"]["HEAD"]["reward_sum"], rel=RTOL)


def test_x15_keeps_the_previous_weights_which_are_then_set():
    """Ours where live wipes: weight_vector says None, the caller sets its previous vector."""
    case = BY_ID["X15"]
    hof, vec = run_case(case, "HEAD")
    assert vec is None
    prev = vector_of(case["prev_weights"])
    assert u16_weights(prev, case["n_uids"]) == ([11, 21], [65535, round(0.4 / 0.6 * 65535)])


def test_ema_with_previous_weights():
    case = BY_ID["X01"]
    per_comp = {cid: {int(u): w for u, w in ws.items()} for cid, ws in case["uids_weight"].items()}
    rewards = {"c00": 0.5, "c01": 0.5}
    first = weight_vector(per_comp, rewards, {}, 256, None)
    prev = np.zeros(256, dtype=np.float32)
    prev[[11, 99]] = [0.5, 0.5]
    got = weight_vector(per_comp, rewards, {}, 256, prev)
    np.testing.assert_allclose(got, 0.5 * first + 0.5 * prev, rtol=1e-6)
    assert got.dtype == np.float32 and got[99] == np.float32(0.25)
    # all-zero previous: replaced, not averaged
    np.testing.assert_array_equal(weight_vector(per_comp, rewards, {}, 256, np.zeros(256)), first)


def test_hall_of_fame_parse_is_live_lenient():
    problems: list[str] = []
    parsed = halloffame.parse_hall_of_fame({
        "hkA": [{"block": 1, "reward": 1e9}, {"reward": 1.0}, {"block": 3, "reward": 0.1}],
        "hkB": {"block": 1, "reward": 0.1},
        "hkC": [{"block": 2, "reward": "lots"}],
        "hkD": [{"block": 2, "reward": -1.0}],
        "hkE": [{"block": 5, "reward": 0.5, "extra": True}],
        "_comment": "ignored"}, problems)
    assert [e.block for e in parsed["hkA"]] == [1]  # the entry without block stops the rest
    assert parsed["hkB"] == [] and parsed["hkC"] == [] and parsed["hkD"] == []
    assert parsed["hkE"][0].reward == 0.5 and "_comment" not in parsed
    assert len(problems) == 4
    assert any("hkA entry #1" in p and "block" in p and "1 later entries ignored" in p for p in problems)
    assert any("hkB: expected a list" in p for p in problems)
    # the parsed form is accepted where the raw file is
    raw = {"hkA": [{"block": 1, "reward": 2.0}]}
    assert halloffame.hall_of_fame_rewards(halloffame.parse_hall_of_fame(raw), ["hkA"], 1) == \
        halloffame.hall_of_fame_rewards(raw, {0: "hkA"}, 1) == {0: pytest.approx(0.01, rel=1e-6)}
    for bad in ([], "x", None):
        with pytest.raises(halloffame.HallOfFameError, match="expected an object"):
            halloffame.parse_hall_of_fame(bad)


def test_bad_weight_input_is_named():
    with pytest.raises(ValueError, match="'c00': uid 300 outside"):
        weight_vector({"c00": {300: 1.0}}, {"c00": 1.0}, {}, 256)
    with pytest.raises(ValueError, match="'c00': uid 1 weight"):
        weight_vector({"c00": {1: float("nan")}}, {"c00": 1.0}, {}, 256)
    with pytest.raises(ValueError, match="prev: expected 256"):
        weight_vector({"c00": {1: 1.0}}, {"c00": 1.0}, {}, 256, np.ones(3))
    with pytest.raises(ValueError, match="n_uids"):
        u16_weights(np.ones(4, dtype=np.float32), 5)
    assert u16_weights(np.full(4, 1e-6, dtype=np.float32), 4) == ([], [])  # sum < 1e-5
    # a competition not in the config is skipped, as live
    assert weight_vector({"old": {1: 1.0}}, {"c00": 1.0}, {}, 256) is None
