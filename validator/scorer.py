"""The loop's `score` port: one model's losses on a list of samples, in an isolated worker.

Resolves the competition's tokenizer once, runs `validator.scoring:score_model_job` in a
fresh process with a time limit (a crash, an out-of-memory or a hang becomes a failure
reason for that model), and decodes the JSON result: losses, n_tokens, failure, and
`tokenizer` ("model" or "competition": which tokenizer the model was scored with, by the
live rules of validator.tokens) with `tokenizer_reason`, and `notes`: things that went wrong
around the model but are not its fault (e.g. the token cache could not be saved).

Limits per model: the time limit (timeout_s), a memory limit (memory_limit_bytes; by default
SCORE_MEMORY_FRACTION of the host's memory: resident memory watched by the parent on every
device, plus RLIMIT_AS on CPU; over it the model fails `oom` and nothing else does), and a time
box for the model's own tokenizer (TOKENIZE_TIME_SHARE of timeout_s).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import constants
from validator.competitions import Competition

JOB = "validator.scoring:score_model_job"


def decode_loss(v) -> float:
    """JSON has no inf/nan: the job sends them as null or strings."""
    if v is None:
        return math.inf
    if isinstance(v, str):
        return float(v)  # "inf", "nan"
    return float(v)


def default_memory_limit() -> int | None:
    """SCORE_MEMORY_FRACTION of the host's (or the cgroup's) memory; None when it is unknown."""
    from validator.worker import host_memory_bytes

    total = host_memory_bytes()
    return int(total * constants.SCORE_MEMORY_FRACTION) if total else None


# glibc maps up to 8 x cores malloc arenas of 64 MiB of address space (threads allocating at once):
# reserved, not used, but RLIMIT_AS counts it
_MALLOC_ARENA_BYTES = 64 * 1024**2


def worker_limits(device: str, memory_limit_bytes: int | None) -> dict:
    """run_isolated's memory arguments: the resident limit on every device; on CPU also an
    address-space limit with headroom for what torch reserves. Not on CUDA: the driver maps far
    more address space than it uses, and RLIMIT_AS makes CUDA initialisation fail."""
    if not memory_limit_bytes:
        return {}
    limits = {"rss_limit_bytes": int(memory_limit_bytes)}
    if not str(device).startswith("cuda"):
        limits["memory_limit_bytes"] = (int(memory_limit_bytes) + constants.SCORE_ADDRESS_SPACE_HEADROOM_BYTES
                                        + _MALLOC_ARENA_BYTES * 8 * (os.cpu_count() or 1))
    return limits


def make_score_fn(device: str, cache_dir: Path, endpoint: str | None = None, isolate: bool = True,
                  timeout_s: float = constants.TTL_MODEL_EVAL_S, engine: bool = True,
                  memory_limit_bytes: int | None = None,
                  tokenize_timeout_s: float | None = None, max_device_bytes: int | None = None) -> Callable:
    """The loop's score(model_path, samples, comp, step_samples=None) -> dict.

    memory_limit_bytes: None = default_memory_limit(), 0 = none (isolate=False has none either).
    tokenize_timeout_s: the model's own tokenizer's time box; None = the job's default,
    TOKENIZE_TIME_SHARE x TTL_MODEL_EVAL_S (the default timeout_s).
    max_device_bytes: a device memory cap (--max-device-memory): a model too large for it is
    scored layer by layer (validator.streaming); None: streamed only when it exceeds the free
    CUDA memory.
    """
    from validator import hub

    if memory_limit_bytes is None:
        memory_limit_bytes = default_memory_limit()
    limits = worker_limits(device, memory_limit_bytes)

    tokenizers: dict[str, Path] = {}

    def tokenizer_for(comp: Competition) -> str | None:
        if not comp.tokenizer:
            return None
        if comp.tokenizer not in tokenizers:
            tokenizers[comp.tokenizer] = hub.fetch_tokenizer(comp.tokenizer, cache_dir, endpoint=endpoint)
        return str(tokenizers[comp.tokenizer])

    def score(model_path: Path, samples: list[tuple[str, str]], comp: Competition,
              step_samples: list[tuple[str, str]] | None = None) -> dict:
        try:
            tok = tokenizer_for(comp)
        except Exception as e:  # noqa: BLE001 - reported per model, the step goes on
            return {"losses": {}, "n_tokens": {}, "failure": f"tokenizer: cannot fetch {comp.tokenizer!r}: {e}"}
        kwargs = {"model_path": str(model_path), "samples": [list(s) for s in samples],
                  "competition": comp.model_dump(mode="json"), "device": device, "tokenizer_path": tok,
                  "engine": engine, "token_cache_path": str(cache_dir / "tokens.npz"),
                  "step_samples": None if step_samples is None else [list(s) for s in step_samples]}
        if tokenize_timeout_s is not None:
            kwargs["tokenize_timeout_s"] = tokenize_timeout_s
        if max_device_bytes is not None:
            kwargs["max_device_bytes"] = int(max_device_bytes)
        if isolate:
            from validator.worker import run_isolated

            res = run_isolated(JOB, kwargs, timeout_s=timeout_s, **limits)
            if not res.ok:
                return {"losses": {}, "n_tokens": {}, "failure": res.describe()[:300]}
            value = res.value
        else:
            from validator.scoring import score_model_job

            value = score_model_job(**kwargs)
        failure = value.get("failure")
        detail = value.get("detail")
        if failure and detail:
            # detail is the ScoringError's text, which already starts with "<reason>: "
            failure = (detail if detail.startswith(f"{failure}:") else f"{failure}: {detail}")[:300]
        # tokenizer: "model" | "competition" (whose tokenizer the ids came from), tokenizer_reason: why;
        # notes: not the model's fault, for the operator (e.g. "token cache not saved: ...")
        return {"losses": {k: decode_loss(v) for k, v in value["losses"].items()},
                "n_tokens": {k: int(v) for k, v in value["n_tokens"].items()},
                "failure": failure, "tokenizer": value.get("tokenizer"),
                "tokenizer_reason": value.get("tokenizer_reason"), "notes": list(value.get("notes") or []),
                "engine": value.get("engine")}  # "engine (...)", "reference: ...", "streamed (N groups)"

    return score
