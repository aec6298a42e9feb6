"""The scoring job: one model's per-sample summed cross-entropy on the step's samples.

Tokenization follows the live validator under transformers 4.44 (validator.scoring.tokens states the
rules, validator.scoring.sample_tokens applies them to the step's samples with the token cache of
validator.scoring.token_cache); here the chosen ids meet the model.

A sample's loss is the summed (not mean) next-token cross-entropy over its tokens: for ids
t_0..t_{n-1}, sum_{i=1}^{n-1} -log p(t_i | t_<i). A sample with fewer than 2 tokens has
nothing to predict: loss 0.0, n_tokens 0. A sample that failed tokenization (ids None)
scores inf.

The losses themselves come from validator.scoring.engine (the batched engine, or the reference loop
for heads it does not know), or from validator.scoring.streaming, layer by layer, for a model larger
than the device.

`score_model` ties tokenizer, model and losses together (ScoreResult.tokenizer says whether the
model's own tokenizer or the competition's was used); `score_model_job` is its JSON-in,
JSON-out twin for the isolated worker (validator.scoring.worker.run_isolated).

Not the model's choice: config.json keys that pick kernels or quantizers (constants.
CONFIG_KEYS_STRIPPED) are removed before the model is built, and the model's own tokenizer has
a time box for the step (TOKENIZE_TIME_SHARE of the model's time limit; over it the tokenizer
is rejected like any other failing model tokenizer, rule C3). Trouble that is not the model's
fault (the token cache cannot be saved: disk full) leaves its scoring alone and is reported in
ScoreResult.notes.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import constants
from validator.core.scores import ScoreResult, result_to_json
from validator.scoring.engine import ScoringError, _engine_run, _is_oom, reference_losses
from validator.scoring.model_load import load_model, model_config
from validator.scoring.sample_tokens import (CompetitionLike, as_competition, check_max_token_id,
                                             choose_step_tokens, pick_tokenizer_dir, tokenize_step)
from validator.scoring.stream_plan import Unsupported, should_stream
from validator.scoring.token_cache import TokenCache, load_or_rebuild, save_token_cache

log = logging.getLogger(__name__)

INF = float("inf")
# The model's own tokenizer's time box for a step (score_model_job's default: the worker's default limit)
DEFAULT_TOKENIZE_TIMEOUT_S = constants.TTL_MODEL_EVAL_S * constants.TOKENIZE_TIME_SHARE


def score_model(model_path: str | os.PathLike, samples: Sequence[tuple[str, str]], competition: CompetitionLike, *,
                device: str = "cpu", tokenizer_path: str | os.PathLike | None = None, engine: bool = True,
                token_cache: TokenCache | None = None, model: Any = None,
                step_samples: Sequence[tuple[str, str]] | None = None,
                tokenize_timeout_s: float | None = DEFAULT_TOKENIZE_TIMEOUT_S,
                max_device_bytes: int | None = None) -> ScoreResult:
    """Score one model on the samples. Never raises for a model's fault: a model-level
    failure comes back as ScoreResult.failure (every loss inf); per-sample failures are inf.

    `tokenizer_path`: the competition tokenizer's dir (None: the competition's own `tokenizer`
    if it is a local dir, else the competition has none). Which tokenizer is used (the model's
    own or the competition's) is validator.scoring.tokens.choose_tokenizer's rule; ScoreResult.tokenizer
    says which, tokenizer_reason why. `step_samples`: the step's whole evaluation set when
    `samples` is only the part whose losses are not cached: the tokenizer choice, the
    max_tokenize_fails rule and the vocabulary check run over all of it, as the live validators
    do (they tokenize every sample every step). `model` may be given already loaded
    (benchmarks, tests); otherwise it is loaded from model_path with load_model.
    `tokenize_timeout_s`: the model's own tokenizer's time box over the step's samples (None: none);
    over it that tokenizer fails "too slow" (rule T7) and rule C3 applies.
    `max_device_bytes`: a device memory cap; a model whose weights exceed (a share of) it, or
    of the free CUDA memory, is scored layer by layer (validator.scoring.streaming, same losses);
    ScoreResult.engine then says "streamed (N groups)".
    """
    t0 = time.monotonic()
    model_path = Path(model_path)
    comp = as_competition(competition)
    ids_of = [str(sid) for sid, _ in samples]
    wanted = set(ids_of)
    step = [(str(sid), text) for sid, text in samples]
    step += [(str(sid), text) for sid, text in (step_samples or ()) if str(sid) not in wanted]
    used = None
    choice = None
    phases: dict[str, float] = {}  # where the time went (benchmarks/bench_step.py)
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = round(phases.get(name, 0.0) + now - mark, 4)
        mark = now

    try:
        choice = choose_step_tokens(model_path, comp, pick_tokenizer_dir(comp, tokenizer_path), step, token_cache,
                                    tokenize_timeout_s)
        phase("tokenize")
        tokenized = [choice.step.rows[sid] for sid in ids_of]
        token_lists = [t.ids for t in tokenized]
        streamed = None
        if model is None and engine:  # too large for the device: layer by layer (same losses)
            streamed, used = _try_streamed(model_path, token_lists, device, max_device_bytes,
                                           choice.step.max_token_id)
        if streamed is not None:
            losses = streamed
        else:
            if model is None:
                try:
                    model = load_model(model_path, device)
                except ScoringError:
                    raise
                except Exception as e:  # corrupt or mismatched weights are the model's fault
                    raise ScoringError("load", f"cannot load model from {model_path}: {type(e).__name__}: {e}") \
                        from e
                phase("load")
            losses, used = _resident_losses(model, token_lists, device, engine, choice.step.max_token_id, used)
        phase("score")  # streamed: loading layer by layer is part of it
    except ScoringError as e:
        log.warning("model %s failed scoring: %s", model_path, e)
        return ScoreResult({sid: INF for sid in ids_of}, {sid: 0 for sid in ids_of}, e.reason,
                           time.monotonic() - t0, detail=str(e), engine=used,
                           tokenizer=choice.used if choice else None, tokenizer_reason=choice.reason if choice else None)
    if choice.used == "competition" and choice.reason.startswith("model tokenizer rejected"):
        log.info("model %s: %s", model_path, choice.reason)
    return ScoreResult(
        losses={t.sample_id: float(loss) for t, loss in zip(tokenized, losses)},
        n_tokens={t.sample_id: (max(len(t.ids) - 1, 0) if t.ids is not None else 0) for t in tokenized},
        failure=None, seconds=time.monotonic() - t0, engine=used, tokenizer=choice.used,
        tokenizer_reason=choice.reason, phases=phases)


def _try_streamed(model_path: Path, token_lists: list, device: str, max_device_bytes: int | None,
                  max_token_id: int | None) -> tuple[list[float] | None, str | None]:
    """(losses, engine description) when the model is to be streamed layer by layer; (None,
    why not) when it is scored resident (it fits, or streaming does not support it)."""
    from validator.scoring import streaming

    try:
        budget = should_stream(model_path, device, max_device_bytes)
    except Unsupported as e:
        return None, f"resident: {e}"
    if budget is None:
        return None, None
    check_max_token_id(model_config(model_path), max_token_id)
    try:
        losses, info = streaming.streamed_losses(model_path, token_lists, device, max_device_bytes=budget)
    except Unsupported as e:
        log.warning("model %s cannot be streamed (%s): scoring it resident", model_path, e)
        return None, f"resident: not streamed ({e})"
    except ScoringError:
        raise
    except Exception as e:
        raise _forward_error(e, "streamed: ") from e
    return losses, info.describe()


def _forward_error(e: BaseException, prefix: str = "") -> ScoringError:
    """An exception of a forward pass as the model's failure: `oom` or `forward`."""
    return ScoringError("oom" if _is_oom(e) else "forward", f"{prefix}{type(e).__name__}: {e}")


def _resident_losses(model: Any, token_lists: list, device: str, engine: bool, max_token_id: int | None,
                     note: str | None) -> tuple[list[float], str]:
    """The whole model on the device: the batched engine (or the reference loop)."""
    check_max_token_id(model, max_token_id)
    try:
        if engine:
            losses, used = _engine_run(model, token_lists, device)
        else:
            losses, used = reference_losses(model, token_lists, device), "reference"
    except ScoringError:
        raise
    except Exception as e:
        raise _forward_error(e) from e
    return losses, used if note is None else f"{used}; {note}"


def score_model_job(model_path: str, samples: list, competition: dict, device: str = "cpu",
                    tokenizer_path: str | None = None, engine: bool = True,
                    token_cache_path: str | None = None, step_samples: list | None = None,
                    tokenize_timeout_s: float | None = DEFAULT_TOKENIZE_TIMEOUT_S,
                    max_device_bytes: int | None = None, token_cache_out: str | None = None) -> dict:
    """Worker entry point ("validator.scoring.job:score_model_job"): JSON-able in and out.

    samples: [[sample_id, text], ...]; competition: Competition.model_dump(mode="json") (or a dict
    of its scoring keys: see sample_tokens.as_competition). Returns result_to_json(score_model(...)):
    losses keyed by sample id with inf encoded as the string "inf", n_tokens, failure, seconds,
    detail, engine, tokenizer ("model" | "competition" | None when no tokenizer was chosen),
    tokenizer_reason.
    token_cache_path: a TokenCache file loaded before and saved after (a failed save is a note,
    see save_token_cache). token_cache_out: save only the entries this job added there instead (the
    parent merges them: token_cache.TokenCacheFile, one writer). step_samples: [[sample_id, text], ...], the step's whole evaluation
    set (see score_model). tokenize_timeout_s: the model's own tokenizer's time box.
    max_device_bytes: the device memory cap (see score_model: streamed scoring).
    """
    cache, notes = _load_cache(token_cache_path)
    result = score_model(model_path, [(str(s[0]), s[1]) for s in samples], competition, device=device,
                         tokenizer_path=tokenizer_path, engine=engine, token_cache=cache,
                         step_samples=None if step_samples is None else [(str(s[0]), s[1]) for s in step_samples],
                         tokenize_timeout_s=tokenize_timeout_s, max_device_bytes=max_device_bytes)
    result.notes.extend(notes + _save_cache(cache, token_cache_path, token_cache_out))
    return result_to_json(result)


def tokenize_step_job(samples: list, competition: dict, tokenizer_path: str | None,
                      token_cache_path: str, token_cache_out: str) -> dict:
    """Worker entry point ("validator.scoring.job:tokenize_step_job"): the step's samples under the
    competition's tokenizer into the token cache (its new entries to token_cache_out), once per step
    before its models are dispatched, so lanes and cluster nodes find them instead of each
    tokenizing them again. The same rules and keys as a scoring job's (sample_tokens.tokenize_step).
    Returns {"samples", "failed", "notes"}; a broken competition tokenizer raises, as it fails every model."""
    comp = as_competition(competition)
    tok_dir = pick_tokenizer_dir(comp, tokenizer_path)
    cache, notes = _load_cache(token_cache_path)
    step = [(str(s[0]), s[1]) for s in samples]
    rows = tokenize_step(tok_dir, "competition", comp, step, cache).rows if tok_dir is not None else {}
    notes += _save_cache(cache, token_cache_path, token_cache_out)
    return {"samples": len(rows), "failed": sum(1 for r in rows.values() if r.failure), "notes": notes}


def _load_cache(path: str | None) -> tuple[TokenCache | None, list[str]]:
    return load_or_rebuild(path) if path else (None, [])


def _save_cache(cache: TokenCache | None, path: str | None, out: str | None) -> list[str]:
    """Save what the job added (to `out`: the parent merges it) or, without `out`, the whole cache."""
    if cache is None or not cache.dirty:
        return []
    if out:  # a hand-over file, not the validator's state: outside the crash test's numbered save points
        from validator.adapters.files import atomic_write_bytes

        note = save_token_cache(cache.added(), out, write_bytes=lambda p, b: atomic_write_bytes(p, b, crash_points=False))
    else:
        note = save_token_cache(cache, path)
    return [note] if note else []
