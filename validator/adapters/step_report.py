"""A saved validator step as an HTML report (validator.adapters.htmlreport's format): the
leaderboard's own tables, the legend, the weights, problems and plots of the evaluated models.
"""
from __future__ import annotations

from datetime import datetime, timezone

from validator.adapters.leaderboard import (COLUMN_JUSTIFY, GLOSSARY, WEIGHTS_COLUMNS, WEIGHTS_TITLE, _chain_win_rate,
                                            _is_bench, competition_rows, competition_title, n_groups,
                                            package_version, step_time, weights_rows, with_chain_win_rates)


def _plot_row(m: dict) -> dict:
    """An evaluated model for the report's plots; its win rate the one the table shows."""
    bench = _is_bench(m)
    return {"label": m["label"], "uid": m.get("uid"), "block": m.get("block"),
            "kind": "benchmark" if bench else "chain",
            "mean_loss_per_token": m.get("loss_per_token"),
            "losses_per_token": m.get("losses_per_token") or [],
            "win_rate": m.get("win_rate") if bench else _chain_win_rate(m), "weight": m.get("weight")}


def step_to_report(step: dict, generated: str | None = None) -> dict:
    """A saved step in the report format of validator.adapters.htmlreport (plots and HTML): the
    leaderboard's own tables (every model, evaluated or not, with its status and reason),
    the legend, the weights, problems, weights set or why not, and plots of the evaluated
    models. `generated`: when the report was made (default now, UTC)."""
    ema = step.get("weights") or {}
    comps = {}
    for cid, comp in (step.get("competitions") or {}).items():
        evaluated = [m for m in comp.get("models", []) if m.get("win_rate") is not None]
        section: dict = {"models": [_plot_row(m) for m in evaluated],
                         "table": {"title": competition_title(cid, comp), "columns": [c for c, _ in GLOSSARY],
                                   "align": [COLUMN_JUSTIFY.get(c, "right") for c, _ in GLOSSARY],
                                   "rows": competition_rows(comp, ema),
                                   "status": [m.get("status") or "" for m in comp.get("models", [])],
                                   "notes": [f"competition {cid}: {comp['error']}"] if comp.get("error") else []}}
        wm = comp.get("win_matrix") or {}
        if wm.get("adv_wins") and len(wm.get("labels", [])) == len(evaluated):
            n = n_groups(comp)  # adv_wins counts groups: a fraction of them, like the win rates
            section["win_matrix"] = {"labels": wm["labels"], "title": "head to head, with the row's advantage",
                                     "values": [[None if i == j else v / n for j, v in enumerate(row)]
                                                for i, row in enumerate(wm["adv_wins"])]}
        comps[cid] = section
    when = step_time(step)
    summary = [["step", str(step.get("step"))]]
    if when:
        summary.append(["step time", when])
    summary += [["weights set", step.get("weights_set") or "not recorded"],
                ["subnet paused", "yes: every competition's reward is 0 (hall of fame weights only)"
                 if step.get("paused") else "no"],
                ["seed", str(step.get("seed", "-"))],
                ["step took", f"{step.get('seconds') or 0:.1f} s"]]
    out = {"title": f"coldint validator: step {step.get('step')} at block {step.get('block')}",
           "block": step.get("block"),
           "generated": generated or datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "version": package_version(), "summary": summary, "problems": list(step.get("problems") or []),
           "legend": [list(g) for g in GLOSSARY],
           "tables": [{"title": WEIGHTS_TITLE, "columns": WEIGHTS_COLUMNS,
                       "rows": weights_rows(ema, step.get("hotkeys") or {})}],
           "competitions": comps}
    if isinstance(step.get("consensus"), dict):  # plotted and tabled by validator.adapters.htmlreport
        out["consensus"] = with_chain_win_rates(step["consensus"], step)
    return out
