"""Benchmark report: report.json, PNG plots and one self-contained report.html.

The report dict (JSON-able; non-finite numbers are written as null):

    {
      "title": str (optional), "block": int (optional), "generated": str (optional),
      "competitions": {
        "<competition id>": {
          "models": [ {"label": str, "uid": int | None, "block": int | None,
                       "kind": "chain" | "benchmark" | "candidate" (optional),
                       "mean_loss_per_token": float,
                       "losses_per_token": [float, ...],          # one per sample
                       "win_rate": float, "win_rate_ci": [low, high], "weight": float}, ...],
          "win_matrix": [[float]] aligned with "models", or
                        {"labels": [...], "values": [[...]], "title": str},
                        entry [i][j] = fraction of samples i wins against j alone,
          "candidates": [ benchmark.stats.CandidateStats.to_dict(), ... ]   (optional)
        }, ...
      }
    }

An optional top-level "consensus" (validator.core.consensus.consensus_report's dict, from a
validator step) adds a plot of our weights against the validators' consensus per uid and its
tables.

A validator step (validator.adapters.leaderboard.step_to_report) also carries text the HTML shows as
given, escaped: "version" (str), "summary" ([[name, value], ...]: step, weights set or why
not, ...), "problems" ([str]), "legend" ([[column, meaning], ...], under the competition
tables), "tables" ([table, ...], e.g. the weights set) and per competition "table": the
leaderboard with every model, evaluated or not. A table is {"title": str, "columns": [str],
"rows": [[str, ...], ...], "status": [str] (optional, one per row), "notes": [str] (optional),
"align": ["left" | "right" | "center"] (optional, one per column; else numbers go right)};
a competition with one replaces its "models" table by it ("models" then only feed the plots).

``competition_section`` builds one competition's entry from arrays with the validator's
ranking and benchmark.stats, so compare.py only gathers the losses.

Plots are drawn on matplotlib ``Figure`` objects (Agg canvas), never through pyplot's
global state, so this works headless and from threads.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import constants
from benchmark import stats as bstats
from validator.core import winrule

LABEL_MAX_CHARS = constants.REPORT_LABEL_MAX_CHARS
ANNOTATE_MAX_MODELS = constants.REPORT_ANNOTATE_MAX_MODELS
KIND_COLOURS = {"chain": "#4C72B0", "benchmark": "#8C8C8C", "candidate": "#DD8452"}
DPI = constants.REPORT_DPI


class ReportError(ValueError):
    """The report dict does not have the documented shape."""


# --- JSON ---------------------------------------------------------------------------------------

def to_jsonable(value: Any) -> Any:
    """numpy -> Python, tuples -> lists, non-finite floats -> None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- validation ---------------------------------------------------------------------------------

def _check(report: Any) -> dict[str, dict]:
    if not isinstance(report, dict) or not isinstance(report.get("competitions"), dict):
        raise ReportError("report: expected a dict with a 'competitions' object")
    for comp, sec in report["competitions"].items():
        if not isinstance(sec, dict) or not isinstance(sec.get("models"), list):
            raise ReportError(f"report: competition {comp!r}: expected an object with a 'models' list")
        for i, m in enumerate(sec["models"]):
            if not isinstance(m, dict) or not isinstance(m.get("label"), str):
                raise ReportError(f"report: competition {comp!r} model #{i}: needs a string 'label'")
        matrix = _matrix(sec)
        if matrix is not None:
            values, labels = matrix
            if values.shape != (len(labels), len(labels)):
                raise ReportError(f"report: competition {comp!r}: win_matrix shape {values.shape} "
                                  f"does not match {len(labels)} labels")
        if sec.get("table") is not None:
            _check_table(sec["table"], f"competition {comp!r} table")
    for i, t in enumerate(report.get("tables") or []):
        _check_table(t, f"tables[{i}]")
    for key in ("summary", "legend"):
        pairs = report.get(key)
        if pairs is not None and not (isinstance(pairs, list) and all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs)):
            raise ReportError(f"report: {key!r} must be a list of [name, text] pairs of strings")
    if report.get("problems") is not None and not _strings(report["problems"]):
        raise ReportError("report: 'problems' must be a list of strings")
    cons = report.get("consensus")
    if cons is not None:
        if not isinstance(cons, dict) or not all(isinstance(cons.get(k), dict) for k in ("ours", "consensus_weights")):
            raise ReportError("report: 'consensus' must be an object with 'ours' and 'consensus_weights' objects")
        for key in ("ours", "consensus_weights"):
            bad = [k for k, v in cons[key].items()
                   if not str(k).isdigit() or isinstance(v, bool) or not isinstance(v, (int, float))]
            if bad:
                raise ReportError(f"report: consensus {key!r}: entries {bad[:5]} are not uid -> number")
    return report["competitions"]


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _check_table(t: Any, what: str) -> None:
    if not isinstance(t, dict) or not _strings(t.get("columns")) or not isinstance(t.get("rows"), list):
        raise ReportError(f"report: {what}: expected an object with 'columns' (strings) and 'rows'")
    n = len(t["columns"])
    for i, row in enumerate(t["rows"]):
        if not _strings(row) or len(row) != n:
            raise ReportError(f"report: {what} row #{i}: expected {n} strings, one per column")
    for key in ("status", "notes"):
        if t.get(key) is not None and not _strings(t[key]):
            raise ReportError(f"report: {what}: {key!r} must be a list of strings")
    align = t.get("align")
    if align is not None and (not isinstance(align, list) or len(align) != n
                              or any(a not in ("left", "right", "center") for a in align)):
        raise ReportError(f"report: {what}: 'align' must give left, right or center for each of {n} columns")
    if t.get("status") is not None and len(t["status"]) != len(t["rows"]):
        raise ReportError(f"report: {what}: {len(t['status'])} statuses for {len(t['rows'])} rows")


def _matrix(sec: dict) -> tuple[np.ndarray, list[str]] | None:
    wm = sec.get("win_matrix")
    if wm is None:
        return None
    if isinstance(wm, dict):
        values, labels = wm.get("values"), wm.get("labels") or [m["label"] for m in sec["models"]]
    else:
        values, labels = wm, [m["label"] for m in sec["models"]]
    arr = np.array([[math.nan if v is None else v for v in row] for row in values], dtype=np.float64) \
        if len(values) else np.zeros((0, 0))
    return arr, list(labels)


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _short(label: str) -> str:
    label = label if len(label) <= LABEL_MAX_CHARS else label[: LABEL_MAX_CHARS - 1] + "…"
    return label.replace("$", r"\$")  # a label is text, never matplotlib mathtext


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


# --- plots --------------------------------------------------------------------------------------

def _figure(n_rows: int, width: float = 8.0) -> Figure:
    fig = Figure(figsize=(width, max(2.8, 0.42 * n_rows + 1.6)), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _colour(model: dict) -> str:
    return KIND_COLOURS.get(model.get("kind") or "chain", KIND_COLOURS["chain"])


def _save_bars(fig: Figure, ax: Any, xlabel: str, title: str, path: Path) -> Path:
    """The common finish of the horizontal (one row per model) plots."""
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_losses(comp: str, models: list[dict], path: Path) -> Path:
    """Horizontal box plot of the per-sample loss per token, one row per model."""
    fig = _figure(len(models))
    ax = fig.add_subplot(1, 1, 1)
    data, positions, labels = [], [], []
    for i, m in enumerate(models):
        vals = np.array([_num(v) for v in m.get("losses_per_token") or []], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        labels.append(_short(m["label"]) + ("" if vals.size else " (no data)"))
        if vals.size:
            data.append(vals)
            positions.append(i)
    if data:
        parts = ax.boxplot(data, positions=positions, orientation="horizontal", widths=0.6,
                           patch_artist=True, showfliers=True, flierprops={"markersize": 2, "alpha": 0.4})
        for box, pos in zip(parts["boxes"], positions):
            box.set_facecolor(_colour(models[pos]))
            box.set_alpha(0.75)
    ax.set_yticks(range(len(models)), labels)
    ax.set_ylim(-0.7, len(models) - 0.3)
    ax.invert_yaxis()
    return _save_bars(fig, ax, "loss per token (nats)", f"{comp}: loss per token per sample", path)


def plot_win_rates(comp: str, models: list[dict], path: Path) -> Path:
    """Win rate per model with its confidence interval as error bars."""
    fig = _figure(len(models))
    ax = fig.add_subplot(1, 1, 1)
    rates = np.array([_num(m.get("win_rate")) for m in models])
    ci = np.array([[_num(c) for c in (m.get("win_rate_ci") or [None, None])] for m in models]).reshape(-1, 2)
    err = np.vstack([np.clip(rates - ci[:, 0], 0, None), np.clip(ci[:, 1] - rates, 0, None)])
    err = np.nan_to_num(err, nan=0.0)
    y = np.arange(len(models))
    ax.barh(y, np.nan_to_num(rates), xerr=err, color=[_colour(m) for m in models], alpha=0.85,
            capsize=4, error_kw={"elinewidth": 1.2})
    for yi, r, hi in zip(y, rates, ci[:, 1]):
        if math.isfinite(r):  # the number goes right of the error bar, never on it
            x = max(r, hi) if math.isfinite(hi) else r
            ax.text(x + 0.01, yi, f"{100 * r:.1f} %", va="center", ha="left", fontsize=8)
    ax.set_yticks(y, [_short(m["label"]) for m in models])
    ax.invert_yaxis()
    ax.set_xlim(0, min(1.0, max(0.1, float(np.nanmax(np.append(ci[:, 1], rates), initial=0)) * 1.25)))
    return _save_bars(fig, ax, "win rate (fraction of samples won, 95 % CI)", f"{comp}: win rate", path)


def plot_win_matrix(comp: str, values: np.ndarray, labels: list[str], path: Path, title: str | None = None) -> Path:
    """Heatmap: row i, column j = fraction of samples i wins against j alone."""
    n = len(labels)
    size = max(4.0, 0.5 * n + 2.5)
    fig = Figure(figsize=(size + 1.2, size), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    masked = np.ma.masked_invalid(values)
    im = ax.imshow(masked, cmap="RdBu", vmin=0.0, vmax=1.0 if np.nanmax(values, initial=0) <= 1 else None)
    short = [_short(x) for x in labels]
    ax.set_xticks(range(n), short, rotation=45, ha="right")
    ax.set_yticks(range(n), short)
    ax.set_xlabel("against (column)")
    ax.set_ylabel("model (row)")
    if n <= ANNOTATE_MAX_MODELS:
        for i in range(n):
            for j in range(n):
                v = values[i, j]
                if i != j and math.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if abs(v - 0.5) > 0.3 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    heading = f"{comp}: fraction of samples row wins against column"
    ax.set_title("\n".join([heading] + textwrap.wrap(title, 60)) if title else heading, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _consensus_uids(cons: dict) -> list[int]:
    """The uids worth a bar: our weight or the consensus above the display threshold."""
    ours, consensus = cons["ours"], cons["consensus_weights"]
    return sorted(int(k) for k in set(ours) | set(consensus)
                  if max(_num(ours.get(k, 0.0)), _num(consensus.get(k, 0.0))) > constants.WEIGHT_MIN_DISPLAY)


def plot_consensus(cons: dict, path: Path) -> Path:
    """Per uid, our weight beside the validators' consensus (Yuma's stake-weighted median)."""
    uids = _consensus_uids(cons)
    fig = Figure(figsize=(max(8.0, 0.32 * len(uids) + 2.0), 4.2), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(uids))
    ours = np.nan_to_num([_num(cons["ours"].get(str(u))) for u in uids])
    consensus = np.nan_to_num([_num(cons["consensus_weights"].get(str(u))) for u in uids])
    ax.bar(x - 0.2, ours, width=0.4, color=KIND_COLOURS["candidate"], label="our weight")
    ax.bar(x + 0.2, consensus, width=0.4, color=KIND_COLOURS["chain"], label="consensus")
    ax.set_xticks(x, [str(u) for u in uids], rotation=90 if len(uids) > 30 else 0)
    ax.set_xlabel("uid")
    ax.set_ylabel("weight")
    vtrust = cons.get("vtrust")
    ax.set_title("our weights against the validators' consensus"
                 + (f" (estimated vtrust {vtrust:.3f})" if isinstance(vtrust, (int, float)) else ""))
    ax.grid(axis="y", alpha=0.3)
    if uids:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no weights", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    return path


# --- HTML ---------------------------------------------------------------------------------------

def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return "–" if not math.isfinite(x) else format(x, spec)
    return html.escape(str(x))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


STATUS_CLASSES = {"scored": "st-scored", "cached": "st-cached", "failed": "st-failed", "skipped": "st-skipped",
                  "pending": "st-pending"}
_NUMERIC_CELL = re.compile(r"^(?:[-+]?\d[\d.,]*(?: ± [-+]?\d[\d.]*)?|-|–|n/a|inf|)$")
STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
         "text-align:right;vertical-align:top}td:first-child,th:first-child{text-align:left}"
         ".txt{text-align:left}.num{text-align:right}td.num{white-space:nowrap}th{vertical-align:bottom}"
         "td.txt:last-child{min-width:16em}caption{text-align:left;font-weight:bold;padding:.3em 0}"
         "tr.st-failed td:last-child{color:#b00020}tr.st-skipped td:last-child{color:#8a6d00}"
         "tr.st-cached td:last-child{color:#00707a}tr.st-scored td:last-child{color:#1b7a1b}"
         "tr.st-pending td{color:#777}dl.pairs{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}"
         "dl.pairs dt{font-weight:bold}dl.pairs dd{margin:0}.problem{color:#8a3b00}"
         "img{max-width:100%;display:block;margin:1em 0}li{margin:.4em 0}")


def _pairs_html(pairs: list) -> str:
    return '<dl class="pairs">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                          for k, v in pairs) + "</dl>"


def _table_html(t: dict) -> list[str]:
    """A table of given text cells, every one escaped; a row's status colours its last cell.
    Columns of numbers are right-aligned and never wrap; columns of text are left-aligned."""
    align = t.get("align") or [None] * len(t["columns"])
    text_cols = [a in ("left", "center") if a else any(not _NUMERIC_CELL.match(row[j]) for row in t["rows"])
                 for j, a in enumerate(align)]
    cls = [f'class="{"txt" if txt else "num"}"' + (' style="text-align:center"' if a == "center" else "")
           for txt, a in zip(text_cols, align)]
    out = ["<table>"]
    if t.get("title"):
        out.append(f"<caption>{html.escape(str(t['title']))}</caption>")
    out.append("<tr>" + "".join(f"<th {c}>{html.escape(name)}</th>" for c, name in zip(cls, t["columns"])) + "</tr>")
    statuses = t.get("status") or [""] * len(t["rows"])
    for row, status in zip(t["rows"], statuses):
        row_cls = STATUS_CLASSES.get(status)
        cells = "".join(f"<td {c}>{html.escape(cell)}</td>" for c, cell in zip(cls, row))
        out.append((f'<tr class="{row_cls}">' if row_cls else "<tr>") + cells + "</tr>")
    if not t["rows"]:
        out.append(f'<tr><td class="txt" colspan="{len(t["columns"])}">none</td></tr>')
    out.append("</table>")
    out += [f'<p class="problem">{html.escape(n)}</p>' for n in t.get("notes") or []]
    return out


def _models_html(sec: dict) -> list[str]:
    out = ["<table><tr><th>model</th><th>kind</th><th>uid</th><th>block</th>"
           "<th>mean loss / token</th><th>win rate</th><th>95 % CI</th><th>weight</th></tr>"]
    for m in sec["models"]:
        ci = m.get("win_rate_ci") or [None, None]
        out.append(
            f"<tr><td>{html.escape(m['label'])}</td><td>{_fmt(m.get('kind', 'chain'))}</td>"
            f"<td>{_fmt(m.get('uid'))}</td><td>{_fmt(m.get('block'))}</td>"
            f"<td>{_fmt(m.get('mean_loss_per_token'))}</td><td>{_fmt(m.get('win_rate'), '.3f')}</td>"
            f"<td>{_fmt(ci[0], '.3f')} – {_fmt(ci[1], '.3f')}</td><td>{_fmt(m.get('weight'), '.3f')}</td></tr>")
    out.append("</table>")
    return out


def _html(report: dict, comps: dict[str, dict], images: dict[str, dict[str, Path]],
          consensus_image: Path | None = None) -> str:
    """Summary and problems first, then each competition's table (the legend under them),
    the other tables, the consensus and the plots."""
    title = report.get("title") or "coldint benchmark report"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    meta = [f"{k}: {html.escape(str(report[k]))}" for k in ("block", "generated", "version")
            if report.get(k) is not None]
    if meta:
        out.append(f"<p>{' · '.join(meta)}</p>")
    if report.get("summary"):
        out.append(_pairs_html(report["summary"]))
    if report.get("problems") is not None:
        out.append("<h2>Problems</h2>")
        out.append("<ul>" + "".join(f'<li class="problem">{html.escape(p)}</li>' for p in report["problems"])
                   + "</ul>" if report["problems"] else "<p>none</p>")
    for comp, sec in comps.items():
        out.append(f"<h2>Competition {html.escape(comp)}</h2>")
        cands = sec.get("candidates") or []
        if cands:
            out.append("<h3>Candidates</h3><ul>")
            out += [f"<li>{html.escape(str(c.get('verdict', c.get('label', ''))))}</li>" for c in cands]
            out.append("</ul>")
        out += _table_html(sec["table"]) if sec.get("table") is not None else _models_html(sec)
    if report.get("legend"):
        out += ["<h3>What the columns mean</h3>", _pairs_html(report["legend"])]
    for t in report.get("tables") or []:
        out += _table_html(t)
    if report.get("consensus") is not None:
        out += _consensus_html(report["consensus"], consensus_image)
    for comp in comps:
        shown = [(k, alt) for k, alt in (("losses", "loss per token"), ("win_rates", "win rates"),
                                         ("win_matrix", "win matrix")) if k in images[comp]]
        if shown:
            out.append(f"<h2>Plots: competition {html.escape(comp)}</h2>")
            out += [_img(images[comp][k], f"{comp} {alt}") for k, alt in shown]
    out.append("</body></html>")
    return "\n".join(out)


def _consensus_html(cons: dict, image: Path | None) -> list[str]:
    out = ["<h2>Consensus with the other validators</h2>",
           f"<p>estimated validator trust {_fmt(cons.get('vtrust'), '.3f')}"
           f" (with our stake in the median: {_fmt(cons.get('vtrust_if_set'), '.3f')}) · "
           f"L1 to consensus {_fmt(cons.get('l1_to_consensus'), '.3f')} · "
           f"stake-weighted cosine with the validators {_fmt(cons.get('agreement'), '.3f')}</p>"]
    if cons.get("warning"):
        out.append(f"<p><strong>{html.escape(str(cons['warning']))}</strong></p>")
    out += [f"<p>{html.escape(str(n))}</p>" for n in cons.get("notes") or []]
    if image is not None:
        out.append(_img(image, "our weights against consensus"))
    diffs = cons.get("top_differences") or []
    if diffs:
        out.append("<h3>Where we differ most</h3><table><tr><th>uid</th><th>hotkey</th><th>ours</th>"
                   "<th>consensus</th><th>difference</th><th>win rate</th><th>status</th></tr>")
        for d in diffs:
            status = (d.get("status") or "–") + (f": {d['reason']}" if d.get("reason") else "")
            out.append(f"<tr><td>{_fmt(d.get('uid'))}</td><td>{_fmt(d.get('hotkey'))}</td>"
                       f"<td>{_fmt(d.get('ours'))}</td><td>{_fmt(d.get('consensus'))}</td>"
                       f"<td>{_fmt(d.get('diff'), '+.4f')}</td><td>{_fmt(d.get('win_rate'), '.3f')}</td>"
                       f"<td>{html.escape(status)}</td></tr>")
        out.append("</table>")
    vals = cons.get("validators") or []
    if vals:
        out.append("<h3>Validators in the consensus</h3><table><tr><th>uid</th><th>hotkey</th><th>stake %</th>"
                   "<th>age (blocks)</th><th>weights</th><th>cosine</th><th>L1</th><th>vtrust</th></tr>")
        for v in vals:
            share = v.get("stake_share")
            out.append(f"<tr><td>{_fmt(v.get('uid'))}</td><td>{_fmt(v.get('hotkey'))}</td>"
                       f"<td>{_fmt(None if share is None else 100 * share, '.1f')}</td>"
                       f"<td>{_fmt(v.get('age_blocks'))}</td><td>{_fmt(v.get('n_weights'))}</td>"
                       f"<td>{_fmt(v.get('cosine'), '.3f')}</td><td>{_fmt(v.get('l1'), '.3f')}</td>"
                       f"<td>{_fmt(v.get('vtrust'), '.3f')}</td></tr>")
        out.append("</table>")
    return out


# --- entry points -------------------------------------------------------------------------------

def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write report.json, the PNGs and report.html into ``out_dir``; return what was written.

    Keys: "json", "html", and "<competition>/losses", "<competition>/win_rates",
    "<competition>/win_matrix" (the last only when the competition has a win matrix), and
    "consensus" when the report has a consensus section.
    """
    _check(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    clean = to_jsonable(report)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(clean, indent=1, allow_nan=False))
    written["json"] = json_path
    images: dict[str, dict[str, Path]] = {}
    for comp, sec in clean["competitions"].items():
        images[comp] = {}
        models = sec["models"]
        stem = _safe(comp)
        if models:
            images[comp]["losses"] = plot_losses(comp, models, out_dir / f"{stem}_losses.png")
            images[comp]["win_rates"] = plot_win_rates(comp, models, out_dir / f"{stem}_win_rates.png")
        matrix = _matrix(sec)
        if matrix is not None and matrix[0].size:
            title = sec["win_matrix"].get("title") if isinstance(sec["win_matrix"], dict) else None
            images[comp]["win_matrix"] = plot_win_matrix(comp, matrix[0], matrix[1],
                                                          out_dir / f"{stem}_win_matrix.png", title)
        written.update({f"{comp}/{k}": p for k, p in images[comp].items()})
    consensus_image = None
    if clean.get("consensus") is not None:
        consensus_image = written["consensus"] = plot_consensus(clean["consensus"], out_dir / "consensus.png")
    html_path = out_dir / "report.html"
    html_path.write_text(_html(clean, clean["competitions"], images, consensus_image), encoding="utf-8")
    written["html"] = html_path
    return written


def competition_section(labels: Sequence[str], uids: Sequence[int | None], blocks: Any, losses: Any,
                        n_tokens: Any, block_now: float, params: bstats.WinParams = bstats.WinParams(), *,
                        candidate_labels: Sequence[str] = (), candidate_losses: Any = None,
                        candidate_tokens: Any = None, kinds: Sequence[str] | None = None,
                        eligible: Any = None, include_deltas: bool = False,
                        n_boot: int = bstats.BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
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
