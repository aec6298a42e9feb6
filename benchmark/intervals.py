"""Confidence intervals of the benchmark (pure numpy): percentile bootstraps over samples and
the Wilson score interval of a win rate.

A bootstrap resamples sample indices only: the per-sample outcome (who wins, the paired loss
delta) is computed once by the caller and re-averaged per resample, so 1000+ resamples stay
cheap. A bootstrap interval of a win rate collapses to a point at 0 % or 100 %; the Wilson
interval does not.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

import constants
from validator.core.scores import to_jsonable

BOOTSTRAP_RESAMPLES = constants.BENCH_BOOTSTRAP_RESAMPLES
BOOTSTRAP_MIN_RESAMPLES = constants.BENCH_BOOTSTRAP_MIN_RESAMPLES
CONFIDENCE = constants.BENCH_CONFIDENCE
_CHUNK_ELEMENTS = constants.BENCH_BOOTSTRAP_CHUNK_ELEMENTS


@dataclass
class Interval:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def to_dict(self) -> dict:
        return to_jsonable(asdict(self))


def wilson_interval(successes: float, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a proportion ``successes / n``: unlike a bootstrap (or the
    normal approximation) it keeps a width at 0 % and 100 %, e.g. 10 wins of 10 give a
    95 % interval of 72-100 %. No samples: nan bounds."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes} of {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, confidence)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), confidence)


def resample_chunks(n_samples: int, n_boot: int, seed: int):
    """Yield ``[b, n_samples]`` arrays of resampled sample indices, ``n_boot`` rows in all."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_ELEMENTS // max(n_samples, 1))
    done = 0
    while done < n_boot:
        b = min(per_chunk, n_boot - done)
        yield rng.integers(0, n_samples, size=(b, n_samples))
        done += b


def percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [tail, 1.0 - tail])
    return float(lo), float(hi)


def bootstrap_means(per_sample: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None = None,
                    n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                    confidence: float = CONFIDENCE) -> dict[str, Interval]:
    """Percentile bootstrap CIs of ratio estimates ``sum(x[idx]) / sum(w[idx])`` per key.

    All keys share the same resampled indices (one sample-level bootstrap). ``weights``
    defaults to ones (a plain mean); nan entries of x must have weight 0.
    """
    if n_boot < BOOTSTRAP_MIN_RESAMPLES:
        raise ValueError(f"n_boot: at least {BOOTSTRAP_MIN_RESAMPLES} resamples, got {n_boot}")
    keys = list(per_sample)
    n = len(next(iter(per_sample.values()))) if keys else 0
    weights = weights or {}
    xs = {k: np.nan_to_num(np.asarray(per_sample[k], dtype=np.float64), nan=0.0) for k in keys}
    ws = {k: np.asarray(weights.get(k, np.ones(n)), dtype=np.float64) for k in keys}
    out: dict[str, Interval] = {}
    if n == 0:
        return {k: Interval(math.nan, math.nan, math.nan, confidence) for k in keys}
    boots = {k: [] for k in keys}
    for idx in resample_chunks(n, n_boot, seed):
        for k in keys:
            with np.errstate(invalid="ignore", divide="ignore"):
                boots[k].append(xs[k][idx].sum(axis=1) / ws[k][idx].sum(axis=1))
    for k in keys:
        wsum = ws[k].sum()
        point = float(xs[k].sum() / wsum) if wsum > 0 else math.nan
        lo, hi = percentiles(np.concatenate(boots[k]), confidence)
        out[k] = Interval(point, lo, hi, confidence)
    return out
