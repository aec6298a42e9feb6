"""Wins, win rates, weights, competition mixing, hall of fame and EMA (pure numpy).

Everything here is a pure function of arrays so that the win rule can be checked against
a plain per-sample loop and so that the benchmark (benchmark/stats.py) can reuse the exact
rule the validator applies.

Conventions
-----------
* ``losses`` is a float matrix ``[M models, S samples]`` of summed cross-entropy per sample.
  ``inf`` marks a failed sample (e.g. the text did not tokenize), ``nan`` a missing value.
  Neither ever wins a sample.
* ``blocks`` is a float vector ``[M]`` of commitment blocks; ``nan`` means "no block"
  (benchmark entries). Those models sort after every model with a block, in the given
  order, and have no advantage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Hashable, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import constants

K = TypeVar("K", bound=Hashable)


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

def advantages(blocks: Any, block_now: float, initial: float, decay: float,
               epoch: int = constants.BLOCKS_PER_EPOCH) -> np.ndarray:
    """``initial * decay ** ((block_now - block) / epoch)`` per model; 0 for a model without block.

    A block later than ``block_now`` (clock skew between chain reads) counts as age 0, so a
    model can never get more than ``initial``.
    """
    if epoch <= 0:
        raise ValueError(f"epoch: must be positive, got {epoch}")
    b = np.asarray(blocks, dtype=np.float64).reshape(-1)
    has_block = ~np.isnan(b)
    age = np.where(has_block, np.maximum(float(block_now) - np.where(has_block, b, 0.0), 0.0), 0.0)
    adv = float(initial) * np.power(float(decay), age / epoch)
    return np.where(has_block, adv, 0.0)


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


# --- the win rule -----------------------------------------------------------------------------

def sample_winners(losses: Any, blocks: Any, block_now: float, initial: float, decay: float,
                   epoch: int = constants.BLOCKS_PER_EPOCH) -> np.ndarray:
    """Index of the model that wins each sample under the advantage rule, -1 where none.

    Walk the models oldest first; the first finite loss is the incumbent; a later model
    takes the sample only if its loss < incumbent_loss * (1 - advantage(incumbent)), and
    then becomes the incumbent with its own advantage. Loop over models, vector over samples.
    """
    arr = _as_losses(losses)
    m, s = arr.shape
    b = _as_blocks(blocks, m)
    adv = advantages(b, block_now, initial, decay, epoch)
    winner = np.full(s, -1, dtype=np.int64)
    # Loss a challenger must beat strictly; +inf while nobody holds the sample, so the first
    # finite loss takes it.
    threshold = np.full(s, np.inf)
    for i in walk_order(b):
        row = arr[i]
        take = np.isfinite(row) & (row < threshold)
        winner[take] = i
        threshold[take] = row[take] * (1.0 - adv[i])
    return winner


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


def absolute_win_rates(losses: Any) -> np.ndarray:
    """Fraction of samples where the model has the strictly lowest raw loss (no advantage).

    A sample where the lowest finite loss is shared by several models counts for none.
    """
    arr = _as_losses(losses)
    m, s = arr.shape
    if s == 0:
        return np.zeros(m)
    finite = np.isfinite(arr)
    vals = np.where(finite, arr, np.inf)
    best = vals.min(axis=0)
    is_best = finite & (vals == best)
    unique = is_best.sum(axis=0) == 1
    return (is_best & unique).sum(axis=1) / float(s)


def win_matrix(losses: Any, blocks: Any, block_now: float, initial: float, decay: float,
               epoch: int = constants.BLOCKS_PER_EPOCH) -> dict[str, np.ndarray]:
    """Pairwise comparisons, every entry ``[i, j]`` about model i against model j alone.

    * ``wins``: samples where i's raw loss is finite and strictly lower than j's (or j's
      is inf/nan).
    * ``adv_wins``: samples i wins under the advantage rule with only i and j competing.
    * ``mean_delta``: mean of ``loss_i - loss_j`` over samples finite for both (nan if none).
    """
    arr = _as_losses(losses)
    m, s = arr.shape
    b = _as_blocks(blocks, m)
    adv = advantages(b, block_now, initial, decay, epoch)
    rank = np.empty(m, dtype=np.int64)
    rank[walk_order(b)] = np.arange(m)
    finite = np.isfinite(arr)
    wins = np.zeros((m, m), dtype=np.int64)
    adv_wins = np.zeros((m, m), dtype=np.int64)
    for i in range(m):
        li, fi = arr[i], finite[i]
        with np.errstate(invalid="ignore"):
            raw = fi & (~finite | (li < arr))
            # i older than j: i keeps the sample unless j beats i's loss less i's advantage.
            j_takes = finite & (arr < li * (1.0 - adv[i]))
            keep = fi & ~j_takes
            # i newer than j: i takes it if j has none, or beats j's loss less j's advantage.
            take = fi & (~finite | (li < arr * (1.0 - adv)[:, None]))
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


# --- hall of fame -----------------------------------------------------------------------------

class HallOfFameEntry(BaseModel):
    """One hall-of-fame award: a share of the weights, decaying from ``block``."""

    model_config = ConfigDict(extra="forbid")
    block: int = Field(ge=0)
    reward: float = Field(ge=0.0, le=1.0)
    desc: str = ""
    url: str = ""


class HallOfFameError(ValueError):
    """hall_of_fame.json does not have the expected shape."""


def parse_hall_of_fame(data: Any) -> dict[str, list[HallOfFameEntry]]:
    """Validate ``{hotkey: [{block, reward, desc, url}, ...]}``; keys starting with ``_`` are comments."""
    if not isinstance(data, Mapping):
        raise HallOfFameError(f"hall of fame: expected an object {{hotkey: [entries]}}, got {type(data).__name__}")
    out: dict[str, list[HallOfFameEntry]] = {}
    for hotkey, entries in data.items():
        if not isinstance(hotkey, str) or hotkey.startswith("_"):
            continue
        if not isinstance(entries, list):
            raise HallOfFameError(f"hall of fame: hotkey {hotkey}: expected a list of entries, "
                                  f"got {type(entries).__name__}")
        parsed = []
        for n, entry in enumerate(entries):
            try:
                parsed.append(HallOfFameEntry.model_validate(entry))
            except ValidationError as exc:
                reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())
                raise HallOfFameError(f"hall of fame: hotkey {hotkey} entry #{n} ({entry!r}): {reasons}") from None
        out[hotkey] = parsed
    return out


def hall_of_fame_weights(hof: Mapping[str, Sequence[Any]], hotkey_to_uid: Mapping[str, int],
                         block_now: float, decay: float = constants.HALL_OF_FAME_DECAY,
                         cap: float = constants.HALL_OF_FAME_MAX_REWARD,
                         epoch: int = constants.BLOCKS_PER_EPOCH) -> dict[int, float]:
    """Share of the weights each uid gets from the hall of fame.

    Each entry's reward decays by ``decay ** ((block_now - block) / epoch)``; hotkeys not
    registered (no uid) get nothing; if the summed share exceeds ``cap`` every share is
    scaled down so that the total equals ``cap``.
    """
    if not 0.0 <= cap <= 1.0:
        raise ValueError(f"cap: must be in [0, 1], got {cap}")
    parsed = parse_hall_of_fame({k: [e.model_dump() if isinstance(e, HallOfFameEntry) else e for e in v]
                                 for k, v in hof.items()})
    shares: dict[int, float] = {}
    for hotkey, entries in parsed.items():
        uid = hotkey_to_uid.get(hotkey)
        if uid is None or not entries:
            continue
        blocks = np.array([e.block for e in entries], dtype=np.float64)
        rewards = np.array([e.reward for e in entries], dtype=np.float64)
        age = np.maximum(float(block_now) - blocks, 0.0)
        share = float((rewards * np.power(float(decay), age / epoch)).sum())
        if share > 0:
            shares[int(uid)] = shares.get(int(uid), 0.0) + share
    total = sum(shares.values())
    if total > cap:
        shares = {u: s * cap / total for u, s in shares.items()}
    return shares


def apply_hall_of_fame(weights: Any, hof_shares: Mapping[int, float]) -> np.ndarray:
    """Scale the (normalised) model weights by ``1 - total share`` and add the shares.

    If the model weights are all zero the result holds only the hall-of-fame shares.
    """
    w = np.asarray(weights, dtype=np.float64).copy()
    total_w = w.sum()
    if total_w > 0:
        w = w / total_w
    total_share = float(sum(hof_shares.values()))
    if not 0.0 <= total_share <= 1.0:
        raise ValueError(f"hall of fame shares: total must be in [0, 1], got {total_share}")
    w *= 1.0 - total_share
    for uid, share in hof_shares.items():
        if not 0 <= uid < w.shape[0]:
            raise ValueError(f"hall of fame shares: uid {uid} out of range 0..{w.shape[0] - 1}")
        w[uid] += share
    return w


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
