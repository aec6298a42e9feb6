"""Stage: a competition's ranking as a typed value (RankedCompetition).

The field's win rates (benchmark candidates included: what a candidate would get) and the
live step over the chain models alone (win rates, weights, the pool kept, the discards).
Weights and pools are read from this value, never from the report's rows: the report
(validator/step/report.py) is a view of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

import constants
from validator.adapters.evalcache import EvalCache
from validator.core import winrule
from validator.core.competitions import Competition
from validator.core.entries import Entry
from validator.core.scores import finite_or_none
from validator.step.evaluate import loss_rows

Floats = tuple[float, ...]
Opt = tuple[float | None, ...]


@dataclass(frozen=True)
class ChainRank:
    """The live step over the chain models evaluated (indices: `keys`, evaluation order).
    Satisfies validator.core.selection.StepOutcome (weights, next_pool, discarded)."""

    keys: tuple[str, ...]
    uids: tuple[int | None, ...]
    win_rate: Floats | None  # None: nothing computed (see error)
    abs_win_rate: Floats | None
    advantage: Opt | None  # 1 - advantage factor; None for a model without loss row
    weights: Floats | None  # None: nothing computed, the previous weights are kept
    next_pool: tuple[int, ...]  # kept for the next step (indices into keys)
    discarded: tuple[int, ...]
    error: str | None

    @property
    def pool_keys(self) -> frozenset[str]:
        return frozenset(self.keys[i] for i in self.next_pool)


@dataclass(frozen=True)
class RankedCompetition:
    """One competition's ranking this step. The field (`keys`: the entries with a loss row,
    in the order given; none without samples) with its win rates and loss statistics;
    `chain`: the live step over the chain models, None when no chain model was evaluated."""

    block: int
    n_samples: int
    group_samples: int
    n_groups: int  # the columns the wins count: live drops the samples that do not fill a group
    keys: tuple[str, ...]
    win_rate: Floats
    loss_per_token: Opt
    loss_per_token_std: Opt
    loss_per_sample: Opt
    losses_per_token: tuple[Opt, ...]  # per sample, for the leaderboard's plots
    win_matrix: Mapping[str, Any] = field(default_factory=dict)  # labels and winrule.win_matrix, JSON-able
    chain: ChainRank | None = None

    @property
    def error(self) -> str | None:
        return None if self.chain is None else self.chain.error


def _opt(values: Any) -> tuple | None:
    return None if values is None else tuple(values)


def rank_chain(entries: list[Entry], comp: Competition, cache: EvalCache, sample_ids: list[str],
               block_now: int, seed: int, discard_winrate: float = constants.DISCARD_WINRATE) -> ChainRank:
    """The live per-competition step over the chain models evaluated, in evaluation order."""
    step = winrule.competition_step(
        loss_rows(entries, cache, sample_ids), [e.block for e in entries], block_now,
        group_samples=comp.group_samples, advantage_initial=comp.advantage_initial,
        advantage_decay=comp.advantage_decay, weight_skew_factor=comp.weight_skew_factor,
        pool_size=comp.pool_size, seed=seed, discard_winrate=discard_winrate)
    advantage = None if step.win_rate is None else tuple(
        None if f is None else 1.0 - float(f) for f in step.advantage_factor)
    return ChainRank(keys=tuple(e.key for e in entries), uids=tuple(e.uid for e in entries),
                     win_rate=None if step.win_rate is None else tuple(float(x) for x in step.win_rate),
                     abs_win_rate=None if step.win_rate is None else tuple(float(x) for x in step.win_abs_rate),
                     advantage=advantage,
                     weights=None if step.weights is None else tuple(float(x) for x in step.weights),
                     next_pool=tuple(int(i) for i in step.next_pool),
                     discarded=tuple(int(i) for i in step.discarded), error=step.error)


def rank_competition(entries: list[Entry], comp: Competition, cache: EvalCache, sample_ids: list[str],
                     block_now: int, seed: int, chain_entries: list[Entry] | None = None,
                     discard_winrate: float = constants.DISCARD_WINRATE) -> RankedCompetition:
    """The competition's ranking: per model stats, win rates and the head-to-head matrix of
    the field (`entries`: every model shown, benchmark candidates included), and the live
    step over `chain_entries` alone (in evaluation order): a candidate never takes weight.
    An evaluated entry whose losses are all NaN or infinite gets a reason saying so."""
    ok = [e for e in entries if e.evaluated]
    blocks = [e.block for e in ok]
    chain = rank_chain(chain_entries, comp, cache, sample_ids, block_now, seed, discard_winrate) \
        if chain_entries else None
    matrix: dict = {"labels": [e.label for e in ok]}
    n_groups, rates, tok, tok_std, per_sample, per_tok_rows = 0, [], [], [], [], []
    if ok and sample_ids:
        losses = cache.losses.get_matrix([e.cache_key for e in ok], sample_ids)
        ntok = cache.losses.get_ntokens([e.cache_key for e in ok], sample_ids)
        field_step = winrule.competition_step(
            losses.tolist(), blocks, block_now, group_samples=comp.group_samples,
            advantage_initial=comp.advantage_initial, advantage_decay=comp.advantage_decay,
            weight_skew_factor=comp.weight_skew_factor, pool_size=comp.pool_size, seed=seed)
        grouped = losses if field_step.grouped_losses is None else field_step.grouped_losses
        n_groups = int(grouped.shape[1])
        rule = (block_now, comp.advantage_initial, comp.advantage_decay)
        wblocks = np.array([np.nan if b is None else float(b) for b in blocks])
        wm = winrule.win_matrix(grouped, wblocks, *rule) if grouped.shape[1] else {}
        # strict JSON (the step report): a pair with no sample finite for both has mean_delta NaN -> null
        matrix.update({k: np.where(np.isfinite(v), v, None).tolist() if np.asarray(v).dtype.kind == "f"
                       else np.asarray(v).tolist() for k, v in wm.items()})
        with np.errstate(divide="ignore", invalid="ignore"):
            # live's loss per token: the summed loss over the number of token ids (n_tokens + 1)
            per_tok = losses / np.where(ntok > 0, ntok + 1, np.nan)
        rates = [float(r) for r in (field_step.win_rate or [0.0] * len(ok))]
        for i, e in enumerate(ok):
            finite_tok = per_tok[i][np.isfinite(per_tok[i])]
            finite = losses[i][np.isfinite(losses[i])]
            n_nan = int(np.isnan(losses[i]).sum())
            if n_nan and not e.reason:  # NaN weights give NaN losses: say why the model wins nothing
                e.reason = (f"{n_nan} of {len(sample_ids)} losses are NaN (non-finite model outputs); "
                            "a NaN loss never takes a sample from another model")
            elif not finite.size and not e.reason:
                e.reason = f"no finite loss on any of {len(sample_ids)} samples"
            tok.append(float(finite_tok.mean()) if finite_tok.size else None)
            tok_std.append(float(finite_tok.std()) if finite_tok.size else None)
            per_sample.append(float(finite.mean()) if finite.size else None)
            per_tok_rows.append(tuple(finite_or_none(float(x)) for x in per_tok[i]))
    return RankedCompetition(block=block_now,
                             n_samples=len(sample_ids), group_samples=comp.group_samples, n_groups=n_groups,
                             keys=tuple(e.key for e in ok[:len(rates)]), win_rate=tuple(rates), loss_per_token=tuple(tok),
                             loss_per_token_std=tuple(tok_std), loss_per_sample=tuple(per_sample),
                             losses_per_token=tuple(per_tok_rows), win_matrix=matrix, chain=chain)
