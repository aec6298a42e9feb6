"""The benchmark's report drawn with rich: field and candidate tables per competition, each
estimate over its 95 % interval, then one verdict line per candidate. Every number shown is
in the report dict (benchmark.field.compare_field)."""
from __future__ import annotations

import io
import math
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from validator.adapters.leaderboard import make_console

OUTCOME_STYLE = {"beats the leader": "bold green", "does not beat the leader": "red",
                 "too close to call": "yellow", "no field": "cyan", "failed": "red", "would be refused": "red"}


def _f(x: Any, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _ci(iv: dict | None, spec: str = ".4f", scale: float = 1.0) -> str:
    if not iv or iv.get("low") is None or iv.get("high") is None:
        return "-"
    return f"[{format(scale * iv['low'], spec)}, {format(scale * iv['high'], spec)}]"


def _iv(iv: dict | None, spec: str, scale: float = 1.0) -> str:
    return "-" if not iv or iv.get("value") is None else format(scale * iv["value"], spec)


def _cell(iv: dict | None, spec: str, scale: float = 1.0, unit: str = "") -> Text:
    """The estimate over its 95 % interval, stacked: keeps the table narrow enough for a terminal."""
    if not iv or iv.get("value") is None:
        return Text("-")
    return Text.assemble(_iv(iv, spec, scale) + unit, "\n", (_ci(iv, spec, scale), "dim"))


def _failed_text(x: dict) -> str:
    return x["reason"] if x.get("refused") else f"failed: {x['reason']}"


def _leader_weights(d: dict) -> str:
    now, with_it = d.get("leader_weight_now"), d.get("leader_weight_with")
    return "-" if now is None or with_it is None else f"{now:.3f} → {with_it:.3f}"


def candidate_table(cid: str, sec: dict) -> Table:
    """Candidate rows, each estimate over its 95 % interval, and the call; every number is in the section."""
    lead = sec.get("leader")
    who = "no field" if lead is None else (f"leader {lead['label']}, advantage {100 * lead['advantage']:.3f} %")
    t = Table(title=f"{cid}: candidates vs a field of {sec.get('n_field', 0)} on {sec.get('n_samples', 0)} samples "
                    f"at block {sec.get('block_now', '-')} ({who})", title_justify="left", header_style="bold",
              caption="value over [95 % bootstrap CI]; Δ and ratio: candidate vs the leader on paired samples; "
                      "needs <: loss ratio per sample that takes it from the leader; weight: the candidate's "
                      "if committed now; leader weight: now (without the candidate) → if it were committed",
              caption_justify="left")
    for col in ("candidate", "loss/tok", "win rate\nvs field", "win rate\nvs leader", "Δ loss\nper sample",
                "loss ratio", "needs <", "weight if\ncommitted now", "leader weight\nnow → with", "call"):
        t.add_column(col, justify="left" if col in ("candidate", "call") else "right")
    for d in sec.get("candidates") or []:
        t.add_row(Text(d["label"], style="bold"), _f(d.get("mean_loss_per_token"), ".4f"),
                  _cell(d["win_rate"], ".1f", 100, " %"), _cell(d.get("head_to_head"), ".1f", 100, " %"),
                  _cell(d.get("mean_delta"), ".3f"), _cell(d.get("loss_ratio"), ".4f"),
                  _f(d.get("required_ratio") if lead else None, ".4f"), _f(d.get("weight"), ".3f"),
                  _leader_weights(d), Text(d["outcome"], style=OUTCOME_STYLE.get(d["outcome"], "")))
    for x in sec.get("failed") or []:
        if x.get("kind") == "candidate":
            t.add_row(Text(x["label"], style="bold"), *["-"] * 8, Text(_failed_text(x)[:60], style="red"))
    return t


def candidate_columns_table(cid: str, sec: dict) -> Table:
    """The candidate table turned: one column per candidate, for a terminal too narrow for rows."""
    lead = sec.get("leader")
    t = Table(title=f"{cid}: candidates vs a field of {sec.get('n_field', 0)} on {sec.get('n_samples', 0)} samples "
                    f"at block {sec.get('block_now', '-')}"
                    + ("" if lead is None else f" (leader {lead['label']}, advantage {100 * lead['advantage']:.3f} %)"),
              title_justify="left", header_style="bold")
    cands = sec.get("candidates") or []
    t.add_column("")
    for d in cands:
        t.add_column(d["label"], justify="right")
    rows = [("loss/tok", lambda d: _f(d.get("mean_loss_per_token"), ".4f")),
            ("win rate vs field", lambda d: _cell(d["win_rate"], ".1f", 100, " %")),
            ("win rate vs leader", lambda d: _cell(d.get("head_to_head"), ".1f", 100, " %")),
            ("Δ loss per sample", lambda d: _cell(d.get("mean_delta"), ".3f")),
            ("loss ratio", lambda d: _cell(d.get("loss_ratio"), ".4f")),
            ("needs <", lambda d: _f(d.get("required_ratio") if lead else None, ".4f")),
            ("weight if committed now", lambda d: _f(d.get("weight"), ".3f")),
            ("leader weight now → with", _leader_weights),
            ("call", lambda d: Text(d["outcome"], style=OUTCOME_STYLE.get(d["outcome"], "")))]
    for name, get in rows:
        t.add_row(Text(name, style="bold"), *[get(d) for d in cands])
    return t


def field_table(cid: str, sec: dict) -> Table:
    """The field as the validator ranks it now (without any candidate)."""
    t = Table(title=f"{cid}: the field (win rates without the candidates)", title_justify="left",
              header_style="bold", caption="★ the leader: highest win rate", caption_justify="left")
    for col in ("model", "kind", "uid", "block", "adv %", "loss/tok", "win rate", "weight now"):
        t.add_column(col, justify="left" if col in ("model", "kind") else "right")
    lead = (sec.get("leader") or {}).get("index")
    n_field = sec.get("n_field", 0)
    for i, m in enumerate(sec["models"][:n_field]):
        label = Text(m["label"] + (" ★" if i == lead else ""), style="bold" if i == lead else "")
        ci = m.get("win_rate_ci") or [None, None]
        t.add_row(label, m.get("kind", "chain"), _f(m.get("uid"), "d"), _f(m.get("block"), "d"),
                  _f(None if m.get("advantage") is None else 100 * m["advantage"], ".3f"),
                  _f(m.get("mean_loss_per_token"), ".4f"),
                  _cell({"value": m.get("win_rate"), "low": ci[0], "high": ci[1]}, ".1f", 100, " %"),
                  _f(m.get("weight"), ".3f"))
    for x in sec.get("failed") or []:
        if x.get("kind") != "candidate":
            t.add_row(Text(x["label"], style="red"), x.get("kind", "chain"), _f(x.get("uid"), "d"),
                      *["-"] * 4, Text(_failed_text(x)[:60], style="red"))
    return t


def render(report: dict, width: int | None = None) -> Group:
    """Field and candidate tables per competition, then one verdict line per candidate.

    With a `width` too narrow for a row per candidate, the candidate table is turned."""
    parts: list[Any] = []
    measure = Console(width=10_000, file=io.StringIO())
    warnings = list(report.get("warnings") or [])
    for w in warnings:
        parts.append(Text(f"WARNING: {w}", style="bold yellow"))
    for cid, sec in report["competitions"].items():
        table = candidate_table(cid, sec)
        if width is not None and sec.get("candidates") and measure.measure(table).maximum > width:
            table = candidate_columns_table(cid, sec)
        parts += [field_table(cid, sec), table]
        for d in sec.get("candidates") or []:
            parts.append(Text(f"  ▸ {d['verdict']}", style=OUTCOME_STYLE.get(d["outcome"], "")))
        for x in sec.get("failed") or []:
            if x.get("kind") == "candidate":
                parts.append(Text(f"  ▸ {x['label']}: {_failed_text(x)}", style="red"))
        parts.append(Text(""))
    for p in report.get("problems") or []:
        parts.append(Text(f"problem: {p}", style="yellow"))
    for w in warnings:  # again at the end, where the eye lands after the tables
        parts.append(Text(f"WARNING: {w}", style="bold yellow"))
    return Group(*parts)


def print_report(report: dict, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(render(report, console.width))
