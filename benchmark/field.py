"""The pure part of the benchmark: loss matrices and metadata -> the report dict.

`compare_field` judges each candidate alone against the field of its competition, as if
committed at the current block (no advantage for it; incumbents keep theirs): win rate
against the field under the validator's win rule, the weight it would receive, the paired
per-sample loss delta against the field's leader, and the loss ratio it needs per sample to
take one from the leader. 95 % intervals are percentile bootstraps over samples, and win
rates also get a Wilson score interval (benchmark.stats). Win rates and weights are the live
step's (validator.core.winrule.competition_step), after live's grouping (a remainder that does
not fill a group is dropped). The same inputs and seed give the same dict (but "generated").
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from datetime import datetime, timezone
from typing import Sequence

import numpy as np

import constants
from benchmark import report as breport
from benchmark import intervals
from benchmark import stats as bstats
from validator.core.scores import to_jsonable
from validator.core import winrule

EXIT_BEATS = 0  # at least one candidate beats the leader of its competition
EXIT_DOES_NOT = 1  # candidates were judged; none beats its leader (or it is too close to call)
EXIT_NOT_JUDGED = 2  # no candidate could be judged: refused, failed, no field, bad input


# --- inputs of the pure part -------------------------------------------------------------------


@dataclass
class ScoredModel:
    """One model's losses on the competition's samples (aligned with the sample ids)."""

    label: str
    losses: Sequence[float]  # summed cross-entropy per sample; inf = the sample failed
    n_tokens: Sequence[int]
    uid: int | None = None
    block: int | None = None  # commitment block; None for candidates
    kind: str = "chain"  # chain | benchmark (a local incumbent) | candidate
    hotkey: str | None = None
    path: str | None = None
    content_hash: str | None = None  # dir_hash: a candidate with a field model's content is a copy


@dataclass
class CompetitionField:
    """What `compare_field` needs of one competition."""

    field: list[ScoredModel]
    candidates: list[ScoredModel]
    sample_ids: list[str]
    params: bstats.WinParams = dc_field(default_factory=bstats.WinParams)
    group_samples: int = 1
    failed: list[dict] = dc_field(default_factory=list)  # {"label", "kind", "uid", "reason", "refused"?}
    warnings: list[str] = dc_field(default_factory=list)  # said beside every verdict of the competition


# --- the pure part ---------------------------------------------------------------------------


def _matrix(models: list[ScoredModel], attr: str, s: int) -> np.ndarray:
    rows = [np.asarray(getattr(m, attr), dtype=np.float64).reshape(-1) for m in models]
    for m, r in zip(models, rows):
        if r.shape[0] != s:
            raise ValueError(f"model {m.label!r}: {attr} has {r.shape[0]} entries, expected {s} (one per sample)")
    return np.vstack(rows) if rows else np.zeros((0, s))


def outcome(candidate: dict) -> str:
    """The short call of a candidate dict (CandidateStats.to_dict): same rule as its verdict."""
    if candidate.get("leader_index") is None:
        return "no field"
    return bstats.call(candidate.get("head_to_head"), candidate.get("head_to_head_wilson"))


def exit_status(report: dict) -> int:
    """EXIT_BEATS when a candidate beats its leader, EXIT_DOES_NOT when candidates were judged
    and none does, EXIT_NOT_JUDGED when none could be judged (refused, failed, no field)."""
    outcomes = [d.get("outcome") for sec in report.get("competitions", {}).values()
                for d in sec.get("candidates") or []]
    if "beats the leader" in outcomes:
        return EXIT_BEATS
    if any(o in ("does not beat the leader", "too close to call") for o in outcomes):
        return EXIT_DOES_NOT
    return EXIT_NOT_JUDGED


def live_grouping(matrices: list[np.ndarray], group: int, seed: int) -> list[np.ndarray]:
    """Each [rows, S] matrix grouped as the live step groups it (validator.core.winrule.group_losses
    over one seeded permutation, the remainder dropped); group 1 leaves them as they are."""
    if group == 1:
        return [np.asarray(m, dtype=np.float64) for m in matrices]
    n = matrices[0].shape[1] if matrices else 0
    perm = winrule.grouping_permutation(n, group, seed)
    return [winrule.group_losses(m, group, perm) if m.shape[0] else np.zeros((0, len(perm) // group))
            for m in matrices]


def compare_competition(cf: CompetitionField, block_now: int, *, seed: int = constants.BENCH_SEED,
                        n_boot: int = intervals.BOOTSTRAP_RESAMPLES) -> dict:
    """One competition's report section (validator.adapters.htmlreport's format, plus candidate details).

    Every field model can take weight (chain uids and local incumbents alike); candidates
    walk last, as if committed now. Samples are grouped like the live validator groups them
    (competition.group_samples; the remainder dropped) before any statistic. Fewer samples
    than one group: ValueError (live computes nothing then).
    """
    s = len(cf.sample_ids)
    if cf.group_samples < 1 or s < cf.group_samples:
        raise ValueError(f"{s} samples in groups of {cf.group_samples}: no complete group, nothing to judge")
    f, c = len(cf.field), len(cf.candidates)
    fl, ft = _matrix(cf.field, "losses", s), _matrix(cf.field, "n_tokens", s)
    cl, ct = _matrix(cf.candidates, "losses", s), _matrix(cf.candidates, "n_tokens", s)
    # losses of field + candidates together (live's all-inf rule looks at every model), tokens apart
    losses, tokens = live_grouping([np.vstack([fl, cl]), np.vstack([ft, ct])], cf.group_samples, seed)
    fl, cl = losses[:f], losses[f:]
    ft, ct = tokens[:f], tokens[f:]
    n = losses.shape[1]
    ids = list(cf.sample_ids) if cf.group_samples == 1 else [f"group {i}" for i in range(n)]
    fb = np.array([np.nan if m.block is None else float(m.block) for m in cf.field], dtype=np.float64)
    labels = [m.label for m in cf.field]
    uids = [m.uid for m in cf.field]
    clabels = [m.label for m in cf.candidates]
    p = cf.params

    # every incumbent can take weight here (a local incumbent stands for a committed model)
    section = breport.competition_section(
        labels, uids, fb, fl, ft, block_now, p, candidate_labels=clabels, candidate_losses=cl if c else None,
        candidate_tokens=ct if c else None, kinds=[m.kind for m in cf.field], eligible=np.ones(f, dtype=bool),
        include_deltas=True, n_boot=n_boot, seed=seed)
    adv = winrule.advantages(fb, block_now, p.advantage_initial, p.advantage_decay, p.epoch)
    for i, (mm, m) in enumerate(zip(section["models"][:f], cf.field)):
        mm.update(advantage=float(adv[i]), hotkey=m.hotkey, path=m.path)
    candidates = section["candidates"]
    for d, mm, m in zip(candidates, section["models"][f:], cf.candidates):
        d.update(kind=m.kind, path=m.path, mean_loss_per_token=mm["mean_loss_per_token"])
        d["outcome"] = outcome(d)
        lead_i = d.get("leader_index")
        d["leader_weight_now"] = None if lead_i is None else d["field_weights_without"][lead_i]
        d["leader_weight_with"] = None if lead_i is None else d["field_weights_with"][lead_i]
        for w in cf.warnings:
            d["verdict"] += f"; WARNING: {w}"
        twin = next((fm.label for fm in cf.field if m.content_hash and fm.content_hash == m.content_hash), None)
        d["copy_of"] = twin
        if twin is not None:  # on chain, first-seen content keeps it: a copy earns nothing
            d["verdict"] += f" (same content as {twin}: a copy)"
        mm.update(advantage=0.0, hotkey=None, path=m.path)
    section["candidates"] = candidates
    lead = next((d["leader_index"] for d in candidates), None)
    if lead is None and f:
        lead = bstats.field_stats(fl, fb, block_now, p, n_boot=n_boot, seed=seed).leader_index
    leader = None
    if lead is not None:
        mm = section["models"][lead]
        leader = {"index": lead, "label": mm["label"], "uid": mm["uid"], "block": mm["block"],
                  "advantage": float(adv[lead]), "required_ratio": 1.0 - float(adv[lead])}
    section.update(block_now=int(block_now), n_field=f, n_samples=n, group_samples=cf.group_samples,
                   sample_ids=ids, leader=leader, failed=list(cf.failed), warnings=list(cf.warnings))
    return to_jsonable(section)


def compare_field(competitions: dict[str, CompetitionField], block_now: int, *, seed: int = constants.BENCH_SEED,
                  n_boot: int = intervals.BOOTSTRAP_RESAMPLES, title: str | None = None,
                  extra: dict | None = None) -> dict:
    """The whole report dict (validator.adapters.htmlreport's format): one section per competition.

    Pure: the same inputs and seed give the same dict (but for "generated")."""
    if n_boot < intervals.BOOTSTRAP_MIN_RESAMPLES:
        raise ValueError(f"bootstrap resamples: at least {intervals.BOOTSTRAP_MIN_RESAMPLES}, got {n_boot}")
    report = {"title": title or "coldint benchmark: candidates against the field", "block": int(block_now),
              "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seed": int(seed),
              "bootstrap_resamples": int(n_boot), "confidence": intervals.CONFIDENCE,
              "competitions": {cid: compare_competition(cf, block_now, seed=seed, n_boot=n_boot)
                               for cid, cf in competitions.items()}}
    report.update(extra or {})
    return to_jsonable(report)
