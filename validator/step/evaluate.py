"""Stage: the losses of the field, through the Scorer port, into the evaluation cache.

Also the stage the benchmark (benchmark/compare.py) scores its field with, so a candidate
is scored exactly as a validator scores it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from validator.adapters.evalcache import EvalCache
from validator.core.competitions import Competition
from validator.core.entries import Entry
from validator.core.rechecks import pick_rechecks, verify_rechecks
from validator.core.sanitize import printable
from validator.core.scores import ScoreResult
from validator.ports import BatchScorer, Scorer


def score_entries(
    entries: list[Entry],
    comp: Competition,
    cache: EvalCache,
    sample_ids: list[str],
    score: Scorer,
    seed: int,
    should_stop: Callable[[], bool],
    on_scored: Callable[[Entry, int], None],
) -> int:
    """Compute the missing losses (and a few re-checks) of each entry; returns forward-pass count.

    The competition's models are scored as one batch when `score` is a BatchScorer (a model per
    device at once, validator.scoring.dispatch.Scorer); `on_scored(entry, n)` runs after each model, so the
    caller can save the cache: a kill loses at most the models in flight."""
    forwards = 0
    step_samples = list(zip(sample_ids, cache.db.texts(sample_ids)))
    plans = []  # (entry, missing, rechecks, todo)
    later = []  # a second entry of a model (same cache key): planned after the first is scored, so cached

    def plan(e: Entry) -> None:
        if not sample_ids:  # the text source failed with an empty database: nothing evaluated
            e.status, e.reason = "skipped", "no evaluation samples this step (see problems)"
            return
        missing = cache.losses.missing(e.cache_key, sample_ids)
        missing_set = set(missing)
        rechecks = pick_rechecks(cache.losses, e.cache_key, [s for s in sample_ids if s not in missing_set], seed)
        todo = list(missing) + list(rechecks)
        if not todo:
            e.status = "cached"
            on_scored(e, 0)
            return
        plans.append((e, missing, rechecks, todo))

    keys = set()
    for e in entries:
        if e.path is None or should_stop():
            continue
        if e.cache_key in keys:
            later.append(e)
            continue
        keys.add(e.cache_key)
        plan(e)

    def take(e: Entry, res: ScoreResult) -> ScoreResult | None:
        # both quote the model's files (tokenizer errors, exception text): escaped before shown
        why = res.tokenizer_reason
        e.tokenizer, e.tokenizer_reason = res.tokenizer, None if why is None else printable(why)
        e.engine = None if res.engine is None else printable(res.engine)
        e.notes = [printable(n) for n in res.notes]
        e.scored_on = res.placement
        if res.failure:
            e.status, e.reason = "failed", printable(res.failure)
            return None
        return res

    def finish(k: int, res: ScoreResult) -> None:
        nonlocal forwards
        e, missing, rechecks, todo = plans[k]
        forwards += len(todo)
        result, keep = take(e, res), list(missing)  # a passing re-check keeps the cached value
        if result is not None and rechecks and not verify_rechecks(
                cache.losses, e.cache_key, {s: result.losses[s] for s in rechecks}):
            # the cached row was wrong (nondeterminism or tampering) and has been reset
            e.reason = "re-check mismatch: cached losses reset"
            forwards += len(sample_ids)
            result, keep = take(e, score(e.path, step_samples, comp, step_samples=step_samples)), list(sample_ids)
        if result is not None:
            cache.losses.put(e.cache_key, {s: result.losses[s] for s in keep},
                             {s: result.n_tokens[s] for s in keep})
            e.status = "scored" if missing else "cached"
        on_scored(e, len(todo))

    jobs = [(e.path, list(zip(todo, cache.db.texts(todo))), comp, step_samples) for e, _, _, todo in plans]
    if isinstance(score, BatchScorer) and len(jobs) > 1:
        score.score_many(jobs, on_result=finish, should_stop=should_stop)
    else:
        for k, (path, samples, _, _) in enumerate(jobs):
            if k and should_stop():
                break
            finish(k, score(path, samples, comp, step_samples=step_samples))
    for e in later:
        if should_stop():
            break
        n = len(plans)
        plan(e)
        if len(plans) > n:
            todo = plans[n][3]
            finish(n, score(e.path, list(zip(todo, cache.db.texts(todo))), comp, step_samples=step_samples))
    return forwards


def loss_rows(entries: list[Entry], cache: EvalCache, sample_ids: list[str]) -> list[list[float] | None]:
    """Per entry its per-sample loss row over `sample_ids`, None when its evaluation failed."""
    ok = [e for e in entries if e.evaluated]
    mat = cache.losses.get_matrix([e.cache_key for e in ok], sample_ids) if ok else np.zeros((0, len(sample_ids)))
    rows = {id(e): mat[i].tolist() for i, e in enumerate(ok)}
    return [rows.get(id(e)) for e in entries]
