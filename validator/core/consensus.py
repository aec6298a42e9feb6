"""Are we in consensus? Our weights against the other validators', the way Yuma sees them.

A validator earns dividends in proportion to its validator trust, and the chain computes that
trust from everyone's last weights, which the metagraph already holds. This module estimates,
from one `Metagraph` and the weights we are about to set, what the chain will see. Pure: no I/O.

The rules, from subtensor's epoch (pallets/subtensor/src/epoch/run_epoch.rs, `epoch` and
`epoch_dense`) and math.rs (`weighted_median`, `weighted_median_col_sparse`, `col_clip_sparse`,
`row_sum_sparse`), read through the search tool's code corpus:

1. Stake. Each uid's stake is normalised over the subnet; stake of a uid whose last weights
   are older than the activity cutoff (`last_update + cutoff < block`) or that holds no
   validator permit is set to 0; the rest is normalised again to sum 1 ("active stake").
   Normalising twice over the subnet equals normalising once over the validators kept,
   which is what is done here.
2. Weights. Rows of uids without a permit are dropped; a validator's weight on its own uid
   is dropped (the diagonal; the chain keeps the subnet owner's self-weight, which a
   metagraph does not name); each row is normalised to sum 1 (an empty row stays 0).
3. Consensus, per uid j: the stake-weighted median of the column w_ij over the validators
   with active stake > 0, with majority kappa: the smallest value c_j such that the stake of
   validators with w_ij <= c_j exceeds 1 - kappa. Put the other way: the largest weight that
   validators holding at least kappa of the stake give j. A validator with active stake and
   an empty row counts as weight 0 on every uid (the chain does the same).
4. Clipping and trust: every weight is clipped at consensus, min(w_ij, c_j), and validator
   trust is the row sum of the clipped weights:  vtrust_i = sum_j min(w_ij, c_j).

Our own row: the weights we are about to set are not on chain yet, so `vtrust` is our trust
against the consensus of the OTHER validators (our last on-chain row is left out of it).
`vtrust_if_set` also puts our row, with our stake, into the consensus, as the next epoch
will once these weights are set; the two differ only by our own pull on the median.

Not modelled (each makes the estimate a little off, never the direction): the chain's minimum
stake threshold for validators (it zeroes the stake of validators below it), the mask of
weights set before the target uid was last registered (a metagraph carries no registration
block), the owner's kept self-weight, commit-reveal (a revealed row is what the metagraph
shows), and the chain's fixed-point arithmetic (I32F32 and u16-quantised weights; floats
here, a difference of order 1e-5).
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import constants
from validator.core.chain import Metagraph

WeightsLike = Mapping[Any, float] | Sequence[float]


# --- the rules (pure numbers) -----------------------------------------------------------------


def normalise_row(row: WeightsLike, self_uid: int | None = None,
                  known: Iterable[int] | None = None) -> dict[int, float]:
    """{uid: weight} summing to 1, as the chain normalises a row: the weight on `self_uid`,
    zeros and uids outside `known` are dropped first. {} when nothing positive is left.

    `row` is a mapping uid -> weight (uids as ints or decimal strings, as in a step report)
    or a sequence indexed by uid. A negative or non-finite weight is refused (ValueError)."""
    items = row.items() if isinstance(row, Mapping) else enumerate(row)
    allowed = None if known is None else set(known)
    clean: dict[int, float] = {}
    for key, value in items:
        uid = _uid(key)
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"weights: uid {uid}: weight {value!r} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weights: uid {uid}: weight {value!r} must be finite and >= 0")
        if w > 0 and uid != self_uid and (allowed is None or uid in allowed):
            clean[uid] = clean.get(uid, 0.0) + w
    total = sum(clean.values())
    return {u: w / total for u, w in sorted(clean.items())} if total > 0 else {}


def _uid(key: Any) -> int:
    if isinstance(key, bool):
        raise ValueError(f"weights: uid {key!r} is not an integer")
    if isinstance(key, int):
        uid = key
    elif isinstance(key, str) and key.strip().isdigit():
        uid = int(key)
    else:
        try:
            uid = int(key)  # numpy integers
        except (TypeError, ValueError):
            raise ValueError(f"weights: uid {key!r} is not an integer") from None
        if uid != key:
            raise ValueError(f"weights: uid {key!r} is not an integer")
    if uid < 0:
        raise ValueError(f"weights: uid {key!r} must be >= 0")
    return uid


def weighted_median(stake: Sequence[float], score: Sequence[float], kappa: float = constants.CONSENSUS_KAPPA) -> float:
    """The stake-weighted median of `score` with majority `kappa`, as subtensor's
    math.rs `weighted_median` finds it: a mid-pivot partition search for the score p with
    stake(score < p) <= minority < stake(score <= p), minority = sum(stake) - kappa.

    `stake` must already be normalised (sum 1) and positive; 0 for no rows."""
    if len(stake) != len(score):
        raise ValueError(f"weighted_median: {len(stake)} stakes but {len(score)} scores")
    minority = sum(stake) - kappa
    part, lo, hi = list(range(len(stake))), 0.0, sum(stake)
    while True:
        if not part:
            return 0.0
        if len(part) == 1:
            return float(score[part[0]])
        pivot = score[part[len(part) // 2]]
        lower = [i for i in part if score[i] < pivot]
        upper = [i for i in part if score[i] > pivot]
        lo_stake = sum(stake[i] for i in lower)
        hi_stake = sum(stake[i] for i in upper)
        if lo + lo_stake <= minority < hi - hi_stake:
            return float(pivot)
        if minority < lo + lo_stake and lower:
            part, hi = lower, lo + lo_stake
        elif hi - hi_stake <= minority and upper:
            part, lo = upper, hi - hi_stake
        else:
            return float(pivot)


def consensus_weights(stakes: Sequence[float], rows: Sequence[Mapping[int, float]], uids: Iterable[int],
                      kappa: float = constants.CONSENSUS_KAPPA) -> dict[int, float]:
    """Per uid, the stake-weighted median (Yuma's consensus) of the normalised `rows`;
    rows whose stake is 0 take no part. {uid: c} for every uid of `uids`."""
    if len(stakes) != len(rows):
        raise ValueError(f"consensus: {len(stakes)} stakes but {len(rows)} weight rows")
    kept = [(float(s), r) for s, r in zip(stakes, rows) if s > 0]
    total = sum(s for s, _ in kept)
    if not kept:
        return {u: 0.0 for u in uids}
    share = [s / total for s, _ in kept]
    return {u: weighted_median(share, [r.get(u, 0.0) for _, r in kept], kappa) for u in uids}


def validator_trust(row: Mapping[int, float], consensus: Mapping[int, float]) -> float:
    """sum_j min(w_j, c_j): the row clipped at consensus, summed (the chain's validator trust)."""
    return float(sum(min(w, consensus.get(u, 0.0)) for u, w in row.items()))


def cosine(a: Mapping[int, float], b: Mapping[int, float]) -> float | None:
    """Cosine similarity of two sparse vectors; None when either is all zero."""
    na = math.sqrt(sum(v * v for v in a.values()))
    nb = math.sqrt(sum(v * v for v in b.values()))
    if na == 0 or nb == 0:
        return None
    return float(sum(v * b.get(u, 0.0) for u, v in a.items()) / (na * nb))


def l1(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    return float(sum(abs(a.get(u, 0.0) - b.get(u, 0.0)) for u in set(a) | set(b)))


# --- the report (from a metagraph) ------------------------------------------------------------


def _validators(meta: Metagraph, our_hotkey: str | None, cutoff: int) -> tuple[list[dict], list[dict]]:
    """(counted, left out): the other validators whose stake and rows enter the consensus,
    and the permitted ones with stake that do not (inactive)."""
    counted, left_out = [], []
    known = set(meta.uids)
    for i, uid in enumerate(meta.uids):
        hotkey, stake = meta.hotkeys[i], float(meta.stake[i])
        if hotkey == our_hotkey or not meta.validator_permit[i] or not stake > 0:
            continue
        age = meta.block - int(meta.last_update[i])
        if int(meta.last_update[i]) + cutoff < meta.block:
            left_out.append({"uid": uid, "hotkey": hotkey, "stake": stake, "age_blocks": age,
                             "why": f"inactive: last set weights {age} blocks ago (cutoff {cutoff})"})
            continue
        counted.append({"uid": uid, "hotkey": hotkey, "stake": stake, "age_blocks": age,
                        "row": normalise_row(meta.weights.get(uid, {}), self_uid=uid, known=known)})
    return counted, left_out


def _model_rows(step_report: Mapping | None) -> dict[int, dict]:
    """uid -> its row in the step report's competition tables (with the competition id)."""
    rows: dict[int, dict] = {}
    for cid, comp in ((step_report or {}).get("competitions") or {}).items():
        for m in comp.get("models") or []:
            uid = m.get("uid")
            if isinstance(uid, int) and uid not in rows:
                rows[uid] = {**m, "competition": cid}
    return rows


def _reason(model: dict | None, have_step: bool) -> dict:
    """Why we weigh a uid as we do, from its row in the step report."""
    if model is None:
        return {"status": "not visited" if have_step else None, "reason": None, "win_rate": None,
                "competition": None}
    status = model.get("status")
    if status in ("scored", "cached"):
        status = "scored"
    return {"status": status, "reason": model.get("reason"), "win_rate": model.get("win_rate"),
            "competition": model.get("competition")}


def consensus_report(meta: Metagraph, our_weights: WeightsLike, step_report: Mapping | None = None, *,
                     hotkey: str | None = None, top_n: int = constants.CONSENSUS_TOP_DIFFERENCES,
                     kappa: float = constants.CONSENSUS_KAPPA,
                     activity_cutoff: int = constants.CONSENSUS_ACTIVITY_CUTOFF_BLOCKS) -> dict:
    """Our weights against the other validators' (JSON-able; uid keys are strings).

    `our_weights`: {uid: weight} (a step report's "weights") or a sequence indexed by uid;
    normalised here as the chain will. `hotkey`: ours; its row on chain is left out of the
    consensus. `step_report` (Validator.step's) gives each listed uid its status, reason and
    win rate. Keys of the result:

      block, kappa, activity_cutoff_blocks, hotkey, uid
      our_age_blocks    blocks since our uid last set weights on chain (None: not registered)
      vtrust            sum_j min(ours_j, consensus_j), consensus of the others; None without them
      vtrust_if_set     the same with our row and stake in the consensus (None: no permit/stake/uid)
      l1_to_consensus   sum_j |ours_j - consensus_j| (= 1 + sum(consensus) - 2 vtrust)
      agreement         stake-weighted mean cosine similarity of ours with each validator's row
      consensus_sum     sum of the consensus vector (1 when the validators agree; less otherwise)
      consensus_weights {uid: c} (c > 0), ours {uid: w} (w > 0)
      validators        [{uid, hotkey, stake, stake_share, age_blocks, n_weights, cosine, l1, vtrust}]
                        the validators counted, largest stake first (their vtrust: the chain's)
      left_out          [{uid, hotkey, stake, age_blocks, why}] permitted, with stake, not counted
      top_differences   [{uid, hotkey, ours, consensus, diff, status, reason, win_rate, competition}]
                        the top_n uids by |ours - consensus|, largest first
      notes             [str] what limits the estimate
    """
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
        raise ValueError(f"consensus: top_n must be an integer >= 0, got {top_n!r}")
    if not 0 < kappa <= 1:
        raise ValueError(f"consensus: kappa must be in (0, 1], got {kappa!r}")
    our_uid = meta.uid_of(hotkey) if hotkey else None
    known = set(meta.uids)
    ours = normalise_row(our_weights, self_uid=our_uid, known=known)
    counted, left_out = _validators(meta, hotkey, activity_cutoff)
    notes: list[str] = []
    columns = sorted(known | set(ours))
    stakes = [v["stake"] for v in counted]
    consensus = consensus_weights(stakes, [v["row"] for v in counted], columns, kappa)
    total_stake = sum(stakes)

    validators = []
    for v in counted:
        validators.append({
            "uid": v["uid"], "hotkey": v["hotkey"], "stake": v["stake"], "stake_share": v["stake"] / total_stake,
            "age_blocks": v["age_blocks"], "n_weights": len(v["row"]),
            "cosine": cosine(ours, v["row"]) if ours else None, "l1": l1(ours, v["row"]) if ours else None,
            "vtrust": validator_trust(v["row"], consensus)})
    validators.sort(key=lambda v: (-v["stake"], v["uid"]))
    empty = [v["uid"] for v in counted if not v["row"]]
    if empty:
        notes.append(f"validators {empty} count with stake but hold no weights (the chain counts them as 0s)")

    have_others = bool(counted)
    if not have_others:
        notes.append("no other active validator with stake: nothing to agree with")
    if not ours:
        notes.append("we have no weights to compare")
    if hotkey and our_uid is None:
        notes.append(f"our hotkey {hotkey} is not registered on the subnet: the chain would ignore our weights")
    our_age = None
    if our_uid is not None:
        our_age = meta.block - int(meta.last_update[meta.uids.index(our_uid)])
        if our_age > activity_cutoff:
            notes.append(f"our last weights on chain are {our_age} blocks old (cutoff {activity_cutoff}): "
                         "the chain counts us inactive until we set weights")
    if our_uid is not None and our_uid in {u for u, w in _raw_positive(our_weights)}:
        notes.append(f"our weight on our own uid {our_uid} is dropped (the chain masks self-weight)")

    vtrust = validator_trust(ours, consensus) if have_others and ours else None
    cosines = [(v["stake"], v["cosine"]) for v in validators if v["cosine"] is not None]
    agreement = (sum(s * c for s, c in cosines) / sum(s for s, _ in cosines)) if cosines else None
    vtrust_if_set = _vtrust_if_set(meta, our_uid, ours, counted, columns, kappa, notes) if ours else None

    have_step = step_report is not None
    models = _model_rows(step_report)
    diffs = []
    for u in sorted(set(ours) | {u for u, c in consensus.items() if c > 0}):
        d = ours.get(u, 0.0) - consensus.get(u, 0.0)
        if abs(d) >= constants.CONSENSUS_MIN_DIFFERENCE:
            diffs.append((u, d))
    diffs.sort(key=lambda ud: (-abs(ud[1]), ud[0]))
    top = [{"uid": u, "hotkey": meta.hotkey_of(u), "ours": ours.get(u, 0.0), "consensus": consensus.get(u, 0.0),
            "diff": d, **_reason(models.get(u), have_step)} for u, d in diffs[:top_n]]

    return {
        "block": meta.block, "kappa": kappa, "activity_cutoff_blocks": activity_cutoff,
        "hotkey": hotkey, "uid": our_uid, "our_age_blocks": our_age,
        "vtrust": vtrust, "vtrust_if_set": vtrust_if_set,
        "l1_to_consensus": l1(ours, consensus) if have_others and ours else None,
        "agreement": agreement,
        "consensus_sum": float(sum(consensus.values())),
        "consensus_weights": {str(u): c for u, c in consensus.items() if c > 0},
        "ours": {str(u): w for u, w in ours.items()},
        "validators": validators, "left_out": left_out, "top_differences": top, "notes": notes,
    }


def _raw_positive(weights: WeightsLike) -> list[tuple[int, float]]:
    items = weights.items() if isinstance(weights, Mapping) else enumerate(weights)
    return [(_uid(k), float(v)) for k, v in items if float(v) > 0]


def _vtrust_if_set(meta: Metagraph, our_uid: int | None, ours: dict[int, float], counted: list[dict],
                   columns: list[int], kappa: float, notes: list[str]) -> float | None:
    """Our trust once our row is on chain, with our stake in the median."""
    if our_uid is None:
        return None
    i = meta.uids.index(our_uid)
    if not meta.validator_permit[i]:
        notes.append("we hold no validator permit: the chain ignores our weights (trust 0 once set)")
        return None
    if not float(meta.stake[i]) > 0:
        notes.append("we hold no stake: our weights do not count in the consensus")
        return None
    stakes = [v["stake"] for v in counted] + [float(meta.stake[i])]
    consensus = consensus_weights(stakes, [v["row"] for v in counted] + [ours], columns, kappa)
    return validator_trust(ours, consensus)


# --- across steps -----------------------------------------------------------------------------


class ConsensusWatch:
    """Keeps the last estimates; `observe` returns a warning (for the caller to log) while the
    estimated trust has been below `threshold` for `steps` observed steps in a row.

    A step without an estimate (no other validator, no weights) neither counts nor breaks
    the run."""

    def __init__(self, threshold: float = constants.CONSENSUS_VTRUST_WARN, steps: int = constants.CONSENSUS_WARN_STEPS,
                 keep: int = constants.CONSENSUS_HISTORY_STEPS) -> None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"ConsensusWatch: threshold must be in [0, 1], got {threshold!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"ConsensusWatch: steps must be an integer >= 1, got {steps!r}")
        self.threshold, self.steps = float(threshold), steps
        self.history: deque[dict] = deque(maxlen=max(keep, steps))
        self.below = 0  # observed steps in a row below the threshold

    @property
    def last(self) -> dict | None:
        return self.history[-1] if self.history else None

    def observe(self, report: Mapping) -> str | None:
        """Record a consensus_report; the warning text, also stored as report["warning"], or None."""
        vtrust = report.get("vtrust")
        self.history.append({"block": report.get("block"), "vtrust": vtrust, "l1": report.get("l1_to_consensus")})
        if vtrust is None:
            return None
        self.below = self.below + 1 if vtrust < self.threshold else 0
        if self.below < self.steps:
            return None
        worst = report.get("top_differences") or []
        uids = ", ".join(str(d["uid"]) for d in worst[:3])
        msg = (f"estimated validator trust {vtrust:.3f} below {self.threshold:g} for {self.below} steps in a row"
               + (f"; largest differences from consensus at uids {uids}" if uids else ""))
        if isinstance(report, dict):
            report["warning"] = msg
        return msg
