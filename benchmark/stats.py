"""Would my candidate win? Statistics of candidates against the live field (pure numpy).

Each candidate is judged alone against the field, as if it were committed at the current
block: it walks last, while the field models keep their real advantage. Win rates and
weights are the live step's (validator.core.winrule.competition_step, on samples the caller has
already grouped as live groups them); the per-sample winners behind the intervals follow the
same walk (validator.core.winrule.sample_winners).

Confidence intervals are percentile bootstraps over samples: the per-sample outcome
(who wins, the paired loss delta) is computed once; a resample only re-averages those
per-sample numbers over resampled sample indices, so 1000+ resamples stay cheap. A
bootstrap interval of a win rate collapses to a point at 0 % or 100 % (every resample
is all wins), so win rates also get a Wilson score interval, which does not; the call
("beats the leader") needs both to clear one half.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import constants
from benchmark.intervals import (BOOTSTRAP_MIN_RESAMPLES, BOOTSTRAP_RESAMPLES, CONFIDENCE, Interval, bootstrap_means,
                                 percentiles, resample_chunks, wilson_interval)
from validator.core import winrule
from validator.core.scores import to_jsonable
from validator.core.weights import weights_from_win_rates


@dataclass(frozen=True)
class WinParams:
    """The competition numbers the win rule and the weights need."""

    advantage_initial: float = constants.ADVANTAGE_INITIAL
    advantage_decay: float = constants.ADVANTAGE_DECAY
    weight_skew_factor: float = constants.WEIGHT_SKEW_FACTOR
    epoch: int = constants.BLOCKS_PER_EPOCH

    @classmethod
    def from_competition(cls, competition: Any) -> "WinParams":
        """From a validator.core.competitions.Competition (or anything with those attributes)."""
        return cls(
            advantage_initial=float(getattr(competition, "advantage_initial", constants.ADVANTAGE_INITIAL)),
            advantage_decay=float(getattr(competition, "advantage_decay", constants.ADVANTAGE_DECAY)),
            weight_skew_factor=float(getattr(competition, "weight_skew_factor", constants.WEIGHT_SKEW_FACTOR)),
        )


@dataclass
class CandidateStats:
    """How one candidate would fare if committed now. Loss units are those of the input."""

    label: str
    n_samples: int
    win_rate: Interval  # samples won against the whole field under the win rule
    weight: float  # share of the competition's weight it would receive
    leader_index: int | None  # row of the field leader (highest field win rate)
    leader_label: str | None
    leader_uid: int | None
    leader_advantage: float  # the leader's advantage at block_now
    required_ratio: float  # candidate loss / leader loss must be below this on a sample
    loss_ratio: Interval | None  # summed candidate loss / summed leader loss, paired samples
    mean_delta: Interval | None  # mean of candidate - leader loss over paired samples
    n_paired: int  # samples where both losses are finite
    head_to_head: Interval | None  # samples won against the leader alone
    verdict: str
    win_rate_wilson: Interval | None = None  # Wilson score interval of win_rate (never collapses)
    head_to_head_wilson: Interval | None = None
    field_weights_without: list[float] = field(default_factory=list)  # the field's weights now, no candidate
    field_weights_with: list[float] = field(default_factory=list)  # ... if the candidate were committed now
    deltas: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # per-sample, nan if unpaired

    def to_dict(self, include_deltas: bool = False) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "deltas"}
        for key in ("win_rate", "loss_ratio", "mean_delta", "head_to_head", "win_rate_wilson",
                    "head_to_head_wilson"):
            out[key] = out[key].to_dict() if out[key] is not None else None
        if include_deltas:
            out["deltas"] = self.deltas
        return to_jsonable(out)


@dataclass
class FieldStats:
    """Win rates of the field alone (no candidate), with bootstrap CIs."""

    labels: list[str]
    win_rates: list[Interval]
    weights: list[float]
    leader_index: int | None

    def to_dict(self) -> dict:
        return to_jsonable({"labels": self.labels, "win_rates": [w.to_dict() for w in self.win_rates],
                       "weights": self.weights, "leader_index": self.leader_index})


def field_win_rate_intervals(losses: Any, blocks: Any, block_now: float, params: WinParams = WinParams(),
                             n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                             confidence: float = CONFIDENCE) -> list[Interval]:
    """Win rate of every model with a bootstrap CI, all models from one set of resamples."""
    arr = np.asarray(losses, dtype=np.float64)
    m, s = arr.shape
    winners = winrule.sample_winners(arr, blocks, block_now, params.advantage_initial,
                                     params.advantage_decay, params.epoch)
    point = winrule.win_rates(np.bincount(winners[winners >= 0], minlength=m), s)
    if s == 0:
        return [Interval(0.0, math.nan, math.nan, confidence) for _ in range(m)]
    if n_boot < BOOTSTRAP_MIN_RESAMPLES:
        raise ValueError(f"n_boot: at least {BOOTSTRAP_MIN_RESAMPLES} resamples, got {n_boot}")
    # Column m counts the samples nobody wins; one bincount per chunk with a row offset.
    code = np.where(winners >= 0, winners, m)
    rates = []
    for idx in resample_chunks(s, n_boot, seed):
        b = idx.shape[0]
        flat = (code[idx] + (m + 1) * np.arange(b)[:, None]).ravel()
        rates.append(np.bincount(flat, minlength=b * (m + 1)).reshape(b, m + 1)[:, :m] / s)
    rates_all = np.concatenate(rates)
    return [Interval(float(point[i]), *percentiles(rates_all[:, i], confidence), confidence) for i in range(m)]


# --- candidates -------------------------------------------------------------------------------

def _leader(win_rate: np.ndarray, blocks: np.ndarray) -> int | None:
    """Highest win rate; ties -> the model that walks first (older block, then index)."""
    if win_rate.size == 0:
        return None
    order = winrule.walk_order(blocks)
    return int(order[np.argmax(win_rate[order])])


def _name(label: str | None, uid: int | None) -> str:
    if uid is not None:
        return f"uid {uid}"
    return label or "the leader"


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f} %"


def _ci_pct(iv: Interval, wilson: Interval | None = None) -> str:
    if not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        return "no CI"
    text = f"{100 * iv.confidence:.0f} % CI {100 * iv.low:.0f}-{100 * iv.high:.0f} %"
    if wilson is not None and math.isfinite(wilson.low) and math.isfinite(wilson.high):
        text += f", Wilson {100 * wilson.low:.0f}-{100 * wilson.high:.0f} %"
    return text


def call(head_to_head: Interval | dict | None, wilson: Interval | dict | None) -> str:
    """The call against the leader: both intervals of the head-to-head win rate (bootstrap and
    Wilson) must lie above one half to beat it, or both below to lose; else too close to call."""
    def bounds(iv: Interval | dict | None) -> tuple[float, float]:
        if iv is None:
            return math.nan, math.nan
        lo, hi = (iv.low, iv.high) if isinstance(iv, Interval) else (iv.get("low"), iv.get("high"))
        return (math.nan if lo is None else lo), (math.nan if hi is None else hi)

    (blo, bhi), (wlo, whi) = bounds(head_to_head), bounds(wilson)
    if blo > 0.5 and (wlo > 0.5 or wilson is None):
        return "beats the leader"
    if bhi < 0.5 and (whi < 0.5 or wilson is None):
        return "does not beat the leader"
    return "too close to call"


def _weight_text(s: CandidateStats) -> str:
    line = f"would take ~{s.weight:.2f} of the competition's weight if committed now"
    if s.leader_index is not None and s.field_weights_without:
        lead = s.leader_index
        line += (f" ({_name(s.leader_label, s.leader_uid)}: {s.field_weights_without[lead]:.2f} now, "
                 f"{s.field_weights_with[lead]:.2f} with it)")
    return line


def _verdict(s: CandidateStats) -> str:
    if s.leader_index is None:
        return (f"{s.label}: no field to compare against; wins {_pct(s.win_rate.value)} of samples, "
                + _weight_text(s))
    who = _name(s.leader_label, s.leader_uid)
    parts = [f"{s.label}: wins {_pct(s.head_to_head.value)} of samples against {who} "
             f"({_ci_pct(s.head_to_head, s.head_to_head_wilson)})",
             f"{_pct(s.win_rate.value)} against the whole field ({_ci_pct(s.win_rate, s.win_rate_wilson)})"]
    line = ", ".join(parts) + ", " + _weight_text(s)
    if s.loss_ratio is not None and math.isfinite(s.loss_ratio.value):
        line += (f"; loss ratio to {who} {s.loss_ratio.value:.4f} "
                 f"(needs < {s.required_ratio:.4f} per sample to take it)")
    outcome = call(s.head_to_head, s.head_to_head_wilson)
    line += "; too close to call against the leader" if outcome == "too close to call" else f"; {outcome}"
    return line


def _block_or_none(b: float) -> int | None:
    return None if math.isnan(b) else int(b)


def live_step(losses: np.ndarray, blocks: Sequence[int | None], block_now: int,
              params: WinParams) -> "winrule.CompetitionStep":
    """The live step on already grouped rows (group_samples 1: the caller grouped them)."""
    return winrule.competition_step([row for row in losses], list(blocks), int(block_now), group_samples=1,
                                    advantage_initial=params.advantage_initial,
                                    advantage_decay=params.advantage_decay,
                                    weight_skew_factor=params.weight_skew_factor, pool_size=max(len(losses), 1))


def _step_rates(step: "winrule.CompetitionStep", n: int) -> np.ndarray:
    return np.zeros(n) if step.win_rate is None else np.asarray(step.win_rate, dtype=np.float64)


def candidate_stats(field_losses: Any, field_blocks: Any, candidate_losses: Any, block_now: float,
                    params: WinParams = WinParams(), *,
                    field_labels: Sequence[str] | None = None,
                    field_uids: Sequence[int | None] | None = None,
                    candidate_labels: Sequence[str] | None = None,
                    eligible: Any = None, n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                    confidence: float = CONFIDENCE) -> list[CandidateStats]:
    """Judge each candidate row alone against the field.

    ``field_losses [F, S]`` and ``candidate_losses [C, S]`` share sample columns.
    ``eligible`` (default: field models with a uid, or all if ``field_uids`` is None)
    says which field models can take weight; the candidate always can (as if committed).
    """
    fl = np.asarray(field_losses, dtype=np.float64)
    cl = np.asarray(candidate_losses, dtype=np.float64)
    if fl.ndim != 2:
        raise ValueError(f"field_losses: expected [models, samples], got shape {fl.shape}")
    if cl.ndim == 1:
        cl = cl[None, :]
    if cl.ndim != 2 or cl.shape[1] != fl.shape[1]:
        raise ValueError(f"candidate_losses: expected [candidates, {fl.shape[1]}], got shape {cl.shape}")
    f, s = fl.shape
    fb = np.asarray(field_blocks, dtype=np.float64).reshape(-1)
    if fb.shape[0] != f:
        raise ValueError(f"field_blocks: expected {f} entries, got {fb.shape[0]}")
    labels = list(field_labels) if field_labels is not None else [f"model {i}" for i in range(f)]
    uids = list(field_uids) if field_uids is not None else [None] * f
    clabels = list(candidate_labels) if candidate_labels is not None else [f"candidate {i}" for i in range(cl.shape[0])]
    if len(labels) != f or len(uids) != f or len(clabels) != cl.shape[0]:
        raise ValueError("field_labels/field_uids/candidate_labels: one entry per row expected")
    if eligible is None:
        elig = np.array([u is not None for u in uids]) if field_uids is not None else np.ones(f, dtype=bool)
    else:
        elig = np.asarray(eligible, dtype=bool).reshape(-1)
    rule = (block_now, params.advantage_initial, params.advantage_decay, params.epoch)
    field_blocks_int = [_block_or_none(b) for b in fb.tolist()]

    field_step = live_step(fl, field_blocks_int, block_now, params) if f else None
    field_rates = _step_rates(field_step, f) if field_step is not None else np.zeros(0)
    without = weights_from_win_rates(field_rates, params.weight_skew_factor, elig) if f else np.zeros(0)
    lead = _leader(field_rates, fb)
    lead_adv = float(winrule.advantages(fb[[lead]], block_now, params.advantage_initial,
                                        params.advantage_decay, params.epoch)[0]) if lead is not None else 0.0
    now = float(int(block_now))
    blocks_all = np.append(fb, now)  # the candidate, as if committed now: it walks last
    elig_all = np.append(elig, True)

    results = []
    for c in range(cl.shape[0]):
        cand = cl[c]
        full = np.vstack([fl, cand[None, :]])
        step = live_step(full, field_blocks_int + [int(block_now)], block_now, params)
        wr_all = _step_rates(step, f + 1)
        weights = (np.asarray(step.weights) if elig_all.all() and step.weights is not None
                   else weights_from_win_rates(wr_all, params.weight_skew_factor, elig_all))
        winners = winrule.sample_winners(full, blocks_all, *rule)  # per sample, for the intervals
        won = (winners == f).astype(np.float64)
        per_sample = {"win": won}
        wts: dict[str, np.ndarray] = {}
        deltas = np.full(s, np.nan)
        h2h_wins = 0.0
        if lead is not None:
            ll = fl[lead]
            paired = np.isfinite(cand) & np.isfinite(ll)
            deltas[paired] = cand[paired] - ll[paired]
            h2h = winrule.sample_winners(np.vstack([ll, cand]), np.array([fb[lead], now]), *rule)
            h2h_wins = float((h2h == 1).sum())
            per_sample.update(h2h=(h2h == 1).astype(np.float64), delta=np.where(paired, deltas, 0.0),
                              ratio=np.where(paired, cand, 0.0))
            wts.update(delta=paired.astype(np.float64), ratio=np.where(paired, ll, 0.0))
        ivs = bootstrap_means(per_sample, wts, n_boot, seed, confidence) if s else \
            {k: Interval(math.nan, math.nan, math.nan, confidence) for k in per_sample}
        # the point estimate is the live step's; the bootstrap only gives its spread
        ivs["win"] = Interval(float(wr_all[f]), ivs["win"].low, ivs["win"].high, confidence)
        n_paired = int(np.isfinite(deltas).sum())
        st = CandidateStats(
            label=clabels[c], n_samples=s, win_rate=ivs["win"], weight=float(weights[f]),
            leader_index=lead, leader_label=labels[lead] if lead is not None else None,
            leader_uid=(None if lead is None or uids[lead] is None else int(uids[lead])),
            leader_advantage=lead_adv, required_ratio=1.0 - lead_adv,
            loss_ratio=ivs.get("ratio") if n_paired else None,
            mean_delta=ivs.get("delta") if n_paired else None, n_paired=n_paired,
            head_to_head=ivs.get("h2h"), verdict="", deltas=deltas,
            win_rate_wilson=wilson_interval(round(float(wr_all[f]) * s), s, confidence),
            head_to_head_wilson=wilson_interval(h2h_wins, s, confidence) if lead is not None else None,
            field_weights_without=[float(x) for x in without], field_weights_with=[float(x) for x in weights[:f]])
        st.verdict = _verdict(st)
        results.append(st)
    return results


def field_stats(field_losses: Any, field_blocks: Any, block_now: float, params: WinParams = WinParams(), *,
                field_labels: Sequence[str] | None = None, eligible: Any = None,
                n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> FieldStats:
    """Win rates with CIs and weights of the field as the validator would rank it."""
    fl = np.asarray(field_losses, dtype=np.float64)
    fb = np.asarray(field_blocks, dtype=np.float64).reshape(-1)
    ivs = field_win_rate_intervals(fl, fb, block_now, params, n_boot, seed, confidence)
    rates = np.array([iv.value for iv in ivs])
    weights = weights_from_win_rates(rates, params.weight_skew_factor, eligible)
    labels = list(field_labels) if field_labels is not None else [f"model {i}" for i in range(fl.shape[0])]
    return FieldStats(labels=labels, win_rates=ivs, weights=weights.tolist(), leader_index=_leader(rates, fb))
