"""One competition's section of a benchmark report (validator.adapters.htmlreport's format)
from the field's loss matrix, with the validator's ranking and benchmark.stats, so
compare.py only gathers the losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark import intervals
from benchmark import stats as bstats
from validator.core.scores import to_jsonable
from validator.core import winrule




def competition_section(labels: Sequence[str], uids: Sequence[int | None], blocks: Any, losses: Any,
                        n_tokens: Any, block_now: float, params: bstats.WinParams = bstats.WinParams(), *,
                        candidate_labels: Sequence[str] = (), candidate_losses: Any = None,
                        candidate_tokens: Any = None, kinds: Sequence[str] | None = None,
                        eligible: Any = None, include_deltas: bool = False,
                        n_boot: int = intervals.BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """One competition's report entry from the field's loss matrix (+ optional candidates).

    ``losses``/``n_tokens`` are ``[M, S]`` summed losses and token counts of the field
    (by default models without a uid are ranked but take no weight; `eligible` overrides
    that per field model). Candidates are judged each alone
    against the field (benchmark.stats.candidate_stats) and listed after the field.
    The win matrix is the pairwise win rate under the advantage rule.
    """
    fl = np.asarray(losses, dtype=np.float64)
    ft = np.asarray(n_tokens, dtype=np.float64)
    fb = np.asarray(blocks, dtype=np.float64).reshape(-1)
    if fl.shape != ft.shape:
        raise ValueError(f"n_tokens: shape {ft.shape} differs from losses {fl.shape}")
    m, s = fl.shape
    eligible = np.array([u is not None for u in uids] if eligible is None else eligible, dtype=bool)
    fs = bstats.field_stats(fl, fb, block_now, params, field_labels=list(labels), eligible=eligible,
                            n_boot=n_boot, seed=seed)
    kinds = list(kinds) if kinds is not None else ["chain" if u is not None else "benchmark" for u in uids]

    def per_token(loss_row: np.ndarray, tok_row: np.ndarray) -> tuple[np.ndarray, float]:
        with np.errstate(invalid="ignore", divide="ignore"):
            pt = np.where(tok_row > 0, loss_row / tok_row, np.nan)
        ok = np.isfinite(loss_row) & (tok_row > 0)
        mean = float(loss_row[ok].sum() / tok_row[ok].sum()) if ok.any() else math.nan
        return pt, mean

    models = []
    for i in range(m):
        pt, mean = per_token(fl[i], ft[i])
        iv = fs.win_rates[i]
        models.append({"label": labels[i], "uid": uids[i], "block": None if math.isnan(fb[i]) else int(fb[i]),
                       "kind": kinds[i], "mean_loss_per_token": mean, "losses_per_token": pt.tolist(),
                       "win_rate": iv.value, "win_rate_ci": [iv.low, iv.high], "weight": fs.weights[i]})
    candidates = []
    if candidate_losses is not None and len(candidate_labels):
        cl = np.asarray(candidate_losses, dtype=np.float64).reshape(len(candidate_labels), s)
        ct = np.asarray(candidate_tokens, dtype=np.float64).reshape(cl.shape)
        cstats = bstats.candidate_stats(fl, fb, cl, block_now, params, field_labels=list(labels),
                                        field_uids=list(uids), candidate_labels=list(candidate_labels),
                                        eligible=eligible, n_boot=n_boot, seed=seed)
        for c, st in enumerate(cstats):
            pt, mean = per_token(cl[c], ct[c])
            candidates.append(st.to_dict(include_deltas=include_deltas))
            models.append({"label": st.label, "uid": None, "block": None, "kind": "candidate",
                           "mean_loss_per_token": mean, "losses_per_token": pt.tolist(),
                           "win_rate": st.win_rate.value, "win_rate_ci": [st.win_rate.low, st.win_rate.high],
                           "weight": st.weight})
    # Pairwise matrix over field + candidates (candidates: newest, no advantage).
    all_losses = np.vstack([fl] + ([cl] if candidates else []))
    all_blocks = np.append(fb, np.full(len(candidates), np.nan))
    wm = winrule.win_matrix(all_losses, all_blocks, block_now, params.advantage_initial,
                            params.advantage_decay, params.epoch)
    frac = wm["adv_wins"] / float(s) if s else np.zeros_like(wm["adv_wins"], dtype=float)
    np.fill_diagonal(frac, np.nan)
    return to_jsonable({
        "models": models,
        "win_matrix": {"labels": [mm["label"] for mm in models], "values": frac,
                       "title": "each pair alone, under the advantage rule"},
        "candidates": candidates,
    })
