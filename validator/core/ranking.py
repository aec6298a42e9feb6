"""Wins, win rates, weights, competition mixing, hall of fame and EMA (pure numpy).

Everything here is a pure function of arrays so that the win rule can be checked against
a plain per-sample loop and so that the benchmark (benchmark/stats.py) can reuse the exact
rule the validator applies. The rules are the live subnet-29 validator's (coldint_validator
v1.0.16, HEAD constants); tests/data/live-compat/README.md sections 3 and 4 pin them.

Conventions
-----------
* ``losses`` is a float matrix ``[M models, S samples]`` of summed cross-entropy per sample.
  ``inf`` marks a failed sample (e.g. the text did not tokenize), ``nan`` a missing value.
  A NaN or inf challenger never takes a sample; the first model in walk order holds every
  sample whatever its loss (live: a NaN holder is never beaten, an inf one is by any finite
  loss).
* ``blocks`` is a float vector ``[M]`` of commitment blocks; ``nan`` means "no block"
  (benchmark entries). Those models sort after every model with a block, in the given
  order, and have no advantage (live: block 2**31).

The live step itself is `competition_step` (one competition's losses -> wins, weights, next
pool, discards); the weights the validator sets are `hall_of_fame_rewards`, `weight_vector`
and `u16_weights`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Hashable, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

import constants

K = TypeVar("K", bound=Hashable)
U16_MAX = 65_535
MIN_WEIGHT_SUM = 1e-5  # live: a weight vector summing to less is not set


# --- input checks ---------------------------------------------------------------------------

def _as_losses(losses: Any) -> np.ndarray:
    arr = np.asarray(losses, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"losses: expected a 2-d [models, samples] matrix, got shape {arr.shape}")
    return arr


def _as_blocks(blocks: Any, n_models: int) -> np.ndarray:
    arr = np.asarray(blocks, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n_models:
        raise ValueError(f"blocks: expected {n_models} entries (one per model row), got {arr.shape[0]}")
    return arr


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _f32_sum(v: np.ndarray) -> np.float32:
    """The float32 sum of a float32 vector, correctly rounded. Live sums with torch, whose
    order depends on the CPU's vector width; this agrees with it to an ulp."""
    return np.float32(np.asarray(v, dtype=np.float64).sum())


# --- advantage and order ----------------------------------------------------------------------

def advantage_factor(block: float, block_now: float, initial: float, decay: float,
                     epoch: int = constants.BLOCKS_PER_EPOCH) -> float:
    """Live: ``1 - initial * decay ** ((block_now - block) / epoch)``; exactly 1 when the block
    lies after ``block_now`` (or there is none). A holder's loss is multiplied by this.

    Python floats (not numpy's power, which differs in the last bit between builds) so that
    the factor is the live validator's to the bit."""
    delta_epochs = (block_now - block) / epoch
    if delta_epochs < 0 or math.isinf(delta_epochs):
        return 1.0
    return 1.0 - initial * decay ** delta_epochs


def advantages(blocks: Any, block_now: float, initial: float, decay: float,
               epoch: int = constants.BLOCKS_PER_EPOCH) -> np.ndarray:
    """``initial * decay ** ((block_now - block) / epoch)`` per model; 0 for a model without block.

    A block later than ``block_now`` (clock skew between chain reads, or a benchmark entry's
    future block) gets no advantage at all, as live (its factor is exactly 1).
    """
    if epoch <= 0:
        raise ValueError(f"epoch: must be positive, got {epoch}")
    b = np.asarray(blocks, dtype=np.float64).reshape(-1)
    return np.array([0.0 if math.isnan(x) else 1.0 - advantage_factor(float(x), block_now, initial, decay, epoch)
                     for x in b.tolist()], dtype=np.float64)


def _factors(blocks: np.ndarray, block_now: float, initial: float, decay: float, epoch: int) -> np.ndarray:
    if epoch <= 0:
        raise ValueError(f"epoch: must be positive, got {epoch}")
    return np.array([1.0 if math.isnan(x) else advantage_factor(x, block_now, initial, decay, epoch)
                     for x in blocks.tolist()], dtype=np.float64)


def walk_order(blocks: Any) -> np.ndarray:
    """Model indices from oldest commitment block to newest; models without block last.

    A stable sort: equal blocks (and the block-less models) keep their index order.
    """
    b = np.asarray(blocks, dtype=np.float64).reshape(-1)
    # np.argsort puts nan last; "stable" keeps index order among equals.
    return np.argsort(b, kind="stable")


# --- samples ----------------------------------------------------------------------------------

def group_samples(losses: Any, group: int, seed: int) -> np.ndarray:
    """Sum sample columns in groups of ``group`` after a seeded shuffle -> ``[M, ceil(S/group)]``.

    The same permutation is applied to every model, so a column of the result is the summed
    loss of the same samples for every model. The last group may be smaller. A group that
    contains an inf/nan loss stays inf/nan (it can not win). ``group == 1`` returns a copy
    in the original order (shuffling single columns would change nothing but the order).

    Not live's grouping (which drops the remainder, makes NaN inf and zeroes all-inf
    samples): that is `group_losses`, used by `competition_step`.
    """
    arr = _as_losses(losses)
    if not isinstance(group, (int, np.integer)) or group < 1:
        raise ValueError(f"group: must be an integer >= 1, got {group!r}")
    if group == 1:
        return arr.copy()
    m, s = arr.shape
    perm = np.random.default_rng(seed).permutation(s)
    n_groups = -(-s // group)
    padded = np.zeros((m, n_groups * group), dtype=np.float64)  # zero padding keeps inf/nan
    padded[:, :s] = arr[:, perm]
    return padded.reshape(m, n_groups, group).sum(axis=2)


def grouping_permutation(n_samples: int, group_samples: int, seed: int) -> list[int]:
    """Our seeded stand-in for live's unseeded shuffle: a permutation of the first
    ``n_samples - n_samples % group_samples`` sample indices (the remainder is dropped).
    Validators that share ``seed`` group alike."""
    if not _is_int(n_samples) or n_samples < 0:
        raise ValueError(f"n_samples: must be an integer >= 0, got {n_samples!r}")
    if not _is_int(group_samples) or group_samples < 1:
        raise ValueError(f"group_samples: must be an integer >= 1, got {group_samples!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed!r}")
    n_used = n_samples - n_samples % group_samples
    return np.random.default_rng(int(seed)).permutation(n_used).tolist()


def group_losses(losses: Any, group_samples: int, permutation: Sequence[int]) -> np.ndarray:
    """Live grouping of the evaluated models' loss rows -> ``[M, S // group_samples]``.

    NaN becomes inf; a sample that is inf for every row becomes 0 for all; the last
    ``S % group_samples`` samples are dropped; column j of the shuffle is sample
    ``permutation[j]``; runs of ``group_samples`` shuffled columns are summed. A group with
    an inf stays inf. ``group_samples == 1`` is not grouping: the caller keeps the raw rows.
    """
    arr = _as_losses(losses).copy()
    if not _is_int(group_samples) or group_samples < 1:
        raise ValueError(f"group_samples: must be an integer >= 1, got {group_samples!r}")
    m, s = arr.shape
    n_used = s - s % group_samples
    perm = np.asarray(list(permutation), dtype=np.int64)
    if perm.shape != (n_used,) or not np.array_equal(np.sort(perm), np.arange(n_used)):
        raise ValueError(f"permutation: expected a permutation of range({n_used}) "
                         f"({s} samples, groups of {group_samples}), got {len(perm)} indices")
    arr[np.isnan(arr)] = np.inf  # NaN does not compare; live makes it inf before summing
    if m:
        arr[:, np.isinf(arr).all(axis=0)] = 0.0
    return arr[:, perm].reshape(m, -1, group_samples).sum(axis=2)


# --- the win rule -----------------------------------------------------------------------------

def _walk(rows: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Live win rule over rows already in walk order: position of each sample's winner.

    The first row holds every sample with ``loss * factor``; a later row takes it when its
    raw loss is strictly below the holder's advantaged loss (NaN compares false), and then
    holds it with its own advantaged loss."""
    k, s = rows.shape
    winner = np.zeros(s, dtype=np.int64)
    if k == 0:
        return np.full(s, -1, dtype=np.int64)
    with np.errstate(invalid="ignore"):  # inf * 0 and comparisons with NaN: live arithmetic
        threshold = rows[0] * factors[0]
        for i in range(1, k):
            take = rows[i] < threshold
            winner[take] = i
            threshold[take] = rows[i][take] * factors[i]
    return winner


def sample_winners(losses: Any, blocks: Any, block_now: float, initial: float, decay: float,
                   epoch: int = constants.BLOCKS_PER_EPOCH) -> np.ndarray:
    """Index of the model that wins each sample under the live advantage rule.

    Walk the models oldest first; the first holds the sample whatever its loss; a later
    model takes it only if its loss < holder_loss * (1 - advantage(holder)), and then holds
    it with its own advantage. Every sample has a winner (-1 only when there is no model).
    Loop over models, vector over samples.
    """
    arr = _as_losses(losses)
    m, _ = arr.shape
    b = _as_blocks(blocks, m)
    if m == 0:
        return np.full(arr.shape[1], -1, dtype=np.int64)
    order = walk_order(b)
    return order[_walk(arr[order], _factors(b, block_now, initial, decay, epoch)[order])]


def compute_wins(losses: Any, blocks: Any, block_now: float, initial: float, decay: float,
                 epoch: int = constants.BLOCKS_PER_EPOCH) -> np.ndarray:
    """Samples won by each model under the advantage rule, ``[M]`` int."""
    arr = _as_losses(losses)
    winners = sample_winners(arr, blocks, block_now, initial, decay, epoch)
    return np.bincount(winners[winners >= 0], minlength=arr.shape[0]).astype(np.int64)


def win_rates(wins: Any, n_samples: int) -> np.ndarray:
    """Fraction of samples won; all zeros when there are no samples."""
    w = np.asarray(wins, dtype=np.float64)
    if n_samples < 0:
        raise ValueError(f"n_samples: must be >= 0, got {n_samples}")
    if n_samples == 0:
        return np.zeros_like(w)
    return w / float(n_samples)


def absolute_win_rates(losses: Any, blocks: Any = None) -> np.ndarray:
    """Fraction of samples where the model has the lowest raw loss (no advantage), live:
    the first minimum in walk order (row order without ``blocks``) takes it, and a NaN
    counts as the minimum (numpy's argmin)."""
    arr = _as_losses(losses)
    m, s = arr.shape
    if s == 0 or m == 0:
        return np.zeros(m)
    order = np.arange(m) if blocks is None else walk_order(_as_blocks(blocks, m))
    best = order[np.argmin(arr[order], axis=0)]
    return np.bincount(best, minlength=m) / float(s)


def win_matrix(losses: Any, blocks: Any, block_now: float, initial: float, decay: float,
               epoch: int = constants.BLOCKS_PER_EPOCH) -> dict[str, np.ndarray]:
    """Pairwise comparisons, every entry ``[i, j]`` about model i against model j alone.

    * ``wins``: samples where i's raw loss is finite and strictly lower than j's (or j's
      is inf/nan).
    * ``adv_wins``: samples i wins under the (live) advantage rule with only i and j competing.
    * ``mean_delta``: mean of ``loss_i - loss_j`` over samples finite for both (nan if none).
    """
    arr = _as_losses(losses)
    m, s = arr.shape
    b = _as_blocks(blocks, m)
    factor = _factors(b, block_now, initial, decay, epoch)
    rank = np.empty(m, dtype=np.int64)
    rank[walk_order(b)] = np.arange(m)
    finite = np.isfinite(arr)
    wins = np.zeros((m, m), dtype=np.int64)
    adv_wins = np.zeros((m, m), dtype=np.int64)
    for i in range(m):
        li, fi = arr[i], finite[i]
        with np.errstate(invalid="ignore"):
            raw = fi & (~finite | (li < arr))
            # i older than j: i holds the sample (whatever its loss) unless j's loss is below
            # i's advantaged loss; i newer: i takes it when below j's (NaN compares false).
            keep = ~(arr < li * factor[i])
            take = li < arr * factor[:, None]
        older = (rank[i] < rank)[:, None]
        wins[i] = raw.sum(axis=1)
        adv_wins[i] = np.where(older, keep, take).sum(axis=1)
    np.fill_diagonal(wins, 0)
    np.fill_diagonal(adv_wins, 0)
    # Sum over samples finite for both of (l_i - l_j) = A[i, j] - A[j, i] with
    # A = (l * finite) @ finite.T, so no [M, M, S] tensor is needed.
    f = finite.astype(np.float64)
    a = np.where(finite, arr, 0.0) @ f.T
    count = f @ f.T
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_delta = np.where(count > 0, (a - a.T) / count, np.nan)
    np.fill_diagonal(mean_delta, np.where(np.diag(count) > 0, 0.0, np.nan))
    return {"wins": wins, "adv_wins": adv_wins, "mean_delta": mean_delta}


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


# --- one competition's step (the live run_step_for_competition) -------------------------------

@dataclass(frozen=True)
class CompetitionStep:
    """What one competition's step computed, aligned with the input models (indices into it)."""

    ok: list[bool]  # has a loss row (its evaluation did not fail)
    wins: list[int] | None
    win_rate: list[float] | None
    win_abs_rate: list[float] | None
    advantage_factor: list[float | None] | None  # None for a model without loss row
    grouped_losses: np.ndarray | None  # [models, groups]; NaN rows for failed models; None when group_samples == 1
    weights: np.ndarray | None  # per input model; None = nothing computed, keep the previous weights
    next_pool: list[int]  # the models kept for the next step, ascending win rate (live's order)
    discarded: list[int]  # dropped models marked discarded (never visited again unless top miner)
    error: str | None  # why nothing was computed (e.g. fewer samples than group_samples)


def competition_step(losses: Sequence[Sequence[float] | None], blocks: Sequence[int | None], block_now: int, *,
                     group_samples: int, advantage_initial: float, advantage_decay: float,
                     weight_skew_factor: float, pool_size: int,
                     permutation: Sequence[int] | None = None, seed: int | None = None,
                     injected: Sequence[bool] | None = None,
                     discard_winrate: float = constants.DISCARD_WINRATE) -> CompetitionStep:
    """The live per-competition step on a loss matrix (README section 3).

    ``losses[i]`` is model i's per-sample loss row, None when its evaluation failed; models
    are given in evaluation order. Grouping (``group_samples`` > 1) uses ``permutation``
    when given, else ``grouping_permutation(n, group_samples, seed)``. Wins follow the live
    walk (block ascending, ties in input order, no block = 2**31); weights are
    ``win_rate ** skew`` normalised over every input model (failed ones at win rate 0); the
    next pool is the last ``pool_size`` of a STABLE ascending sort of the win rates (live's
    numpy sort may reorder ties); dropped models below ``discard_winrate`` in both win rate
    and absolute win rate, with a non-NaN (grouped) loss and not ``injected``, are discarded.

    Never raises for what breaks live: every model failed -> nothing computed, the pool is
    the input list; no complete group (live: ZeroDivisionError) -> ``error`` set, weights
    None (keep the previous ones), the pool is the input list. Bad input raises ValueError.
    """
    n = len(losses)
    if len(blocks) != n:
        raise ValueError(f"blocks: expected {n} entries (one per loss row), got {len(blocks)}")
    inj = [False] * n if injected is None else [bool(x) for x in injected]
    if len(inj) != n:
        raise ValueError(f"injected: expected {n} entries (one per loss row), got {len(inj)}")
    for i, b in enumerate(blocks):
        if b is not None and not _is_int(b):
            raise ValueError(f"blocks[{i}]: expected an integer block or None, got {b!r}")
    if not _is_int(block_now):
        raise ValueError(f"block_now: expected an integer block, got {block_now!r}")
    if not _is_int(group_samples) or group_samples < 1:
        raise ValueError(f"group_samples: must be an integer >= 1, got {group_samples!r}")
    if not _is_int(pool_size) or pool_size < 1:
        raise ValueError(f"pool_size: must be an integer >= 1, got {pool_size!r}")
    for name, v in (("advantage_initial", advantage_initial), ("advantage_decay", advantage_decay),
                    ("weight_skew_factor", weight_skew_factor), ("discard_winrate", discard_winrate)):
        if not _is_number(v) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: must be a finite number >= 0, got {v!r}")

    ok = [row is not None for row in losses]
    rows = {i: np.asarray(row, dtype=np.float64) for i, row in enumerate(losses) if row is not None}
    lengths = {r.shape for r in rows.values()}
    if any(len(shape) != 1 for shape in lengths) or len(lengths) > 1:
        raise ValueError(f"losses: every loss row must be 1-d with the same number of samples, "
                         f"got shapes {sorted(lengths)}")
    everyone = list(range(n))
    if n == 0:  # live: nobody to evaluate -> the competition's weights become {} (scored nobody)
        return CompetitionStep([], [], [], [], [], None, np.zeros(0), [], [], None)
    if not rows:  # live: compute_wins returns nothing; the weights stay, the pool is the evaluated list
        return CompetitionStep(ok, None, None, None, None, None, None, everyone, [], None)

    idx = sorted(rows)
    mat = np.vstack([rows[i] for i in idx])
    n_samples = mat.shape[1]
    grouped_out = None
    if group_samples > 1:
        if permutation is None:
            if seed is None:
                raise ValueError("competition_step: group_samples > 1 needs a permutation or a seed")
            permutation = grouping_permutation(n_samples, group_samples, seed)
        mat = group_losses(mat, group_samples, permutation)
        grouped_out = np.full((n, mat.shape[1]), np.nan)
        grouped_out[idx] = mat
    n_groups = mat.shape[1]
    if n_groups == 0:
        why = (f"no complete group: {n_samples} samples in groups of {group_samples}" if group_samples > 1
               else "no samples")
        return CompetitionStep(ok, None, None, None, None, grouped_out, None, everyone, [],
                               f"{why} (live: ZeroDivisionError); nothing computed, previous weights kept")

    block_of = [constants.BENCHMARK_NO_BLOCK if blocks[i] is None else int(blocks[i]) for i in idx]
    order = sorted(range(len(idx)), key=lambda k: block_of[k])  # stable: ties keep evaluation order
    factor = [advantage_factor(block_of[k], block_now, advantage_initial, advantage_decay) for k in range(len(idx))]
    ordered = mat[order]
    winner = np.asarray(order)[_walk(ordered, np.asarray([factor[k] for k in order]))]
    abs_winner = np.asarray(order)[np.argmin(ordered, axis=0)]  # first minimum in walk order; NaN is the minimum

    wins, abs_wins = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    wins[idx] = np.bincount(winner, minlength=len(idx))
    abs_wins[idx] = np.bincount(abs_winner, minlength=len(idx))
    win_rate = wins / n_groups
    win_abs_rate = abs_wins / n_groups
    factors: list[float | None] = [None] * n
    for k, i in enumerate(idx):
        factors[i] = factor[k]

    weights = win_rate ** weight_skew_factor
    total = np.sum(weights)
    if total:
        weights = weights / total

    ranked = np.argsort(win_rate, kind="stable").tolist()
    next_pool, dropped = ranked[-pool_size:], ranked[:-pool_size]
    row_of = {i: k for k, i in enumerate(idx)}
    # live marks only a model it evaluated: one (grouped) loss that is not NaN
    discarded = [i for i in dropped
                 if not inj[i] and ok[i] and win_rate[i] < discard_winrate and win_abs_rate[i] < discard_winrate
                 and bool((~np.isnan(mat[row_of[i]])).any())]
    return CompetitionStep(ok, wins.tolist(), win_rate.tolist(), win_abs_rate.tolist(), factors, grouped_out,
                           weights, next_pool, discarded, None)


# --- hall of fame -----------------------------------------------------------------------------

class HallOfFameEntry(BaseModel):
    """One hall-of-fame award: ``reward / 200`` of the weights at ``block``, decaying per epoch.

    As lenient as live: any non-negative reward (the live file has 1e9: with the cap it takes
    the whole share), a block in the future, extra keys; only block and reward are read."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    block: int | float
    reward: int | float
    desc: Any = ""
    url: Any = ""

    @field_validator("block", "reward", mode="before")
    @classmethod
    def _finite_number(cls, v: Any) -> Any:
        if not _is_number(v) or not math.isfinite(v):
            raise ValueError(f"expected a finite number, got {v!r}")
        return v

    @field_validator("reward")
    @classmethod
    def _not_negative(cls, v: float) -> float:
        # live would add a negative share (and then fail to set weights); we stop at it
        if v < 0:
            raise ValueError(f"must be >= 0, got {v!r}")
        return v


class HallOfFameError(ValueError):
    """hall_of_fame.json does not have the expected shape."""


def parse_hall_of_fame(data: Any, problems: list[str] | None = None) -> dict[str, list[HallOfFameEntry]]:
    """``{hotkey: [{block, reward, desc, url}, ...]}`` read as leniently as live.

    An entry that is not valid (missing block or reward, not a number) stops that hotkey's
    remaining entries, the ones before it count (live: the exception ends the hotkey's loop);
    a hotkey whose value is not a list has no entries. Each such skip is described in
    ``problems`` when given. Keys starting with ``_`` are comments. Only a top level that is
    not an object raises HallOfFameError.
    """
    if not isinstance(data, Mapping):
        raise HallOfFameError(f"hall of fame: expected an object {{hotkey: [entries]}}, got {type(data).__name__}")
    notes = problems if problems is not None else []
    out: dict[str, list[HallOfFameEntry]] = {}
    for hotkey, entries in data.items():
        if not isinstance(hotkey, str) or hotkey.startswith("_"):
            continue
        if not isinstance(entries, (list, tuple)):
            notes.append(f"hall of fame: hotkey {hotkey}: expected a list of entries, got "
                         f"{type(entries).__name__}; no reward")
            out[hotkey] = []
            continue
        parsed: list[HallOfFameEntry] = []
        for n, entry in enumerate(entries):
            if isinstance(entry, HallOfFameEntry):
                parsed.append(entry)
                continue
            try:
                parsed.append(HallOfFameEntry.model_validate(entry))
            except ValidationError as exc:
                reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())
                notes.append(f"hall of fame: hotkey {hotkey} entry #{n} ({entry!r}): {reasons}; "
                             f"this and its {len(entries) - n - 1} later entries ignored")
                break
        out[hotkey] = parsed
    return out


class HallOfFameRewards(dict):
    """``{uid: share}`` of the hall of fame (float32 values, as live), with ``total``: the
    hall-of-fame part of the weights, exactly ``max_fraction`` when the cap applied (live's
    ``reward_sum``; the float32 shares then sum to it only up to rounding)."""

    def __init__(self, shares: Mapping[int, float], total: float):
        super().__init__(shares)
        self.total = float(total)


def _hotkey_pairs(hotkey_of_uid: Mapping[int, str] | Sequence[str]) -> list[tuple[int, str]]:
    if isinstance(hotkey_of_uid, Mapping):
        pairs = list(hotkey_of_uid.items())
    elif isinstance(hotkey_of_uid, Sequence) and not isinstance(hotkey_of_uid, str):
        pairs = list(enumerate(hotkey_of_uid))
    else:
        raise ValueError(f"hotkey_of_uid: expected {{uid: hotkey}} or a list of hotkeys, "
                         f"got {type(hotkey_of_uid).__name__}")
    for uid, hk in pairs:
        if not _is_int(uid) or uid < 0:
            raise ValueError(f"hotkey_of_uid: uid {uid!r} is not an integer >= 0")
    return sorted((int(u), hk) for u, hk in pairs)


def _hof_shares(hof: Mapping[str, Sequence[Any]], pairs: list[tuple[int, str]], block_now: float,
                max_fraction: float, decay: float, epoch: int) -> HallOfFameRewards:
    if not (_is_number(max_fraction) and 0.0 <= max_fraction <= 1.0):
        raise ValueError(f"max_fraction: must be in [0, 1], got {max_fraction!r}")
    if epoch <= 0:
        raise ValueError(f"epoch: must be positive, got {epoch}")
    parsed = parse_hall_of_fame(hof)
    shares: dict[int, np.float32] = {}
    for uid, hotkey in pairs:  # live walks the metagraph's uids in order
        entries = parsed.get(hotkey) if isinstance(hotkey, str) else None
        if not entries:
            continue
        acc = np.float32(0.0)
        for e in entries:  # float32 accumulation, as live's torch vector
            iv = e.reward / constants.HALL_OF_FAME_IV_FACTOR
            acc = np.float32(acc + np.float32(iv * decay ** ((block_now - e.block) / epoch)))
        shares[uid] = acc
    vec = np.array(list(shares.values()), dtype=np.float32)
    total = float(_f32_sum(vec))
    if total > max_fraction:
        vec = vec * np.float32(max_fraction / total)
        total = float(max_fraction)
    return HallOfFameRewards({u: float(v) for u, v in zip(shares, vec.tolist()) if v != 0.0}, total)


def hall_of_fame_rewards(hof: Mapping[str, Sequence[Any]], hotkey_of_uid: Mapping[int, str] | Sequence[str],
                         block_now: int, max_fraction: float = constants.REWARDS_MAX_FRACTION) -> HallOfFameRewards:
    """Live ``get_reward_weights``: per uid whose hotkey is in the hall of fame, each entry adds
    ``reward / 200 * 0.995 ** ((block_now - block) / 361)`` (a future block adds more than
    reward/200); a total above ``max_fraction`` scales every share to sum to exactly it.
    Hotkeys not in the metagraph get nothing; uids with a zero share are left out.
    ``hof`` is the raw file content or `parse_hall_of_fame`'s result."""
    return _hof_shares(hof, _hotkey_pairs(hotkey_of_uid), block_now, max_fraction,
                       constants.HALL_OF_FAME_DECAY, constants.BLOCKS_PER_EPOCH)


def hall_of_fame_weights(hof: Mapping[str, Sequence[Any]], hotkey_to_uid: Mapping[str, int],
                         block_now: float, decay: float = constants.HALL_OF_FAME_DECAY,
                         cap: float = constants.REWARDS_MAX_FRACTION,
                         epoch: int = constants.BLOCKS_PER_EPOCH) -> HallOfFameRewards:
    """`hall_of_fame_rewards` keyed the other way (``{hotkey: uid}``), with the decay, cap and
    epoch as parameters."""
    return _hof_shares(hof, _hotkey_pairs({uid: hk for hk, uid in hotkey_to_uid.items()}), block_now, cap,
                       decay, epoch)


def apply_hall_of_fame(weights: Any, hof_shares: Mapping[int, float]) -> np.ndarray:
    """Scale the (normalised) model weights by ``1 - total share`` and add the shares.

    If the model weights are all zero the result holds only the hall-of-fame shares.
    (Not live's mixing, which normalises after adding: the validator uses `weight_vector`.)
    """
    w = np.asarray(weights, dtype=np.float64).copy()
    total_w = w.sum()
    if total_w > 0:
        w = w / total_w
    total_share = hof_shares.total if isinstance(hof_shares, HallOfFameRewards) else float(sum(hof_shares.values()))
    if not 0.0 <= total_share <= 1.0:
        raise ValueError(f"hall of fame shares: total must be in [0, 1], got {total_share}")
    w *= 1.0 - total_share
    for uid, share in hof_shares.items():
        if not 0 <= uid < w.shape[0]:
            raise ValueError(f"hall of fame shares: uid {uid} out of range 0..{w.shape[0] - 1}")
        w[uid] += share
    return w


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
    if not _is_int(n_uids) or n_uids < 1:
        raise ValueError(f"n_uids: must be an integer >= 1, got {n_uids!r}")
    hof_total = hof_rewards.total if isinstance(hof_rewards, HallOfFameRewards) else \
        float(_f32_sum(np.array(list(hof_rewards.values()), dtype=np.float32)))
    if not 0.0 <= hof_total <= 1.0:
        raise ValueError(f"hof_rewards: total share must be in [0, 1], got {hof_total}")
    vec = np.zeros(n_uids, dtype=np.float32)
    for cid, reward in rewards.items():
        if cid not in per_competition:
            continue
        if not _is_number(reward) or not math.isfinite(reward) or reward < 0:
            raise ValueError(f"competition {cid!r}: reward must be a finite number >= 0, got {reward!r}")
        for uid, w in per_competition[cid].items():
            if not _is_int(uid) or not 0 <= uid < n_uids:
                raise ValueError(f"competition {cid!r}: uid {uid!r} outside 0..{n_uids - 1}")
            if not _is_number(w) or not math.isfinite(w) or w < 0:
                raise ValueError(f"competition {cid!r}: uid {uid} weight must be finite and >= 0, got {w!r}")
            vec[uid] = (1 - hof_total) * reward * float(w)
    for uid, share in hof_rewards.items():
        if not _is_int(uid) or not 0 <= uid < n_uids:
            raise ValueError(f"hof_rewards: uid {uid!r} outside 0..{n_uids - 1}")
        vec[uid] += np.float32(share)
    total = _f32_sum(vec)
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
    if not _f32_sum(vec) > 0:
        return None
    return vec


def u16_weights(vector: Any, n_uids: int) -> tuple[list[int], list[int]]:
    """What live sends to the chain (bittensor 9.0.0 convert_weights_and_uids_for_emit): the
    first ``n_uids`` entries (the metagraph's uids), each divided by the largest, times
    65535, rounded with Python's round(), zeros dropped. A vector summing to less than 1e-5
    (NaN counted as 0) sends nothing: ``([], [])``. The version key to send with it is
    constants.WEIGHTS_VERSION_KEY."""
    v = np.nan_to_num(np.asarray(vector).reshape(-1), nan=0.0)
    if not _is_int(n_uids) or not 0 <= n_uids <= v.shape[0]:
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


# --- the pool -------------------------------------------------------------------------------

@dataclass
class PoolSelection:
    """Models a competition keeps evaluating: the best ``pool`` plus ``pending`` newcomers."""

    pool: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    dropped: list = field(default_factory=list)

    @property
    def keep(self) -> list:
        return self.pool + self.pending


def select_pool(win_rates: Mapping[K, float], pool_size: int = constants.POOL_SIZE,
                pend_size: int = constants.PEND_SIZE, pending: Sequence[K] = (),
                blocks: Mapping[K, float] | None = None) -> PoolSelection:
    """Pick which models to evaluate next step.

    * ``pool``: the ``pool_size`` evaluated models with the highest win rate (ties: the older
      commitment block first, then the given order; nan win rate ranks last).
    * ``pending``: up to ``pend_size`` newcomers not yet evaluated, in the order given (the
      caller's priority, e.g. oldest commitment first). A key that already has a win rate is
      not a newcomer and is ignored here.
    * ``dropped``: evaluated models that fell out of the pool.
    """
    if pool_size < 0 or pend_size < 0:
        raise ValueError(f"pool_size/pend_size: must be >= 0, got {pool_size}/{pend_size}")
    keys = list(win_rates)

    def sort_key(item: tuple[int, K]) -> tuple[float, float, int]:
        pos, k = item
        wr = float(win_rates[k])
        blk = float(blocks.get(k, math.nan)) if blocks is not None else math.nan
        return (-wr if not math.isnan(wr) else math.inf, blk if not math.isnan(blk) else math.inf, pos)

    ranked = [k for _, k in sorted(enumerate(keys), key=sort_key)]
    seen: set = set()
    newcomers = []
    for k in pending:
        if k not in win_rates and k not in seen:
            seen.add(k)
            newcomers.append(k)
    return PoolSelection(pool=ranked[:pool_size], pending=newcomers[:pend_size], dropped=ranked[pool_size:])
