"""The loop's `score` port: one model's losses on a list of samples, in an isolated worker.

Resolves the competition's tokenizer once, runs `validator.scoring:score_model_job` in a
fresh process with a time limit (a crash, an out-of-memory or a hang becomes a failure
reason for that model), and decodes the JSON result: losses, n_tokens, failure, and
`tokenizer` ("model" or "competition": which tokenizer the model was scored with, by the
live rules of validator.tokens) with `tokenizer_reason`.
"""
from __future__ import annotations

import math
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


def make_score_fn(device: str, cache_dir: Path, endpoint: str | None = None, isolate: bool = True,
                  timeout_s: float = constants.TTL_MODEL_EVAL_S, engine: bool = True) -> Callable:
    from validator import hub

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
        if isolate:
            from validator.worker import run_isolated

            res = run_isolated(JOB, kwargs, timeout_s=timeout_s)
            if not res.ok:
                return {"losses": {}, "n_tokens": {}, "failure": res.describe()[:300]}
            value = res.value
        else:
            from validator.scoring import score_model_job

            value = score_model_job(**kwargs)
        failure = value.get("failure")
        if failure and value.get("detail"):
            failure = f"{failure}: {value['detail']}"[:300]
        # tokenizer: "model" | "competition" (whose tokenizer the ids came from), tokenizer_reason: why
        return {"losses": {k: decode_loss(v) for k, v in value["losses"].items()},
                "n_tokens": {k: int(v) for k, v in value["n_tokens"].items()},
                "failure": failure, "tokenizer": value.get("tokenizer"),
                "tokenizer_reason": value.get("tokenizer_reason")}

    return score
