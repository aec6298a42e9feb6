"""The step report: the one place a step's values become rows and dicts (strict JSON).

Every text that can come from a miner (labels, reasons, commitments, hub answers) is
escaped here, the last gate before the console, the log and the report file.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import constants
from validator.core.chain import Metagraph
from validator.core.entries import Entry, FetchRecord
from validator.core.sanitize import printable
from validator.step.rank import RankedCompetition


def _shown(text: str | None, limit: int | None = None) -> str | None:
    return None if text is None else printable(text, limit)


def _entry_row(e: Entry, block_now: int) -> dict:
    # the last gate before the console and the report: every text that can come from a miner is escaped
    return {"key": _shown(e.key), "label": _shown(e.label), "uid": e.uid, "hotkey": _shown(e.hotkey),
            "block": e.block,
            "age_blocks": None if e.block is None else block_now - e.block, "status": e.status,
            "reason": _shown(e.reason), "content_hash": _shown(e.content_hash), "commitment": _shown(e.commitment),
            "win_rate": None, "chain_win_rate": None, "weight": None,
            "tokenizer": _shown(e.tokenizer), "tokenizer_reason": _shown(e.tokenizer_reason),
            "engine": _shown(e.engine), "notes": list(e.notes), "scored_on": _shown(e.scored_on)}


def competition_table(entries: list[Entry], ranked: RankedCompetition) -> dict:
    """The competition's table: a row per entry (ranked ones with their stats), the chain
    step's numbers on the chain rows, and the head-to-head matrix."""
    block_now = ranked.block
    ranked_entries = [e for e in entries if e.evaluated][:len(ranked.keys)]
    table = [{**_entry_row(e, block_now), "win_rate": ranked.win_rate[i],
              "loss_per_token": ranked.loss_per_token[i], "loss_per_token_std": ranked.loss_per_token_std[i],
              "loss_per_sample": ranked.loss_per_sample[i],
              # per sample, for the plots of `coldint-validator leaderboard --out`
              "losses_per_token": list(ranked.losses_per_token[i])}
             for i, e in enumerate(ranked_entries)]
    shown = ranked_entries + [e for e in entries if not e.evaluated]
    table += [_entry_row(e, block_now) for e in shown[len(ranked_entries):]]
    chain = ranked.chain
    if chain is not None:
        chain_of = {k: j for j, k in enumerate(chain.keys)}
        pool = set(chain.next_pool)
        for row, e in zip(table, shown):
            j = chain_of.get(e.key)
            if j is None:
                continue
            if chain.win_rate is not None:
                row["chain_win_rate"] = chain.win_rate[j]
                row["abs_win_rate"] = chain.abs_win_rate[j]
                row["advantage"] = chain.advantage[j]
            if chain.weights is not None:
                row["weight"] = chain.weights[j]
            row["pool"] = j in pool
    # ties in win rate (often 0 for all but the leader) are ordered by loss per token
    table.sort(key=lambda r: (r["win_rate"] is None, -(r["win_rate"] or 0.0),
                              math.inf if r.get("loss_per_token") is None else r["loss_per_token"]))
    return {"models": table, "win_matrix": dict(ranked.win_matrix), "n_samples": ranked.n_samples,
            "group_samples": ranked.group_samples, "n_groups": ranked.n_groups, "block": block_now,
            "error": ranked.error}


def unevaluated_entries(entries: dict[str, Entry], records: dict[str, FetchRecord],
                        evaluated: set[int | None]) -> list[Entry]:
    """Chain entries not evaluated this step because their download failed or was skipped:
    shown in their competition's table with the reason, so a miner sees why. A visit of this
    step says it; otherwise the fetch record of the same commitment does."""
    out = []
    for hk, e in entries.items():
        if e.uid in evaluated:
            continue
        rec = records.get(hk)
        if not e.not_evaluated and rec is not None and rec.failed_for(e.commitment):
            e.status, e.reason = "failed", rec.failure
        if e.not_evaluated:
            out.append(e)
    return out


def no_metagraph_report(step: int, problems: list[str]) -> dict:
    """The report of a step that could not start: no chain sync has worked yet."""
    return {"step": step, "block": None, "competitions": {}, "weights": {}, "problems": problems,
            "weights_set": "not set: no metagraph"}


def step_report(*, step: int, meta: Metagraph, seed: int, forwards: int, tables: dict[str, dict],
                problems: list[str], weights_set: str, paused: bool, ema: Sequence[float]) -> dict:
    """The report of a step that ran: its tables, problems, weights (the moving average of
    the uids in the metagraph) and the metagraph's hotkeys."""
    return {"step": step, "block": meta.block, "seed": seed, "forward_samples": forwards,
            "competitions": tables, "problems": problems, "weights_set": weights_set, "paused": paused,
            "weights": {str(u): float(w) for u, w in enumerate(ema) if w > 0 and u in meta.uids},
            "hotkeys": {str(u): hk for u, hk in zip(meta.uids, meta.hotkeys)}}


def finished(report: dict[str, Any], seconds: float, stages: dict[str, float]) -> dict[str, Any]:
    """The report with its timings, and its problems escaped and bounded: they quote repos,
    commitments and hub answers."""
    report["seconds"] = seconds
    report["stage_seconds"] = stages
    report["problems"] = [printable(p, constants.PROBLEM_MAX_CHARS) for p in report["problems"]]
    return report
