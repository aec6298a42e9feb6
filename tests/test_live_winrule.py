"""winrule.json (tests/data/live-compat/README.md section 3): one competition step of the live
validator, replayed through winrule.competition_step with each case's permutation.

Deliberate differences, asserted as OUR behaviour:
- W18: zero complete groups is a ZeroDivisionError that ends the live step; ours returns an
  error, no weights (the caller keeps the previous ones) and the evaluated list as the pool.
- Ties in win rate (W25): the pool is cut from a STABLE ascending sort, i.e. the
  `next_pool_without_avx512` / `discarded_uids_without_avx512` answers, on every machine.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from validator.core import winrule

DATA = Path(__file__).parent / "data" / "live-compat" / "winrule.json"
CASES = json.loads(DATA.read_text())["cases"]
BY_ID = {c["id"]: c for c in CASES}
RTOL = 1e-12  # numpy's power differs in the last bits between builds (README)


def num(x):
    return float(x) if isinstance(x, str) else x  # "nan" / "inf" / "-inf" as strings


def rows_of(case):
    return [None if r is None else [num(v) for v in r] for r in case["losses"]]


def step(case, **kw):
    p = case["params"]
    return winrule.competition_step(
        rows_of(case), case["blocks"], case["now"], group_samples=p["group_samples"],
        advantage_initial=p["advantage_initial"], advantage_decay=p["advantage_decay"],
        weight_skew_factor=p["weight_skew_factor"], pool_size=p["pool_size"],
        permutation=case["permutation"], **kw)


def uids_at(case, indices):
    return [case["uids"][i] for i in indices]


@pytest.mark.parametrize("cid", list(BY_ID))
def test_case(cid):
    case = BY_ID[cid]
    want = case["expected"]
    got = step(case)
    uids = case["uids"]
    assert got.ok == [r is not None for r in case["losses"]]
    if want["raises"] is not None:
        assert cid == "W18" and want["raises"].startswith("ZeroDivisionError")
        # ours: no crash, nothing computed, the previous weights stay, the pool is the evaluated list
        assert got.error is not None and "no complete group" in got.error
        assert got.weights is None and got.wins is None and got.win_rate is None
        assert sorted(uids_at(case, got.next_pool)) == sorted(uids) and got.discarded == []
        return
    assert got.error is None
    assert got.wins == want["wins"]
    for key in ("win_rate", "win_abs_rate"):
        if want[key] is None:
            assert getattr(got, key) is None
        else:
            assert getattr(got, key) == pytest.approx(want[key], rel=RTOL, abs=0)
    if want["advantage_factor"] is None:
        assert got.advantage_factor is None
    else:
        assert [f is None for f in got.advantage_factor] == [f is None for f in want["advantage_factor"]]
        assert [f for f in got.advantage_factor if f is not None] == \
            pytest.approx([f for f in want["advantage_factor"] if f is not None], rel=RTOL, abs=0)
    if want["weights"] is None:
        assert got.weights is None  # W17: nothing computed, the previous weights stay
    else:
        assert got.weights.tolist() == pytest.approx(want["weights"], rel=RTOL, abs=0)
    want_grouped = want.get("grouped_losses")
    if case["params"]["group_samples"] == 1 or want_grouped is None or all(r is None for r in want_grouped):
        assert got.grouped_losses is None
    else:
        for g, w in zip(got.grouped_losses, want_grouped):
            if w is None:
                assert np.isnan(g).all()  # a failed model's row
            else:
                assert g.tolist() == [num(v) for v in w]  # a 1/64 grid: sums are exact
    pool = want.get("next_pool_without_avx512", want["next_pool"])  # ours: the stable order
    discarded = want.get("discarded_uids_without_avx512", want["discarded_uids"])
    assert sorted(uids_at(case, got.next_pool)) == sorted(pool)
    assert sorted(uids_at(case, got.discarded)) == sorted(discarded)
    assert sum(got.ok) == want["n_evaluated"]


def test_every_case_is_replayed():
    assert len(CASES) == 18 and len(BY_ID) == 18


def test_w25_tie_order_is_the_stable_one_where_avx512_differs():
    """The only case where numpy's tie order changes the pool: ours is the stable order."""
    case = BY_ID["W25"]
    got = step(case)
    want = case["expected"]
    assert want["next_pool"] != want["next_pool_without_avx512"]
    assert uids_at(case, got.next_pool) == want["next_pool_without_avx512"]  # live's order: ascending win rate
    assert uids_at(case, got.discarded) == want["discarded_uids_without_avx512"]


def test_a_seed_gives_our_grouping_permutation_and_is_deterministic():
    case = BY_ID["W01"]
    p = case["params"]
    n = len(case["losses"][0])
    perm = winrule.grouping_permutation(n, p["group_samples"], seed=7)
    assert sorted(perm) == list(range(n - n % p["group_samples"]))
    by_seed = step({**case, "permutation": None}, seed=7)
    by_perm = step({**case, "permutation": perm})
    assert by_seed.wins == by_perm.wins and np.array_equal(by_seed.grouped_losses, by_perm.grouped_losses)
    assert winrule.grouping_permutation(105, 10, seed=7) == winrule.grouping_permutation(105, 10, seed=7)
    assert len(winrule.grouping_permutation(105, 10, seed=7)) == 100  # the last 5 are dropped
    with pytest.raises(ValueError, match="permutation or a seed"):
        step({**case, "permutation": None})
    with pytest.raises(ValueError, match="permutation"):
        step({**case, "permutation": perm[:-1]})


def test_injected_models_are_never_discarded():
    case = BY_ID["W15"]
    injected = [u in (4, 40) for u in case["uids"]]
    got = step(case, injected=injected)
    assert sorted(uids_at(case, got.discarded)) == [5]  # 4 and 40 are dropped too, but injected
    assert sorted(uids_at(case, got.next_pool)) == sorted(case["expected"]["next_pool"])


def test_discard_needs_a_non_nan_loss_with_group_samples_one():
    """A dropped model whose every loss is NaN is not marked (live: it was not evaluated)."""
    rows = [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [math.nan] * 3]
    got = winrule.competition_step(rows, [10, 20, 30], 100, group_samples=1, advantage_initial=0.004,
                                   advantage_decay=0.995, weight_skew_factor=2.0, pool_size=1)
    assert got.wins == [3, 0, 0] and got.next_pool == [0]
    assert got.discarded == [1]  # 2 is all NaN
    assert got.weights.tolist() == [1.0, 0.0, 0.0]


def test_nothing_evaluated_and_bad_input():
    assert winrule.competition_step([], [], 5, group_samples=1, advantage_initial=0.0, advantage_decay=1.0,
                                    weight_skew_factor=1.0, pool_size=3).weights.tolist() == []
    kw = dict(group_samples=1, advantage_initial=0.004, advantage_decay=0.995, weight_skew_factor=2.0, pool_size=3)
    with pytest.raises(ValueError, match="same number of samples"):
        winrule.competition_step([[1.0, 2.0], [1.0]], [1, 2], 5, **kw)
    with pytest.raises(ValueError, match="blocks: expected 2"):
        winrule.competition_step([[1.0], [1.0]], [1], 5, **kw)
    with pytest.raises(ValueError, match=r"blocks\[1\]"):
        winrule.competition_step([[1.0], [1.0]], [1, "x"], 5, **kw)
    with pytest.raises(ValueError, match="pool_size"):
        winrule.competition_step([[1.0]], [1], 5, **{**kw, "pool_size": 0})
    one = winrule.competition_step([[]], [1], 5, **kw)  # no samples at all
    assert one.weights is None and one.error is not None and one.next_pool == [0]
