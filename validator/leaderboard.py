"""Rich tables of a validator step, rendered from the step's JSON-able report.

The same report is saved each step, so `coldint-validator leaderboard` re-renders the last
step without running anything.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

import constants

STATUS_STYLE = {"scored": "green", "cached": "cyan", "failed": "red", "skipped": "yellow", "pending": "dim"}


def _num(v, fmt: str = "{:.4f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return fmt.format(v)


def competition_table(cid: str, comp: dict) -> Table:
    t = Table(title=f"competition {cid}: {comp.get('n_samples', 0)} samples, block {comp.get('block', '-')}",
              title_justify="left", header_style="bold")
    for col, just in [("#", "right"), ("uid / label", "left"), ("hotkey", "left"), ("block", "right"),
                      ("age", "right"), ("adv %", "right"), ("loss/token", "right"), ("loss/sample", "right"),
                      ("win rate", "right"), ("abs win", "right"), ("weight", "right"), ("status", "left")]:
        t.add_column(col, justify=just)
    for rank, m in enumerate(comp["models"], 1):
        is_bench = m.get("uid") is None
        label = Text(m["label"], style="magenta" if is_bench else "")
        status = m["status"] + (f": {m['reason']}" if m.get("reason") else "")
        lpt = m.get("loss_per_token")
        lpt_s = "-" if lpt is None else f"{_num(lpt)} ± {_num(m.get('loss_per_token_std'), '{:.3f}')}"
        t.add_row(
            str(rank) if m.get("win_rate") is not None else "-",
            label,
            (m.get("hotkey") or "bench")[:8],
            _num(m.get("block"), "{:d}"),
            _num(m.get("age_blocks"), "{:d}"),
            _num(None if m.get("advantage") is None else 100 * m["advantage"], "{:.3f}"),
            lpt_s,
            _num(m.get("loss_per_sample"), "{:.2f}"),
            _num(m.get("win_rate"), "{:.3f}"),
            _num(m.get("abs_win_rate"), "{:.3f}"),
            "n/a" if is_bench else _num(m.get("weight"), "{:.4f}"),
            Text(status[:60], style=STATUS_STYLE.get(m["status"], "")),
        )
    return t


def win_matrix_table(cid: str, matrix: dict) -> Table | None:
    labels = matrix.get("labels") or []
    if len(labels) < 2:
        return None
    t = Table(title=f"{cid}: samples won by row against column (with the row's advantage, head to head)",
              title_justify="left", header_style="bold")
    t.add_column("")
    for lab in labels:
        t.add_column(lab[:12], justify="right")
    for i, lab in enumerate(labels):
        cells = []
        for j in range(len(labels)):
            if i == j:
                cells.append("·")
            else:
                cells.append(f"{matrix['adv_wins'][i][j]:d}")
        t.add_row(lab[:12], *cells)
    return t


def weights_table(weights: dict[str, float], hotkeys: dict[str, str]) -> Table:
    t = Table(title=f"weights above {constants.WEIGHT_MIN_DISPLAY}", title_justify="left", header_style="bold")
    t.add_column("uid", justify="right")
    t.add_column("hotkey")
    t.add_column("weight", justify="right")
    for uid, w in sorted(weights.items(), key=lambda kv: -kv[1]):
        if w > constants.WEIGHT_MIN_DISPLAY:
            t.add_row(str(uid), hotkeys.get(str(uid), "")[:8], f"{w:.4f}")
    return t


def _short_hotkey(hotkey) -> str:
    return (hotkey or "?")[:8]


def consensus_table(report: dict) -> Group:
    """A headline with the estimated validator trust, then the uids where our weights differ
    most from the other validators' consensus, each with its status this step.
    `report`: validator.consensus.consensus_report's dict (a step report's "consensus")."""
    vtrust, warn = report.get("vtrust"), report.get("warning")
    parts = [f"consensus at block {report.get('block', '-')}: estimated vtrust {_num(vtrust, '{:.3f}')}"]
    if report.get("vtrust_if_set") is not None:
        parts.append(f"{_num(report['vtrust_if_set'], '{:.3f}')} with our stake in the median")
    parts.append(f"L1 to consensus {_num(report.get('l1_to_consensus'), '{:.3f}')}")
    parts.append(f"cosine with the validators {_num(report.get('agreement'), '{:.3f}')}")
    n = len(report.get("validators") or [])
    parts.append(f"{n} validator{'' if n == 1 else 's'}")
    low = vtrust is not None and vtrust < constants.CONSENSUS_VTRUST_WARN
    lines: list = [Text("; ".join(parts), style="bold red" if warn or low else "bold")]
    if warn:
        lines.append(Text(f"! {warn}", style="red"))
    lines += [Text(f"  {n}", style="yellow") for n in report.get("notes") or []]
    diffs = report.get("top_differences") or []
    if diffs:
        t = Table(title="where our weights differ most from consensus", title_justify="left", header_style="bold")
        for col, just in [("uid", "right"), ("hotkey", "left"), ("ours", "right"), ("consensus", "right"),
                          ("diff", "right"), ("win rate", "right"), ("status", "left")]:
            t.add_column(col, justify=just)
        for d in diffs:
            status = d.get("status") or "-"
            if d.get("reason"):
                status += f": {d['reason']}"
            t.add_row(str(d["uid"]), _short_hotkey(d.get("hotkey")), _num(d.get("ours")), _num(d.get("consensus")),
                      Text(f"{d['diff']:+.4f}", style="green" if d["diff"] > 0 else "red"),
                      _num(d.get("win_rate"), "{:.3f}"),
                      Text(status[:60], style=STATUS_STYLE.get(d.get("status") or "", "")))
        lines.append(t)
    return Group(*lines)


def consensus_validators_table(report: dict, limit: int = constants.CONSENSUS_TABLE_VALIDATORS) -> Table:
    """The validators in the consensus, largest stake first (at most `limit`): how close our
    weights are to each, and each one's own trust as the chain computes it."""
    rows = report.get("validators") or []
    more = len(rows) - limit
    t = Table(title="validators in the consensus" + (f" (largest {limit} of {len(rows)})" if more > 0 else ""),
              title_justify="left", header_style="bold")
    for col in ("uid", "hotkey", "stake %", "age", "weights", "cosine", "L1", "vtrust"):
        t.add_column(col, justify="left" if col == "hotkey" else "right")
    for v in rows[:limit]:
        t.add_row(str(v["uid"]), _short_hotkey(v.get("hotkey")), _num(100 * v["stake_share"], "{:.1f}"),
                  _num(v.get("age_blocks"), "{:d}"), str(v.get("n_weights", "-")),
                  _num(v.get("cosine"), "{:.3f}"), _num(v.get("l1"), "{:.3f}"), _num(v.get("vtrust"), "{:.3f}"))
    return t


def render(report: dict) -> Group:
    parts: list = [Text(f"step {report.get('step')} at block {report.get('block')}  "
                        f"({report.get('seconds', 0):.1f} s; "
                        + ", ".join(f"{k} {v:.1f} s" for k, v in report.get("stage_seconds", {}).items())
                        + ")", style="bold")]
    for cid, comp in report.get("competitions", {}).items():
        parts.append(competition_table(cid, comp))
        wm = win_matrix_table(cid, comp.get("win_matrix", {}))
        if wm is not None:
            parts.append(wm)
    parts.append(weights_table(report.get("weights", {}), report.get("hotkeys", {})))
    if isinstance(report.get("consensus"), dict):
        parts.append(consensus_table(report["consensus"]))
        parts.append(consensus_validators_table(report["consensus"]))
    ws = report.get("weights_set")
    if ws:
        parts.append(Text(f"weights: {ws}", style="green" if ws.startswith("set") else "yellow"))
    for p in report.get("problems", []):
        parts.append(Text(f"! {p}", style="yellow"))
    return Group(*parts)


def make_console(**kwargs) -> Console:
    """A terminal keeps its own width; a log file or a pipe gets 160 columns (rich's default
    of 80 there squeezes the leaderboard into ellipses)."""
    console = Console(**kwargs)
    return console if console.is_terminal else Console(width=160, **kwargs)


def print_report(report: dict, console: Console | None = None) -> None:
    (console or make_console()).print(render(report))


def load_report(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no saved step at {path}: run `coldint-validator run` first")
    return json.loads(path.read_text())


class StepProgress:
    """Progress bars for the long stages of a step (downloads, scoring)."""

    def __init__(self, console: Console | None = None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("{task.fields[stage]:>8}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.description}"),
                                  console=console or Console(stderr=True), transient=True)
        self._tasks: dict[str, int] = {}

    def start(self, stage: str, total: int) -> None:
        if not self._progress.live.is_started:
            self._progress.start()
        if stage in self._tasks:
            self._progress.remove_task(self._tasks[stage])
        self._tasks[stage] = self._progress.add_task("", total=total, stage=stage)

    def advance(self, stage: str, description: str = "") -> None:
        if stage in self._tasks:
            self._progress.update(self._tasks[stage], advance=1, description=description[:60])

    def stop(self) -> None:
        if self._progress.live.is_started:
            self._progress.stop()
        self._tasks.clear()


def n_groups(comp: dict) -> int:
    """How many columns a saved step's competition was ranked on: every win (win matrix
    included) counts a group of `group_samples` samples, and the live rule drops the samples
    that do not fill a group. Steps record `n_groups`; older ones are recomputed."""
    g = comp.get("n_groups")
    if isinstance(g, int) and not isinstance(g, bool) and g >= 1:
        return g
    n = comp.get("n_samples") or 0
    group = comp.get("group_samples")
    if not (isinstance(group, int) and not isinstance(group, bool) and group >= 1):
        group = 1  # a step saved before the group size was recorded
    return max((n - n % group) // group, 1)


def step_to_report(step: dict) -> dict:
    """A saved step in the report format of benchmark/report.py (plots and HTML)."""
    comps = {}
    for cid, comp in step.get("competitions", {}).items():
        models = [{"label": m["label"], "uid": m.get("uid"), "block": m.get("block"),
                   "kind": "chain" if m.get("uid") is not None else "benchmark",
                   "mean_loss_per_token": m.get("loss_per_token"),
                   "losses_per_token": m.get("losses_per_token") or [],
                   "win_rate": m.get("win_rate"), "weight": m.get("weight")}
                  for m in comp["models"] if m.get("win_rate") is not None]
        wm = comp.get("win_matrix") or {}
        section = {"models": models}
        if wm.get("adv_wins") and len(wm.get("labels", [])) == len(models):
            n = n_groups(comp)  # adv_wins counts groups: a fraction of them, like the win rates
            section["win_matrix"] = {"labels": wm["labels"], "title": "head to head, with the row's advantage",
                                     "values": [[None if i == j else v / n for j, v in enumerate(row)]
                                                for i, row in enumerate(wm["adv_wins"])]}
        comps[cid] = section
    out = {"title": f"coldint validator: step {step.get('step')} at block {step.get('block')}",
           "block": step.get("block"), "competitions": comps}
    if isinstance(step.get("consensus"), dict):
        out["consensus"] = step["consensus"]  # plotted and tabled by benchmark/report.py
    return out
