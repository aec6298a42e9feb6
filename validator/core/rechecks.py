"""Which samples a step scores and which cached losses it recomputes (pure rules).

Every choice is a seeded, order-independent function of the sample ids and of what the
loss cache holds, so validators with the same seed and data agree whatever order their
databases were filled in. The cache itself (storage) is `validator.adapters.evalcache`.
"""
from __future__ import annotations

import hashlib
import logging
import math
from typing import Iterable, Protocol

import constants

log = logging.getLogger(__name__)


class SampleIds(Protocol):
    def ids(self) -> list[str]: ...


class Losses(Protocol):
    """What the rules read of the loss cache (and reset on a failed recheck)."""

    def cached(self, model_key: str) -> list[str]: ...

    def get(self, model_key: str, sample_id: str) -> float | None: ...

    def reset_model(self, model_key: str) -> None: ...


def _tiebreak(seed: int, *parts: str) -> bytes:
    """A seeded, order-independent sort key: validators with the same seed agree even when
    their databases were filled in a different order."""
    return hashlib.sha256("\x00".join((str(seed),) + parts).encode()).digest()


def _same_loss(a: float, b: float, rel_tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rel_tol * max(abs(a), abs(b)) or a == b


def pick_eval_samples(db: SampleIds, cache: Losses, model_keys: list[str], n: int, seed: int) -> list[str]:
    """n sample ids of the database, those missing for the most models in play first (the
    computed part of the matrix grows until the database is covered, then stays free);
    ties are broken by a seeded hash, so the choice does not depend on insertion order."""
    ids = db.ids()
    rows = [set(cache.cached(k)) for k in model_keys]
    n_missing = {sid: sum(sid not in r for r in rows) for sid in ids}
    ids.sort(key=lambda sid: (-n_missing[sid], _tiebreak(seed, sid)))
    return ids[:max(n, 0)]


def n_rechecks(n_cached: int) -> int:
    """How many of `n_cached` cached losses a model has recomputed: a fraction, capped."""
    return min(math.ceil(constants.RECHECK_FRACTION * n_cached), constants.RECHECK_MAX)


def pick_rechecks(cache: Losses, model_key: str, sample_ids: Iterable[str], seed: int) -> list[str]:
    """Of `sample_ids`, the few already cached for the model that are recomputed anyway:
    min(RECHECK_FRACTION of them, RECHECK_MAX), at least one if any is cached."""
    cached = [s for s in dict.fromkeys(sample_ids) if cache.get(model_key, s) is not None]
    cached.sort(key=lambda sid: _tiebreak(seed, model_key, sid))
    return cached[:n_rechecks(len(cached))]


def verify_rechecks(cache: Losses, model_key: str, recomputed: dict[str, float],
                    rel_tol: float = constants.RECHECK_TOLERANCE) -> bool:
    """Compare recomputed losses with the cached ones. On any mismatch the model's row is
    reset (every loss of it is recomputed next time) and False is returned."""
    for sid, new in recomputed.items():
        old = cache.get(model_key, sid)
        if old is None:
            continue
        if not _same_loss(old, float(new), rel_tol):
            log.warning("recheck failed for model %s on sample %s: cached %r, recomputed %r; "
                        "dropping its %d cached losses", model_key, sid, old, new, len(cache.cached(model_key)))
            cache.reset_model(model_key)
            return False
    return True
