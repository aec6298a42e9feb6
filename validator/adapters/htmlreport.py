"""The HTML report of a validator step or a benchmark: report.json, PNG plots, one self-contained report.html.

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

benchmark.report.competition_section builds one competition's entry of a benchmark from
its loss matrix; the plots are validator.adapters.report_plots'.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from validator.adapters.report_plots import plot_consensus, plot_losses, plot_win_matrix, plot_win_rates
from validator.core.scores import to_jsonable


class ReportError(ValueError):
    """The report dict does not have the documented shape."""


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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"




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
