"""The live win rule: advantages, walk order, grouping, wins, win rates, the pairwise win
matrix and one competition's step (pure numpy).

Everything here is a pure function of arrays so that the win rule can be checked against
a plain per-sample loop and so that the benchmark (benchmark/stats.py) can reuse the exact
rule the validator applies. The rules are the live subnet-29 validator's (coldint_validator
v1.0.16, HEAD constants); tests/data/live-compat/README.md section 3 pins them.

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
pool, discards).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import constants
from validator.core.numeric import is_int, is_number

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
    if not is_int(n_samples) or n_samples < 0:
        raise ValueError(f"n_samples: must be an integer >= 0, got {n_samples!r}")
    if not is_int(group_samples) or group_samples < 1:
        raise ValueError(f"group_samples: must be an integer >= 1, got {group_samples!r}")
    if not is_int(seed) or seed < 0:
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
    if not is_int(group_samples) or group_samples < 1:
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
        if b is not None and not is_int(b):
            raise ValueError(f"blocks[{i}]: expected an integer block or None, got {b!r}")
    if not is_int(block_now):
        raise ValueError(f"block_now: expected an integer block, got {block_now!r}")
    if not is_int(group_samples) or group_samples < 1:
        raise ValueError(f"group_samples: must be an integer >= 1, got {group_samples!r}")
    if not is_int(pool_size) or pool_size < 1:
        raise ValueError(f"pool_size: must be an integer >= 1, got {pool_size!r}")
    for name, v in (("advantage_initial", advantage_initial), ("advantage_decay", advantage_decay),
                    ("weight_skew_factor", weight_skew_factor), ("discard_winrate", discard_winrate)):
        if not is_number(v) or not math.isfinite(v) or v < 0:
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
