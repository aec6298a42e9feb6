"""Rich tables of a validator step, rendered from the step's JSON-able report.

The same report is saved each step, so `coldint-validator leaderboard` re-renders the last
step without running anything.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
from datetime import datetime, timezone
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


# The leaderboard's columns, in order, with what each means: the console legend, the HTML
# report's legend and the README's glossary are this one list.
GLOSSARY: list[tuple[str, str]] = [
    ("#", "rank in this step's table (evaluated models only; ties in win rate are ordered by loss per token)"),
    ("model", "the chain model's uid, or a benchmark candidate's label (magenta): candidates are evaluated "
              "for comparison and never take weight"),
    ("hotkey", "the miner's hotkey (first 8 characters); 'bench' for a benchmark candidate"),
    ("block", "the block of the model's commitment on the chain"),
    ("age", "blocks since that commitment"),
    ("adv %", "the advantage the model holds over newer models: a newer model must beat its loss by this much "
              "to win a sample (decays with age)"),
    ("loss/token", "mean loss per token over the step's samples, ± its standard deviation (nats)"),
    ("win rate", "chain win rate: the fraction of sample groups the model wins against the other chain models "
                 "under the advantage rule; the weights and the pool come from it"),
    ("abs win", "the same without the advantage (plain lower loss wins)"),
    ("bench win rate", "a benchmark candidate's win rate against every entry: what it would get if it were "
                       "committed now (chain models show their chain win rate instead)"),
    ("weight (step)", "the competition's weight for the model from this step's win rates"),
    ("weight (EMA, set)", "the model's share of the weight vector sent to the chain: the moving average over "
                          "steps, all competitions together; the same number as the weights table"),
    ("pool", "kept for evaluation in the next step"),
    ("tokenizer", "which tokenizer scored the model: its own ('model') or the competition's ('competition')"),
    ("status", "scored (evaluated now; 'on <node> <GPU type>' on a Ray cluster), cached (losses reused from an "
               "earlier step), failed or skipped (not evaluated: the reason follows), pending (waiting its turn)"),
]
COLUMN_JUSTIFY = {"model": "left", "hotkey": "left", "pool": "center", "tokenizer": "left", "status": "left"}


def _is_bench(m: dict) -> bool:
    return m.get("uid") is None


def _chain_win_rate(m: dict) -> float | None:
    # steps saved before chain_win_rate was recorded: their win_rate was the chain's
    return m["chain_win_rate"] if "chain_win_rate" in m else m.get("win_rate")


def status_text(m: dict) -> str:
    """A model's state and why: the status, its reason, and why its own tokenizer was not used."""
    text = m.get("status") or "-"
    if m.get("scored_on"):  # a Ray cluster's node and GPU type
        text += f" on {m['scored_on']}"
    if m.get("reason"):
        text += f": {m['reason']}"
    if m.get("tokenizer_reason"):
        text += f" (tokenizer: {m['tokenizer_reason']})"
    return text


def model_cells(m: dict, rank: int | None, ema: dict[str, float]) -> list[str]:
    """One model's row of the leaderboard as text, one cell per GLOSSARY column.
    `ema`: the step's weight vector by uid ("weights" of the step report)."""
    bench = _is_bench(m)
    lpt = m.get("loss_per_token")
    return [
        "-" if rank is None else str(rank),
        m.get("label") or "-",
        "bench" if bench else _short_hotkey(m.get("hotkey")),
        _num(m.get("block"), "{:d}"),
        _num(m.get("age_blocks"), "{:d}"),
        _num(None if m.get("advantage") is None else 100 * m["advantage"], "{:.3f}"),
        "-" if lpt is None else f"{_num(lpt)} ± {_num(m.get('loss_per_token_std'), '{:.3f}')}",
        "n/a" if bench else _num(_chain_win_rate(m), "{:.3f}"),
        "n/a" if bench else _num(m.get("abs_win_rate"), "{:.3f}"),
        _num(m.get("win_rate"), "{:.3f}") if bench else "",
        "n/a" if bench else _num(m.get("weight"), "{:.4f}"),
        "n/a" if bench else f"{float(ema.get(str(m['uid']), 0.0)):.4f}",
        "-" if m.get("pool") is None else ("yes" if m["pool"] else "no"),
        m.get("tokenizer") or "-",
        status_text(m),
    ]


def competition_rows(comp: dict, ema: dict[str, float]) -> list[list[str]]:
    """Every model of the competition, evaluated or not, in the step's order."""
    rows, rank = [], 0
    for m in comp.get("models", []):
        evaluated = m.get("status") in ("scored", "cached") and m.get("win_rate") is not None
        rank += evaluated
        rows.append(model_cells(m, rank if evaluated else None, ema))
    return rows


def competition_title(cid: str, comp: dict) -> str:
    n, group = comp.get("n_samples", 0), comp.get("group_samples")
    groups = f" in {n_groups(comp)} groups of {group}" if isinstance(group, int) and group > 1 else ""
    return f"competition {cid}: {n} samples{groups}, block {comp.get('block', '-')}"


def competition_table(cid: str, comp: dict, ema: dict[str, float] | None = None) -> Table:
    t = Table(title=competition_title(cid, comp), title_justify="left", header_style="bold")
    for col, _ in GLOSSARY:
        # long names in two header lines; the numbers never wrap, the status takes the rest
        t.add_column(col.replace(" ", "\n", 1) if len(col) > 9 else col, justify=COLUMN_JUSTIFY.get(col, "right"),
                     no_wrap=col not in ("model", "status"), overflow="fold")
    for m, cells in zip(comp.get("models", []), competition_rows(comp, ema or {})):
        cells = [Text(c) for c in cells]
        if _is_bench(m):
            cells[1].stylize("magenta")
        cells[-1].stylize(STATUS_STYLE.get(m.get("status") or "", ""))
        t.add_row(*cells)
    return t


def legend() -> Table:
    """What each leaderboard column means (printed once, under the competition tables)."""
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(style="dim")
    for col, text in GLOSSARY:
        t.add_row(col, text)
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


WEIGHTS_TITLE = f"weights above {constants.WEIGHT_MIN_DISPLAY}"
WEIGHTS_COLUMNS = ["uid", "hotkey", "weight (EMA, set)"]


def weights_rows(weights: dict[str, float], hotkeys: dict[str, str]) -> list[list[str]]:
    """The weight vector sent (the step's "weights"), largest first, above the display threshold."""
    return [[str(uid), _short_hotkey(hotkeys.get(str(uid))), f"{w:.4f}"]
            for uid, w in sorted(weights.items(), key=lambda kv: -kv[1]) if w > constants.WEIGHT_MIN_DISPLAY]


def weights_table(weights: dict[str, float], hotkeys: dict[str, str]) -> Table:
    t = Table(title=WEIGHTS_TITLE, title_justify="left", header_style="bold")
    t.add_column("uid", justify="right")
    t.add_column("hotkey")
    t.add_column("weight\n(EMA, set)", justify="right")
    for row in weights_rows(weights, hotkeys):
        t.add_row(*row)
    return t


def _short_hotkey(hotkey) -> str:
    return (hotkey or "?")[:8]


def chain_win_rates(step: dict) -> dict[int, float]:
    """uid -> chain win rate (what the weights come from) over the step's competitions."""
    return {m["uid"]: _chain_win_rate(m) for comp in (step.get("competitions") or {}).values()
            for m in comp.get("models", []) if m.get("uid") is not None and _chain_win_rate(m) is not None}


def with_chain_win_rates(report: dict, step: dict) -> dict:
    """The consensus report with each uid's win rate the chain win rate of the step's table
    (the number the weights come from, as in the leaderboard), not the rate over every entry."""
    rates = chain_win_rates(step)
    diffs = [{**d, "win_rate": rates.get(d.get("uid"), d.get("win_rate"))}
             for d in report.get("top_differences") or []]
    return {**report, "top_differences": diffs}


def consensus_table(report: dict) -> Group:
    """A headline with the estimated validator trust, then the uids where our weights differ
    most from the other validators' consensus, each with its status this step.
    `report`: validator.core.consensus.consensus_report's dict (a step report's "consensus"; pass it
    through with_chain_win_rates for the leaderboard's win rates)."""
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


def package_version() -> str:
    """The installed coldint-validator version, shown with every step (which code made these numbers)."""
    try:
        return importlib.metadata.version("coldint-validator")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (package not installed)"


def step_time(report: dict) -> str | None:
    """When the step ran, if the step report records it (ISO 8601 text or unix seconds)."""
    for key in ("time", "timestamp"):
        v = report.get(key)
        if isinstance(v, str) and v:
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return datetime.fromtimestamp(v, timezone.utc).isoformat(timespec="seconds")
    return None


def header_text(report: dict) -> str:
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in (report.get("stage_seconds") or {}).items())
    when = step_time(report)
    return (f"step {report.get('step')} at block {report.get('block')}"
            + (f", {when}" if when else "")
            + f"  ({report.get('seconds') or 0:.1f} s" + (f"; {stages}" if stages else "") + ")"
            + f"  coldint-validator {package_version()}"
            + ("  [subnet paused: every competition's reward is 0]" if report.get("paused") else ""))


def render(report: dict) -> Group:
    ema = report.get("weights") or {}
    parts: list = [Text(header_text(report), style="bold")]
    comps = report.get("competitions") or {}
    for cid, comp in comps.items():
        parts.append(competition_table(cid, comp, ema))
        if comp.get("error"):
            parts.append(Text(f"! competition {cid}: {comp['error']}", style="red"))
        wm = win_matrix_table(cid, comp.get("win_matrix", {}))
        if wm is not None:
            parts.append(wm)
    if comps:
        parts.append(legend())
    parts.append(weights_table(ema, report.get("hotkeys", {})))
    if isinstance(report.get("consensus"), dict):
        parts.append(consensus_table(with_chain_win_rates(report["consensus"], report)))
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
