import json
import math

import numpy as np
import pytest

from benchmark import intervals
from benchmark import stats as S
from validator.core import winrule

BLOCK_NOW = 10_000
PARAMS = S.WinParams(advantage_initial=0.004, advantage_decay=0.995, weight_skew_factor=1.2)


def make_field(n_samples=2_000, seed=0):
    """Three field models; model 1 (uid 12) is clearly the best and the oldest."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(200, 400, size=n_samples)  # summed loss varies a lot per sample
    noise = lambda scale: rng.normal(0, scale, size=n_samples)
    field = np.vstack([base * (1.02 + noise(0.01)),
                       base * (1.00 + noise(0.01)),
                       base * (1.03 + noise(0.01))])
    blocks = np.array([9_000.0, 8_000.0, 9_500.0])
    return base, field, blocks


def run(field, blocks, cands, **kw):
    return S.candidate_stats(field, blocks, cands, BLOCK_NOW, PARAMS, field_labels=["a", "b", "c"],
                             field_uids=[3, 12, 40], candidate_labels=[f"cand{i}" for i in range(len(cands))],
                             n_boot=1_000, seed=5, **kw)


def test_clearly_better_candidate_beats_the_leader_with_confidence():
    base, field, blocks = make_field()
    rng = np.random.default_rng(1)
    better = field[1] * (0.985 + rng.normal(0, 0.01, size=base.size))
    (st,) = run(field, blocks, [better])
    assert st.leader_uid == 12 and st.leader_label == "b" and st.leader_index == 1
    assert st.head_to_head.low > 0.5
    assert st.win_rate.low > 0.5
    assert st.mean_delta.high < 0
    assert st.loss_ratio.value < st.required_ratio
    assert st.weight > 0.5
    assert "against uid 12" in st.verdict and "beats the leader" in st.verdict
    # Point estimates equal independent computations with the validator's rule.
    full = np.vstack([field, better])
    winners = winrule.sample_winners(full, np.append(blocks, np.nan), BLOCK_NOW, 0.004, 0.995)
    assert st.win_rate.value == pytest.approx((winners == 3).mean())
    adv = 0.004 * 0.995 ** ((BLOCK_NOW - 8_000) / 361)
    assert st.required_ratio == pytest.approx(1 - adv)
    assert st.head_to_head.value == pytest.approx((better < field[1] * (1 - adv)).mean())
    np.testing.assert_allclose(st.deltas, better - field[1])
    assert st.mean_delta.value == pytest.approx((better - field[1]).mean())
    assert st.loss_ratio.value == pytest.approx(better.sum() / field[1].sum())
    wr = np.bincount(winners, minlength=4) / base.size
    w = wr ** 1.2 / (wr ** 1.2).sum()
    assert st.weight == pytest.approx(w[3])
    assert st.win_rate.low <= st.win_rate.value <= st.win_rate.high
    # The CIs are a percentile bootstrap over samples (seed 5, one chunk of 1000 draws).
    idx = np.random.default_rng(5).integers(0, base.size, size=(1_000, base.size))
    h2h = (better < field[1] * (1 - adv)).astype(float)
    assert (st.head_to_head.low, st.head_to_head.high) == pytest.approx(
        tuple(np.quantile(h2h[idx].mean(axis=1), [0.025, 0.975])))
    assert (st.mean_delta.low, st.mean_delta.high) == pytest.approx(
        tuple(np.quantile((better - field[1])[idx].mean(axis=1), [0.025, 0.975])))


def test_copy_of_the_leader_wins_nothing_and_its_delta_ci_contains_zero():
    base, field, blocks = make_field()
    (st,) = run(field, blocks, [field[1].copy()])
    assert st.win_rate.value == 0 and st.head_to_head.value == 0
    assert st.weight == 0
    assert st.mean_delta.contains(0.0)
    assert st.loss_ratio.value == pytest.approx(1.0)
    assert "does not beat the leader" in st.verdict or "too close" in st.verdict


def test_worse_candidate_ci_is_below_half():
    base, field, blocks = make_field()
    rng = np.random.default_rng(2)
    worse = field[1] * (1.01 + rng.normal(0, 0.01, size=base.size))
    (st,) = run(field, blocks, [worse])
    assert st.head_to_head.high < 0.5
    assert st.win_rate.high < 0.5
    assert st.mean_delta.low > 0
    assert "does not beat the leader" in st.verdict


def test_failed_samples_never_win_and_are_not_paired():
    base, field, blocks = make_field(n_samples=1_000)
    better = field[1] * 0.9
    better[:100] = np.inf
    (st,) = run(field, blocks, [better])
    assert st.n_paired == 900
    assert np.isnan(st.deltas[:100]).all()
    assert st.head_to_head.value == pytest.approx(0.9)
    assert st.mean_delta.value == pytest.approx((better[100:] - field[1][100:]).mean())


def test_same_seed_same_numbers_and_json_able():
    base, field, blocks = make_field(n_samples=500)
    rng = np.random.default_rng(4)
    cands = [field[1] * (0.996 + rng.normal(0, 0.01, size=500)), field[0] * 1.0]
    a = [c.to_dict() for c in run(field, blocks, cands)]
    b = [c.to_dict() for c in run(field, blocks, cands)]
    assert a == b
    assert json.loads(json.dumps(a, allow_nan=False)) == a
    other = [c.to_dict() for c in S.candidate_stats(field, blocks, cands, BLOCK_NOW, PARAMS, n_boot=1_000, seed=6)]
    assert 0 < a[0]["head_to_head"]["low"] < a[0]["head_to_head"]["high"] < 1
    assert other[0]["head_to_head"]["value"] == a[0]["head_to_head"]["value"]  # the seed moves only the CI
    assert (other[0]["head_to_head"]["low"], other[0]["mean_delta"]["low"]) != \
        (a[0]["head_to_head"]["low"], a[0]["mean_delta"]["low"])


def test_field_win_rate_intervals_match_an_explicit_bootstrap():
    base, field, blocks = make_field(n_samples=300)
    ivs = S.field_win_rate_intervals(field, blocks, BLOCK_NOW, PARAMS, n_boot=1_000, seed=9)
    winners = winrule.sample_winners(field, blocks, BLOCK_NOW, 0.004, 0.995)
    rng = np.random.default_rng(9)
    idx = rng.integers(0, 300, size=(1_000, 300))  # one chunk: same draws as the module
    for i, iv in enumerate(ivs):
        rates = (winners[idx] == i).mean(axis=1)
        lo, hi = np.quantile(rates, [0.025, 0.975])
        assert iv.value == pytest.approx((winners == i).mean())
        assert (iv.low, iv.high) == pytest.approx((lo, hi))
    fs = S.field_stats(field, blocks, BLOCK_NOW, PARAMS, field_labels=["a", "b", "c"], n_boot=1_000)
    assert fs.leader_index == 1
    assert sum(fs.weights) == pytest.approx(1.0)


def test_bad_input_is_named():
    base, field, blocks = make_field(n_samples=50)
    with pytest.raises(ValueError, match="candidate_losses"):
        S.candidate_stats(field, blocks, np.zeros((1, 49)), BLOCK_NOW, PARAMS)
    with pytest.raises(ValueError, match="field_blocks"):
        S.candidate_stats(field, blocks[:2], np.zeros((1, 50)), BLOCK_NOW, PARAMS)
    with pytest.raises(ValueError, match="n_boot"):
        S.candidate_stats(field, blocks, np.zeros((1, 50)), BLOCK_NOW, PARAMS, n_boot=10)


def test_params_from_competition_like_object():
    class Comp:
        advantage_initial = 0.01
        advantage_decay = 0.9
        weight_skew_factor = 2.0

    p = S.WinParams.from_competition(Comp())
    assert (p.advantage_initial, p.advantage_decay, p.weight_skew_factor) == (0.01, 0.9, 2.0)
    assert math.isclose(S.WinParams.from_competition(object()).advantage_initial, 0.004)


def test_wilson_interval_keeps_a_width_at_0_and_100_percent():
    # textbook values (Wilson 1927 score interval, z = 1.959964 for 95 %)
    for k, n, low, high in ((10, 10, 0.7225, 1.0), (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634),
                            (3, 3, 0.4385, 1.0)):
        iv = intervals.wilson_interval(k, n)
        assert (iv.value, iv.low, iv.high) == pytest.approx((k / n, low, high), abs=1e-4)
    assert math.isnan(intervals.wilson_interval(0, 0).low)
    with pytest.raises(ValueError, match="need 0 <= successes <= n"):
        intervals.wilson_interval(4, 3)


def test_three_samples_all_won_are_too_close_to_call():
    """The bootstrap of 3 wins out of 3 is [100 %, 100 %]; Wilson's is 44-100 %: no call."""
    field = np.array([[10.0, 10.0, 10.0]])
    (st,) = S.candidate_stats(field, [100.0], [[5.0, 5.0, 5.0]], 100, PARAMS, n_boot=1_000, seed=1)
    assert st.head_to_head.low == 1.0 and st.head_to_head_wilson.low == pytest.approx(0.4385, abs=1e-4)
    assert st.verdict.endswith("too close to call against the leader")
    assert S.call(st.head_to_head, st.head_to_head_wilson) == "too close to call"
    # with 40 of 40 won both intervals clear one half
    (st,) = S.candidate_stats(np.full((1, 40), 10.0), [100.0], [np.full(40, 5.0)], 100, PARAMS, n_boot=1_000)
    assert st.verdict.endswith("; beats the leader") and "Wilson 91-100 %" in st.verdict


def test_candidate_weight_if_committed_now_and_the_field_weights_without_it():
    # two field models, candidate wins sample 0 only; the live step's arithmetic by hand
    field = np.array([[10.0, 10.0, 10.0, 10.0], [9.0, 12.0, 12.0, 12.0]])
    (st,) = S.candidate_stats(field, [100.0, 50.0], [[1.0, 20.0, 20.0, 20.0]], 100, PARAMS, n_boot=1_000)
    # field alone: the walk starts at block 50 (losses 9, 12, 12, 12); block 100 (10, 10, 10, 10)
    # takes b, c and d (10 < 12 * (1 - adv)) and not a: win rates 0.25 and 0.75
    assert st.field_weights_without == pytest.approx([0.75 ** 1.2 / (0.75 ** 1.2 + 0.25 ** 1.2),
                                                      0.25 ** 1.2 / (0.75 ** 1.2 + 0.25 ** 1.2)])
    # with the candidate: it takes sample 0; model 0 keeps b, c, d
    total = 0.75 ** 1.2 + 0.25 ** 1.2
    assert st.field_weights_with == pytest.approx([0.75 ** 1.2 / total, 0.0])
    assert st.weight == pytest.approx(0.25 ** 1.2 / total)
    assert "if committed now" in st.verdict
