"""The loop's `score` port: one model's losses on a list of samples, in an isolated worker.

Resolves the competition's tokenizer once, runs `validator.scoring.job:score_model_job` in a
fresh process with a time limit (a crash, an out-of-memory or a hang becomes a failure
reason for that model), and decodes the JSON result: losses, n_tokens, failure, and
`tokenizer` ("model" or "competition": which tokenizer the model was scored with, by the
live rules of validator.scoring.tokens) with `tokenizer_reason`, and `notes`: things that went wrong
around the model but are not its fault (e.g. the token cache could not be saved).

Limits per model: the time limit (timeout_s), a memory limit (memory_limit_bytes; by default
SCORE_MEMORY_FRACTION of the host's memory: resident memory watched by the parent on every
device, plus RLIMIT_AS on CPU; over it the model fails `oom` and nothing else does), and a time
box for the model's own tokenizer (TOKENIZE_TIME_SHARE of timeout_s).
"""
from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path
from typing import Callable, Sequence

import constants
from validator.core.competitions import Competition
from validator.core.scores import ScoreResult, decode_float
from validator.scoring.token_cache import TokenCacheFile
from validator.scoring.worker_limits import default_memory_limit, worker_limits

logger = logging.getLogger(__name__)

JOB = "validator.scoring.job:score_model_job"
TOKENIZE_JOB = "validator.scoring.job:tokenize_step_job"


# What a warm spare imports before its job (validator.scoring.workerpool): the bulk of a job's start-up
# (transformers loads lazily: modeling_utils and an architecture's module are ~2 s of a job's
# first from_pretrained). The architectures of the live competitions (Llama, Phi3); others
# import in their job, as before. Imports only: nothing here touches a device.
PRELOAD = ("numpy", "torch", "tokenizers", "transformers", "transformers.modeling_utils",
           "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
           "transformers.models.llama.modeling_llama", "transformers.models.phi3.modeling_phi3",
           "validator.scoring.job", "validator.scoring.tokens", "validator.scoring.packing", "validator.adapters.files",
           "validator.adapters.hub")

# one model to score: (model_path, samples, competition, step_samples)
ScoreJob = tuple[Path, list[tuple[str, str]], Competition, "list[tuple[str, str]] | None"]


def job_cost(model_path: Path, n_samples: int) -> int:
    """How long a job takes, roughly (parameters x tokens): its weight files' bytes x samples."""
    path = Path(model_path)
    try:
        files = [path] if path.is_file() else [f for f in path.iterdir() if f.suffix == ".safetensors"]
        size = sum(f.stat().st_size for f in files)
    except OSError:
        size = 0  # unreadable: the job fails fast, whatever its place in the order
    return size * max(1, n_samples)


def decode_value(value: dict) -> ScoreResult:
    """The job's JSON value as the loop's score result."""
    failure = value.get("failure")
    detail = value.get("detail")
    if failure and detail:
        # detail is the ScoringError's text, which already starts with "<reason>: "
        failure = (detail if detail.startswith(f"{failure}:") else f"{failure}: {detail}")[:300]
    # tokenizer: "model" | "competition" (whose tokenizer the ids came from), tokenizer_reason: why;
    # notes: not the model's fault, for the operator (e.g. "token cache not saved: ...")
    return ScoreResult(losses={k: decode_float(v) for k, v in value["losses"].items()},
                       n_tokens={k: int(v) for k, v in value["n_tokens"].items()},
                       failure=failure, seconds=float(value.get("seconds") or 0.0), detail=detail,
                       tokenizer=value.get("tokenizer"), tokenizer_reason=value.get("tokenizer_reason"),
                       notes=list(value.get("notes") or []),
                       engine=value.get("engine"),  # "engine (...)", "reference: ...", "streamed (N groups)"
                       phases={k: float(v) for k, v in (value.get("phases") or {}).items()})


class Scorer:
    """The loop's score port: `scorer(model_path, samples, comp, step_samples=None) -> ScoreResult`, and
    `score_many(jobs) -> [ScoreResult]` (in job order) to score several models at once, one per device.
    It is the one writer of the token cache (`token_cache`). `close()` stops the worker pool (also done at exit)."""

    def __init__(self, devices: list[str], cache_dir: Path, endpoint: str | None, isolate: bool, warm: bool,
                 timeout_s: float, engine: bool, memory_limit_bytes: int | None,
                 tokenize_timeout_s: float | None, max_device_bytes: int | None, spares: int = 1,
                 fork: bool = True) -> None:
        self.devices = list(devices)
        self.cache_dir, self.endpoint, self.isolate, self.warm = cache_dir, endpoint, isolate, warm
        self.timeout_s, self.engine = timeout_s, engine
        self.tokenize_timeout_s, self.max_device_bytes = tokenize_timeout_s, max_device_bytes
        if memory_limit_bytes is None:
            memory_limit_bytes = default_memory_limit()
        self.memory_limit_bytes = memory_limit_bytes
        self._tokenizers: dict[str, Path] = {}
        # one writer of tokens.npz: jobs write their new ids to a delta each, merged as each model ends
        self.token_cache = TokenCacheFile(self.cache_dir / "tokens.npz")
        self._tok_lock = threading.Lock()
        self._pool = None
        if isolate and (warm or len(self.devices) > 1):
            from validator.scoring.workerpool import WorkerPool

            self._pool = WorkerPool(self.devices, preload=PRELOAD, warm=warm, spares=spares, fork=fork)
            # a scorer dropped without close() takes its spares with it (the lanes hold the pool alive)
            weakref.finalize(self, self._pool.close, False)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def _tokenizer_for(self, comp: Competition) -> str | None:
        from validator.adapters import hub

        if not comp.tokenizer:
            return None
        with self._tok_lock:
            if comp.tokenizer not in self._tokenizers:
                self._tokenizers[comp.tokenizer] = hub.fetch_tokenizer(comp.tokenizer, self.cache_dir,
                                                                       endpoint=self.endpoint)
            return str(self._tokenizers[comp.tokenizer])

    def _kwargs(self, job: ScoreJob, tok: str | None, device: str, delta: Path) -> dict:
        model_path, samples, comp, step_samples = job
        kwargs = {"model_path": str(model_path), "samples": [list(s) for s in samples],
                  "competition": comp.model_dump(mode="json"), "device": device, "tokenizer_path": tok,
                  "engine": self.engine, "token_cache_path": str(self.token_cache.path),
                  "token_cache_out": str(delta),
                  "step_samples": None if step_samples is None else [list(s) for s in step_samples]}
        if self.tokenize_timeout_s is not None:
            kwargs["tokenize_timeout_s"] = self.tokenize_timeout_s
        if self.max_device_bytes is not None:
            kwargs["max_device_bytes"] = int(self.max_device_bytes)
        return kwargs

    def _worker_job(self, kwargs_of: Callable[[str], dict], fn: str | None = None):
        from validator.scoring.workerpool import Job

        def job_for(device: str) -> Job:  # JOB read at call time: tests put a fault job in its place
            return Job(fn or JOB, kwargs_of(device), self.timeout_s, **worker_limits(device, self.memory_limit_bytes))

        return job_for

    def pretokenize(self, jobs: list[ScoreJob]) -> list[bytes]:
        """Tokenize each competition's step samples once under its tokenizer, in an isolated job, before
        the models are dispatched (lanes then find the ids in the token cache instead of each making
        them at once). Returns the new entries as token cache files' bytes (merged here already; the
        Ray scorer ships them to its nodes). A failed job costs nothing: the models tokenize themselves."""
        groups: dict[tuple, tuple[Competition, str, dict]] = {}
        for model_path, samples, comp, step_samples in jobs:
            try:
                tok = self._tokenizer_for(comp)
            except Exception:  # noqa: BLE001 - the model's own job reports it
                continue
            if tok is None:
                continue
            _, _, want = groups.setdefault((tok, comp.model_dump_json()), (comp, tok, {}))
            for sid, text in (step_samples if step_samples is not None else samples):
                want.setdefault(sid, text)
        shipped = []
        for comp, tok, want in groups.values():
            delta = self.token_cache.delta_path()
            kw = {"samples": [[k, v] for k, v in want.items()], "competition": comp.model_dump(mode="json"),
                  "tokenizer_path": tok, "token_cache_path": str(self.token_cache.path), "token_cache_out": str(delta)}
            res = self._run_one(TOKENIZE_JOB, kw)
            if not res.ok:
                logger.warning("tokenizing the step under %s failed (each model tokenizes itself): %s",
                               comp.tokenizer, res.describe())
            if delta.exists():
                shipped.append(delta.read_bytes())
            for note in self.token_cache.merge(delta):
                logger.warning("%s", note)
        return shipped

    def _run_one(self, fn: str, kwargs: dict):
        """One job on this scorer's workers (a WorkerResult), as its models run."""
        from validator.scoring.worker import WorkerResult, run_isolated

        if self._pool is not None:
            return self._pool.run(self._worker_job(lambda device: kwargs, fn))
        if self.isolate:
            return run_isolated(fn, kwargs, timeout_s=self.timeout_s,
                                **worker_limits(self.devices[0], self.memory_limit_bytes))
        import importlib

        module, _, name = fn.partition(":")
        return WorkerResult(True, getattr(importlib.import_module(module), name)(**kwargs), None, 0.0)

    def __call__(self, model_path: Path, samples: list[tuple[str, str]], comp: Competition,
                 step_samples: list[tuple[str, str]] | None = None) -> ScoreResult:
        res = self.score_many([(model_path, samples, comp, step_samples)])[0]
        assert res is not None  # nothing stops a single model but an exception
        return res

    def score_many(self, jobs: list[ScoreJob], on_result: Callable[[int, ScoreResult], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> list[ScoreResult | None]:
        """Score every job, each on the next free device, the costliest (job_cost) first;
        results in job order, equal to scoring them one after another. on_result(index, result)
        runs in this thread as each model ends (save it: a kill loses only the models in flight);
        once should_stop() is true no further model starts (None in its place)."""
        results: list[ScoreResult | None] = [None] * len(jobs)
        deltas = [self.token_cache.delta_path() for _ in jobs]

        def done(i: int, res: ScoreResult) -> None:
            res.notes.extend(self.token_cache.merge(deltas[i]))
            results[i] = res
            if on_result is not None:
                on_result(i, res)

        runnable = []  # (index, tokenizer path)
        for i, job in enumerate(jobs):
            comp = job[2]
            try:
                runnable.append((i, self._tokenizer_for(comp)))
            except Exception as e:  # noqa: BLE001 - reported per model, the step goes on
                done(i, ScoreResult({}, {}, f"tokenizer: cannot fetch {comp.tokenizer!r}: {e}", 0.0))
        runnable.sort(key=lambda it: -job_cost(jobs[it[0]][0], len(jobs[it[0]][1])))
        if len(self.devices) > 1 and self._pool is not None and runnable:
            self.pretokenize([jobs[i] for i, _ in runnable])
        if self._pool is not None:
            job_fors = [self._worker_job(lambda device, i=i, tok=tok: self._kwargs(jobs[i], tok, device, deltas[i]))
                        for i, tok in runnable]
            self._pool.run_many(job_fors, on_done=lambda k, res: done(runnable[k][0], self._decode(res)),
                                should_stop=should_stop)
            return results
        for i, tok in runnable:  # one after another: in this process, or a cold worker per model
            if should_stop is not None and should_stop():
                break
            kw = self._kwargs(jobs[i], tok, self.devices[0], deltas[i])
            if not self.isolate:
                from validator.scoring.job import score_model_job

                done(i, decode_value(score_model_job(**kw)))
            else:
                from validator.scoring.worker import run_isolated

                done(i, self._decode(run_isolated(JOB, kw, timeout_s=self.timeout_s,
                                                  **worker_limits(self.devices[0], self.memory_limit_bytes))))
        return results

    @staticmethod
    def _decode(res) -> ScoreResult:
        if not res.ok:
            return ScoreResult({}, {}, res.describe()[:300], 0.0)
        return decode_value(res.value)


def make_score_fn(device: str, cache_dir: Path, endpoint: str | None = None, isolate: bool = True,
                  timeout_s: float = constants.TTL_MODEL_EVAL_S, engine: bool = True,
                  memory_limit_bytes: int | None = None,
                  tokenize_timeout_s: float | None = None, max_device_bytes: int | None = None,
                  warm: bool = True, devices: Sequence[str] | None = None, spares: int = 1,
                  fork: bool = True) -> Scorer:
    """The loop's score(model_path, samples, comp, step_samples=None) -> ScoreResult (a `Scorer`).

    memory_limit_bytes: None = default_memory_limit(), 0 = none (isolate=False has none either).
    tokenize_timeout_s: the model's own tokenizer's time box; None = the job's default,
    TOKENIZE_TIME_SHARE x TTL_MODEL_EVAL_S (the default timeout_s).
    max_device_bytes: a device memory cap (--max-device-memory): a model too large for it is
    scored layer by layer (validator.scoring.streaming); None: streamed only when it exceeds the free
    CUDA memory.
    warm: a warm spare worker per device (validator.scoring.workerpool): the next model's worker has
    imported torch and transformers before its job arrives. False: a cold worker per model.
    devices: score on each of them at once (`score_many`), e.g. ["cuda:0", "cuda:1"]; None = [device].
    spares: warm workers waiting per device (validator.scoring.workerpool.WorkerPool).
    fork: warm workers are forked from a fork server that imported PRELOAD once
    (validator.scoring.forkserver); False: each spare is a fresh interpreter that imports them itself.
    isolate=False scores in this process, one model after another, on devices[0].
    """
    if devices is not None:
        if isinstance(devices, str) or not devices or not all(isinstance(d, str) and d for d in devices):
            raise ValueError(f"devices {devices!r}: expected a non-empty list of device names")
    return Scorer(list(devices) if devices is not None else [device], cache_dir, endpoint, isolate, warm, timeout_s,
                  engine, memory_limit_bytes, tokenize_timeout_s, max_device_bytes, spares, fork)
