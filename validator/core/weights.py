"""The weights the validator sets: win rates -> weights, competition mixing, EMA, the
float32 weight vector (live ``update_weights``) and its u16 form for the chain (pure numpy).
Which models a competition keeps evaluating is validator.core.selection's.

The live rules are the subnet-29 validator's; tests/data/live-compat/README.md section 4
pins them. The hall-of-fame shares mixed in come from `validator.core.halloffame`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

import constants
from validator.core.halloffame import HallOfFameRewards
from validator.core.numeric import f32_sum, is_int, is_number

U16_MAX = 65_535
MIN_WEIGHT_SUM = 1e-5  # live: a weight vector summing to less is not set


# --- weights --------------------------------------------------------------------------------

def weights_from_win_rates(win_rates: Any, skew: float = constants.WEIGHT_SKEW_FACTOR,
                           eligible: Any = None) -> np.ndarray:
    """``win_rate ** skew`` normalised over the eligible entries; others get 0.

    Entries without a chain uid (benchmark entries) are ranked but not ``eligible``: they
    take no weight and are left out of the normalisation. All zero in -> all zero out; the
    caller decides what to do then.
    """
    wr = np.asarray(win_rates, dtype=np.float64).reshape(-1)
    if np.any(np.isnan(wr)) or np.any(wr < 0):
        raise ValueError(f"win_rates: must be >= 0 and not nan, got {wr.tolist()}")
    if not skew > 0:
        raise ValueError(f"skew: must be > 0, got {skew}")
    mask = np.ones(wr.shape, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool).reshape(-1)
    if mask.shape != wr.shape:
        raise ValueError(f"eligible: expected {wr.shape[0]} entries, got {mask.shape[0]}")
    w = np.where(mask, np.power(wr, float(skew)), 0.0)
    total = w.sum()
    return w / total if total > 0 else np.zeros_like(w)


def mix_competitions(per_comp: Mapping[str, tuple[Any, Any]], rewards: Mapping[str, float],
                     n_uids: int = constants.SUBNET_UIDS) -> np.ndarray:
    """Mix per-competition weights into one ``[n_uids]`` vector by reward share.

    ``per_comp[c] = (uids, weights)``. Each competition's weights are normalised to sum 1 and
    scaled by ``rewards[c]`` over the summed reward of the competitions that produced any
    weight, so a competition with no eligible winner does not leave its share unassigned.
    """
    out = np.zeros(int(n_uids), dtype=np.float64)
    normalised: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for comp, (uids, weights) in per_comp.items():
        u = np.asarray(uids, dtype=np.int64).reshape(-1)
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if u.shape != w.shape:
            raise ValueError(f"competition {comp!r}: {u.shape[0]} uids but {w.shape[0]} weights")
        if u.size and (u.min() < 0 or u.max() >= n_uids):
            raise ValueError(f"competition {comp!r}: uid out of range 0..{n_uids - 1}: {u.tolist()}")
        if np.any(~np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"competition {comp!r}: weights must be finite and >= 0, got {w.tolist()}")
        if comp not in rewards:
            raise ValueError(f"competition {comp!r}: no reward given (rewards has {sorted(rewards)})")
        if not (math.isfinite(rewards[comp]) and rewards[comp] >= 0):
            raise ValueError(f"competition {comp!r}: reward must be finite and >= 0, got {rewards[comp]}")
        if w.sum() > 0 and rewards[comp] > 0:
            normalised[comp] = (u, w / w.sum())
    total_reward = sum(float(rewards[c]) for c in normalised)
    for comp, (u, w) in normalised.items():
        np.add.at(out, u, w * (float(rewards[comp]) / total_reward))
    return out


def ema(prev: Any, new: Any, alpha: float = constants.EMA_ALPHA) -> np.ndarray:
    """``alpha * new + (1 - alpha) * prev``; no previous weights -> ``new``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: must be in [0, 1], got {alpha}")
    n = np.asarray(new, dtype=np.float64)
    if prev is None:
        return n.copy()
    p = np.asarray(prev, dtype=np.float64)
    if p.shape != n.shape:
        raise ValueError(f"ema: previous weights have shape {p.shape}, new ones {n.shape}")
    return alpha * n + (1.0 - alpha) * p


def finalize_weights(weights: Any) -> np.ndarray:
    """Weights ready for the chain: NaN, inf and negatives set to 0, normalised to sum 1.

    Raises ValueError when nothing positive is left: setting all-zero weights is never
    what an operator wants, the caller must decide (e.g. keep the previous weights).
    """
    w = np.asarray(weights, dtype=np.float64).copy()
    w[~np.isfinite(w) | (w < 0)] = 0.0
    total = w.sum()
    if not total > 0:
        raise ValueError("weights: all zero (or nan/negative); refusing to produce a weight vector")
    return w / total


# --- the weight vector the validator sets ---------------------------------------------------

def weight_vector(per_competition: Mapping[str, Mapping[int, float]], rewards: Mapping[str, float],
                  hof_rewards: Mapping[int, float], n_uids: int, prev: Any = None) -> np.ndarray | None:
    """Live ``update_weights`` (float32, as live's torch vector): the new weight vector, or
    None when live would produce NaN / all zero (no competition weighted anyone and no hall
    of fame): the caller then keeps its previous weights (live wipes them).

    ``per_competition``: the competitions that have a state, ``{cid: {uid: weight}}``;
    ``rewards``: the config's competitions in config order, ``{cid: reward}``. Each uid's
    value is SET to ``(1 - hof_total) * reward * weight`` (a uid in two competitions keeps
    the later one's); competitions without state, or not in the config, are skipped. The
    hall-of-fame shares are added, the vector divided by its sum, then EMA 0.5 with ``prev``
    unless ``prev`` is None or all zero; NaN -> 0. ``n_uids`` is the vector's length (live:
    always 256, constants.SUBNET_UIDS, whatever the metagraph's size).
    """
    if not is_int(n_uids) or n_uids < 1:
        raise ValueError(f"n_uids: must be an integer >= 1, got {n_uids!r}")
    hof_total = hof_rewards.total if isinstance(hof_rewards, HallOfFameRewards) else \
        float(f32_sum(np.array(list(hof_rewards.values()), dtype=np.float32)))
    if not 0.0 <= hof_total <= 1.0:
        raise ValueError(f"hof_rewards: total share must be in [0, 1], got {hof_total}")
    vec = np.zeros(n_uids, dtype=np.float32)
    for cid, reward in rewards.items():
        if cid not in per_competition:
            continue
        if not is_number(reward) or not math.isfinite(reward) or reward < 0:
            raise ValueError(f"competition {cid!r}: reward must be a finite number >= 0, got {reward!r}")
        for uid, w in per_competition[cid].items():
            if not is_int(uid) or not 0 <= uid < n_uids:
                raise ValueError(f"competition {cid!r}: uid {uid!r} outside 0..{n_uids - 1}")
            if not is_number(w) or not math.isfinite(w) or w < 0:
                raise ValueError(f"competition {cid!r}: uid {uid} weight must be finite and >= 0, got {w!r}")
            vec[uid] = (1 - hof_total) * reward * float(w)
    for uid, share in hof_rewards.items():
        if not is_int(uid) or not 0 <= uid < n_uids:
            raise ValueError(f"hof_rewards: uid {uid!r} outside 0..{n_uids - 1}")
        vec[uid] += np.float32(share)
    total = f32_sum(vec)
    if not total > 0:  # live: 0 / 0 = NaN, later zeroed: every weight lost
        return None
    vec = vec / total
    if prev is not None:
        p = np.asarray(prev, dtype=np.float32).reshape(-1)
        if p.shape != vec.shape:
            raise ValueError(f"prev: expected {n_uids} weights, got {p.shape[0]}")
        if np.count_nonzero(p):  # live: the first vector (all zero) is replaced, not averaged
            alpha = np.float32(constants.EMA_ALPHA)
            vec = alpha * vec + (np.float32(1.0) - alpha) * p
    vec = np.nan_to_num(vec, nan=0.0)
    if not f32_sum(vec) > 0:
        return None
    return vec


def u16_weights(vector: Any, n_uids: int) -> tuple[list[int], list[int]]:
    """What live sends to the chain (bittensor 9.0.0 convert_weights_and_uids_for_emit): the
    first ``n_uids`` entries (the metagraph's uids), each divided by the largest, times
    65535, rounded with Python's round(), zeros dropped. A vector summing to less than 1e-5
    (NaN counted as 0) sends nothing: ``([], [])``. The version key to send with it is
    constants.WEIGHTS_VERSION_KEY."""
    v = np.nan_to_num(np.asarray(vector).reshape(-1), nan=0.0)
    if not is_int(n_uids) or not 0 <= n_uids <= v.shape[0]:
        raise ValueError(f"n_uids: must be an integer in 0..{v.shape[0]} (the vector's length), got {n_uids!r}")
    if not float(v.sum()) >= MIN_WEIGHT_SUM:
        return [], []
    sent = v[:n_uids].tolist()
    if any(w < 0 for w in sent):
        raise ValueError(f"weights: negative entries {[w for w in sent if w < 0][:5]}")
    if not sent or sum(sent) == 0:
        return [], []
    top = float(max(sent))
    uids, values = [], []
    for uid, w in enumerate(sent):
        q = round(float(w) / top * U16_MAX)
        if q != 0:
            uids.append(uid)
            values.append(q)
    return uids, values
