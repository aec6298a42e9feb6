import math

import numpy as np
import pytest

import constants
from validator.core import halloffame, weights, winrule

NAN, INF = math.nan, math.inf
EPOCH = constants.BLOCKS_PER_EPOCH


def reference_winners(losses, blocks, block_now, initial, decay, epoch=EPOCH):
    """The live win rule written the plain way (neurons/validation.py compute_wins): one
    sample at a time, one model at a time; the first model holds whatever its loss."""
    losses = np.asarray(losses, dtype=float)
    m, s = losses.shape
    rows = losses.tolist()
    factor = []
    for b in blocks:
        age = (block_now - (2 ** 31 if math.isnan(b) else b)) / epoch
        factor.append(1.0 if age < 0 else 1 - initial * decay ** age)
    order = sorted(range(m), key=lambda i: 2 ** 31 if math.isnan(blocks[i]) else blocks[i])
    out = []
    for k in range(s):
        inc, inc_adv = None, None
        for i in order:
            v = rows[i][k]
            if inc is None or v < inc_adv:
                inc, inc_adv = i, v * factor[i]
        out.append(inc)
    return np.array(out)


# --- advantage --------------------------------------------------------------------------------

def test_advantage_decays_per_epoch_and_is_zero_without_block():
    adv = winrule.advantages(np.array([10000, 10000 - EPOCH, 10000 - 10 * EPOCH, NAN]), 10000, 0.004, 0.995)
    np.testing.assert_allclose(adv, [0.004, 0.004 * 0.995, 0.004 * 0.995 ** 10, 0.0])


def test_advantage_of_a_future_block_is_none():
    # live: a negative age gives the factor exactly 1 (no advantage), not the initial one
    assert winrule.advantages([1100.0, 1000.0], 1000, 0.004, 0.995).tolist() == [0.0, pytest.approx(0.004)]
    assert winrule.advantage_factor(1100, 1000, 0.004, 0.995) == 1.0


# --- the win rule, by hand --------------------------------------------------------------------

def wins(losses, blocks, block_now=1000, initial=0.1, decay=1.0):
    return winrule.compute_wins(np.array(losses, dtype=float), np.array(blocks, dtype=float),
                          block_now, initial, decay).tolist()


def test_older_model_keeps_a_sample_it_loses_by_less_than_its_advantage():
    # advantage 0.1: the newer model needs < 10 * 0.9 = 9.0 to take the sample.
    assert wins([[10.0], [9.5]], [100, 200]) == [1, 0]
    assert wins([[10.0], [9.0]], [100, 200]) == [1, 0]  # equal to the threshold is not enough
    assert wins([[10.0], [8.9]], [100, 200]) == [0, 1]


def test_order_is_by_block_not_by_row():
    # Same numbers, rows swapped: the row with the older block is the incumbent.
    assert wins([[9.5], [10.0]], [200, 100]) == [0, 1]
    assert wins([[8.9], [10.0]], [200, 100]) == [1, 0]


def test_ties_go_to_the_incumbent_even_without_advantage():
    assert wins([[5.0, 5.0], [5.0, 4.0]], [100, 200], initial=0.0) == [1, 1]
    # equal blocks: the lower index is older
    assert wins([[5.0], [5.0]], [100, 100], initial=0.0) == [1, 0]


def test_chain_middle_takes_then_newest_takes_from_the_middle():
    # A (oldest, 10) -> B needs < 9.0, has 8.5 -> takes; C needs < 8.5 * 0.9 = 7.65.
    three = [[10.0], [8.5], [7.6]]
    assert wins(three, [100, 200, 300]) == [0, 0, 1]
    # C at 7.7 beats A's threshold (9.0) but not B's (7.65): B keeps it.
    assert wins([[10.0], [8.5], [7.7]], [100, 200, 300]) == [0, 1, 0]


def test_nan_and_inf_never_take_a_sample_but_the_oldest_holds_it_whatever_its_loss():
    losses = [[NAN, INF, 3.0, NAN],
              [INF, 5.0, NAN, NAN],
              [7.0, NAN, INF, INF]]
    winners = winrule.sample_winners(np.array(losses), np.array([1.0, 2.0, 3.0]), 1000, 0.1, 1.0)
    # live: model 0 holds every sample first; 0: its NaN is never beaten (7.0 < NaN is false);
    # 1: 5.0 < inf takes it; 2: NaN and inf do not take 3.0; 3: NaN again.
    assert winners.tolist() == [0, 1, 0, 0]
    assert wins(losses, [1, 2, 3]) == [3, 1, 0]


def test_models_without_block_get_no_advantage_and_come_last():
    # Walk order: model 1 (block 500, advantage 0.1), then the block-less models 0 and 2.
    # Sample 0: model 0 takes (8.0 < 10 * 0.9); model 2 then needs only < 8.0 (no advantage
    # for model 0) and takes with 7.99. Sample 1: model 2 at 8.0 ties model 0 -> model 0 keeps.
    losses = np.array([[8.0, 8.0], [10.0, 10.0], [7.99, 8.0]])
    blocks = np.array([NAN, 500, NAN])
    assert winrule.sample_winners(losses, blocks, 1000, 0.1, 1.0).tolist() == [2, 0]
    # Were model 0 given a block (and so the advantage), model 2 would need < 7.2.
    assert winrule.sample_winners(losses, np.array([600, 500, NAN]), 1000, 0.1, 1.0).tolist() == [0, 0]
    # Two block-less models keep their row order: the lower index walks first.
    assert winrule.sample_winners(np.array([[5.0], [5.0]]), np.array([NAN, NAN]), 1000, 0.1, 1.0).tolist() == [0]


def test_decayed_advantage_is_used():
    # advantage after 2 epochs: 0.1 * 0.5**2 = 0.025 -> threshold 10 * 0.975 = 9.75
    assert wins([[10.0], [9.76]], [1000 - 2 * EPOCH, 1000], decay=0.5) == [1, 0]
    assert wins([[10.0], [9.74]], [1000 - 2 * EPOCH, 1000], decay=0.5) == [0, 1]


def test_vectorised_wins_equal_the_per_sample_loop_on_random_matrices():
    rng = np.random.default_rng(7)
    m, s = 64, 20_000
    losses = rng.normal(100.0, 3.0, size=(m, s)).round(1)  # rounding makes equal values common
    losses[rng.random((m, s)) < 0.01] = np.nan
    losses[rng.random((m, s)) < 0.01] = np.inf
    losses[:, :50] = np.nan  # some samples nobody can win
    losses[5] = losses[3]  # an exact copy of another model
    blocks = rng.integers(0, 50, size=m).astype(float)  # many equal blocks
    blocks[rng.random(m) < 0.15] = np.nan
    got = winrule.sample_winners(losses, blocks, 60, 0.004, 0.9)
    want = reference_winners(losses, blocks.tolist(), 60, 0.004, 0.9)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(winrule.compute_wins(losses, blocks, 60, 0.004, 0.9),
                                  np.bincount(want[want >= 0], minlength=m))
    assert (got[:50] == winrule.walk_order(blocks)[0]).all()  # all NaN: the oldest model holds them


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="losses"):
        winrule.compute_wins(np.zeros(3), np.zeros(3), 0, 0.1, 1.0)
    with pytest.raises(ValueError, match="blocks"):
        winrule.compute_wins(np.zeros((2, 3)), np.zeros(3), 0, 0.1, 1.0)


# --- grouping ---------------------------------------------------------------------------------

def test_group_samples_sums_the_same_shuffled_columns_for_every_model():
    losses = np.arange(2 * 7, dtype=float).reshape(2, 7)
    losses[1, 4] = np.inf
    got = winrule.group_samples(losses, 3, seed=11)
    assert got.shape == (2, 3)
    perm = np.random.default_rng(11).permutation(7)
    for g, cols in enumerate([perm[0:3], perm[3:6], perm[6:7]]):
        np.testing.assert_array_equal(got[:, g], losses[:, cols].sum(axis=1))
    assert np.isinf(got[1]).sum() == 1  # the group holding the inf stays inf
    np.testing.assert_array_equal(got, winrule.group_samples(losses, 3, seed=11))  # seeded
    np.testing.assert_allclose(got[0].sum(), losses[0].sum())


def test_group_samples_nan_propagates_and_group_one_is_identity():
    losses = np.array([[1.0, np.nan, 2.0, 3.0]])
    got = winrule.group_samples(losses, 2, seed=0)
    assert np.isnan(got).sum() == 1
    np.testing.assert_array_equal(winrule.group_samples(losses, 1, seed=0), losses)
    with pytest.raises(ValueError, match="group"):
        winrule.group_samples(losses, 0, seed=0)


# --- win rates and pairwise ----------------------------------------------------------------

def test_win_rates_and_absolute_win_rates():
    np.testing.assert_allclose(winrule.win_rates([1, 3], 4), [0.25, 0.75])
    np.testing.assert_allclose(winrule.win_rates([0, 0], 0), [0, 0])
    losses = np.array([[1.0, 2.0, 3.0, NAN, 5.0],
                       [2.0, 1.0, 3.0, INF, 5.0],
                       [3.0, 3.0, 4.0, 1.0, NAN]])
    # live: the first minimum in walk order, NaN counting as the minimum (numpy's argmin):
    # 0 -> 0, 1 -> 1, 2: tie 3.0 -> the first (0), 3: NaN -> 0, 4: NaN -> 2
    np.testing.assert_allclose(winrule.absolute_win_rates(losses), [3 / 5, 1 / 5, 1 / 5])
    # in walk order: model 1 walks first, so it takes the tie of sample 2
    np.testing.assert_allclose(winrule.absolute_win_rates(losses, blocks=[20, 10, 30]), [2 / 5, 2 / 5, 1 / 5])


def test_win_matrix_by_hand():
    losses = np.array([[10.0, 10.0, 10.0, NAN],
                       [9.5, 8.0, 10.0, 1.0]])
    blocks = np.array([100.0, 200.0])
    wm = winrule.win_matrix(losses, blocks, 1000, 0.1, 1.0)
    # raw: model 1 lower on samples 0, 1 and 3 (model 0 nan); nobody on the tie
    assert wm["wins"].tolist() == [[0, 0], [3, 0]]
    # advantage 0.1 for model 0: model 1 needs < 9.0 -> only sample 1; on sample 3 model 0's
    # NaN holds (live: 1.0 < NaN is false)
    assert wm["adv_wins"].tolist() == [[0, 3], [1, 0]]
    # mean over samples 0..2: (0.5 + 2 + 0) / 3
    np.testing.assert_allclose(wm["mean_delta"], [[0, 2.5 / 3], [-2.5 / 3, 0]])


def test_win_matrix_adv_wins_equal_the_rule_on_each_pair():
    rng = np.random.default_rng(3)
    losses = rng.normal(10, 0.05, size=(6, 500)).round(2)
    losses[rng.random(losses.shape) < 0.05] = np.nan
    losses[rng.random(losses.shape) < 0.05] = np.inf
    blocks = np.array([5.0, 1.0, NAN, 3.0, 3.0, NAN])
    wm = winrule.win_matrix(losses, blocks, 100, 0.004, 0.9)
    for i in range(6):
        for j in range(6):
            if i == j:
                continue
            lo, hi = min(i, j), max(i, j)  # keep index order: it breaks ties in block
            pair = reference_winners(losses[[lo, hi]], blocks[[lo, hi]].tolist(), 100, 0.004, 0.9)
            assert wm["adv_wins"][i, j] == (pair == (0 if i == lo else 1)).sum()
            li, lj = losses[i], losses[j]
            raw = np.isfinite(li) & (~np.isfinite(lj) | (li < lj))
            assert wm["wins"][i, j] == raw.sum()
            both = np.isfinite(li) & np.isfinite(lj)
            assert wm["mean_delta"][i, j] == pytest.approx((li[both] - lj[both]).mean())


# --- weights, mixing, EMA, finalize ---------------------------------------------------------

def test_weights_from_win_rates_skew_and_eligibility():
    w = weights.weights_from_win_rates([0.6, 0.3, 0.1], 2.0)
    np.testing.assert_allclose(w, np.array([0.36, 0.09, 0.01]) / 0.46)
    # a benchmark entry (not eligible) is excluded from the normalisation
    w = weights.weights_from_win_rates([0.5, 0.3, 0.2], 1.0, eligible=[False, True, True])
    np.testing.assert_allclose(w, [0.0, 0.6, 0.4])
    np.testing.assert_array_equal(weights.weights_from_win_rates([0.0, 0.0], 1.2), [0.0, 0.0])
    np.testing.assert_array_equal(weights.weights_from_win_rates([0.7, 0.0], 1.2, eligible=[False, True]), [0, 0])
    with pytest.raises(ValueError, match="win_rates"):
        weights.weights_from_win_rates([np.nan, 0.5], 1.2)


def test_mix_competitions_by_reward_share():
    per_comp = {"c00": ([1, 2], [3.0, 1.0]), "c01": ([2, 4], [1.0, 1.0]), "c02": ([5], [0.0])}
    mixed = weights.mix_competitions(per_comp, {"c00": 0.6, "c01": 0.2, "c02": 0.2}, n_uids=6)
    # c02 produced no weight: rewards renormalised over c00/c01 -> 0.75 / 0.25
    np.testing.assert_allclose(mixed, [0, 0.75 * 0.75, 0.75 * 0.25 + 0.25 * 0.5, 0, 0.25 * 0.5, 0])
    assert mixed.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(weights.mix_competitions({"c": ([0], [0.0])}, {"c": 1.0}, 3), [0, 0, 0])
    with pytest.raises(ValueError, match="'c00'.*uid out of range"):
        weights.mix_competitions({"c00": ([9], [1.0])}, {"c00": 1.0}, n_uids=6)
    with pytest.raises(ValueError, match="'c09'.*no reward"):
        weights.mix_competitions({"c09": ([1], [1.0])}, {"c00": 1.0}, n_uids=6)


def test_ema_and_finalize():
    np.testing.assert_allclose(weights.ema([1.0, 0.0], [0.0, 1.0], 0.5), [0.5, 0.5])
    np.testing.assert_allclose(weights.ema([1.0, 0.0], [0.0, 1.0], 0.25), [0.75, 0.25])
    np.testing.assert_allclose(weights.ema(None, [0.2, 0.8]), [0.2, 0.8])
    with pytest.raises(ValueError, match="shape"):
        weights.ema([1.0], [0.5, 0.5])
    w = weights.finalize_weights([np.nan, -1.0, 2.0, 6.0, np.inf])
    np.testing.assert_allclose(w, [0, 0, 0.25, 0.75, 0])
    assert not np.isnan(w).any() and w.sum() == pytest.approx(1.0)
    for bad in ([0.0, 0.0], [np.nan, -3.0], []):
        with pytest.raises(ValueError, match="all zero"):
            weights.finalize_weights(bad)


# --- hall of fame -----------------------------------------------------------------------------

HOF = {
    "hkA": [{"block": 10000, "reward": 0.04, "desc": "first 1B", "url": "https://x/1"},
            {"block": 10000 - 10 * EPOCH, "reward": 0.1, "desc": "old", "url": ""}],
    "hkB": [{"block": 10000, "reward": 0.02, "desc": "", "url": ""}],
    "hkGone": [{"block": 10000, "reward": 0.5, "desc": "deregistered", "url": ""}],
}


def test_hall_of_fame_decay_without_cap():
    shares = halloffame.hall_of_fame_weights(HOF, {"hkA": 3, "hkB": 7}, block_now=10000, decay=0.9, cap=1.0)
    # live: reward / 200 (1 / (1 - 0.995)) at the award's block, float32
    assert shares[3] == pytest.approx((0.04 + 0.1 * 0.9 ** 10) / 200, rel=1e-6)
    assert shares[7] == pytest.approx(0.02 / 200, rel=1e-6)
    assert set(shares) == {3, 7}  # an unregistered hotkey gets nothing


def test_hall_of_fame_cap_and_apply():
    shares = halloffame.hall_of_fame_weights(HOF, {"hkA": 3, "hkB": 7}, block_now=10000, decay=1.0, cap=0.0004)
    # uncapped 0.14 / 200 and 0.02 / 200 -> scaled to total 0.0004
    assert shares.total == 0.0004 and sum(shares.values()) == pytest.approx(0.0004, rel=1e-6)
    assert shares[3] / shares[7] == pytest.approx(0.14 / 0.02, rel=1e-6)
    w = halloffame.apply_hall_of_fame(np.array([0.0, 0.5, 0.0, 0.5, 0, 0, 0, 0]), shares)
    assert w[1] == pytest.approx(0.5 * (1 - 0.0004))
    assert w[3] == pytest.approx(0.5 * (1 - 0.0004) + shares[3])
    assert w[7] == pytest.approx(shares[7])
    assert w.sum() == pytest.approx(1.0)


def test_hall_of_fame_default_cap_is_the_constant():
    big = {"hk": [{"block": 10000, "reward": 1e9, "desc": "", "url": ""}]}  # as the live file's entry
    assert halloffame.hall_of_fame_weights(big, {"hk": 0}, 10000) == {0: constants.REWARDS_MAX_FRACTION}


def test_parse_hall_of_fame_skips_bad_entries_as_live_and_names_them():
    assert halloffame.parse_hall_of_fame(HOF)["hkA"][1].block == 10000 - 10 * EPOCH
    problems: list[str] = []
    parsed = halloffame.parse_hall_of_fame({"hkB": [{"block": 1, "reward": 0.1}, {"block": 2, "reward": "lots"}],
                                   "hkC": [{"reward": 0.1}], "hkD": {"block": 1}}, problems)
    assert [e.block for e in parsed["hkB"]] == [1] and parsed["hkC"] == [] and parsed["hkD"] == []
    assert any(p.startswith("hall of fame: hotkey hkB entry #1 ") and "reward" in p for p in problems)
    assert any(p.startswith("hall of fame: hotkey hkC entry #0 ") and "block" in p for p in problems)
    assert any("hotkey hkD: expected a list" in p for p in problems)
    assert halloffame.parse_hall_of_fame({"_comment": "ignored"}) == {}
    with pytest.raises(halloffame.HallOfFameError, match="expected an object"):
        halloffame.parse_hall_of_fame([HOF])
