"""The step and benchmark report's PNG plots: losses, win rates, the win matrix, consensus.

Drawn on matplotlib ``Figure`` objects (Agg canvas), never through pyplot's global state,
so this works headless and from threads. Input: a report's checked, JSON-able model rows
(validator.adapters.htmlreport's format).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import constants

LABEL_MAX_CHARS = constants.REPORT_LABEL_MAX_CHARS
ANNOTATE_MAX_MODELS = constants.REPORT_ANNOTATE_MAX_MODELS
KIND_COLOURS = {"chain": "#4C72B0", "benchmark": "#8C8C8C", "candidate": "#DD8452"}
DPI = constants.REPORT_DPI


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _short(label: str) -> str:
    label = label if len(label) <= LABEL_MAX_CHARS else label[: LABEL_MAX_CHARS - 1] + "…"
    return label.replace("$", r"\$")  # a label is text, never matplotlib mathtext


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
