"""A model's scores as a value, and the one JSON codec of non-finite floats.

Strict JSON has no infinity: every file and pipe that carries a loss (the worker's reply,
the eval cache, the step report) writes inf/-inf/nan as the strings "inf"/"-inf"/"nan"
through `encode_float`, and reads them back (also null, as older files wrote) through
`decode_float`. A report for people (report.json, the benchmark's JSON) writes them as null
instead: `finite_or_none`, `to_jsonable`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def encode_float(x: float) -> float | str:
    """`x` as JSON can hold it: finite as is, else "inf" / "-inf" / "nan"."""
    x = float(x)
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")


def decode_float(x: Any) -> float:
    """The inverse of encode_float; null (None) is a loss never computed: inf."""
    return math.inf if x is None else float(x)  # float("inf") / float("nan") parse the strings


def finite_or_none(x: Any) -> float | None:
    """A number for a report: finite floats as is, anything else None (JSON null)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


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


@dataclass
class ScoreResult:
    losses: dict[str, float]  # summed CE per sample; inf for failed samples or a failed model
    n_tokens: dict[str, int]  # predicted tokens per sample (len(ids) - 1; 0 when failed)
    failure: str | None  # model-level reason (ScoringError.reason), None when scored
    seconds: float
    detail: str | None = None  # the model-level failure in words
    engine: str | None = None  # "engine", or "reference: <why>"
    tokenizer: str | None = None  # "model" | "competition": whose tokenizer the ids came from
    tokenizer_reason: str | None = None  # why that one (validator.scoring.tokens.choose_tokenizer)
    notes: list[str] = field(default_factory=list)  # not the model's fault, e.g. "token cache not saved: ..."
    placement: str | None = None  # where it was scored on a cluster ("<node> <gpu type>"); None: this machine
    phases: dict[str, float] = field(default_factory=dict)  # seconds in "tokenize", "load", "score" (forward + loss)


def result_to_json(result: ScoreResult) -> dict:
    """A JSON-able dict of a ScoreResult (non-finite losses through encode_float)."""
    return {"losses": {k: encode_float(v) for k, v in result.losses.items()},
            "n_tokens": dict(result.n_tokens), "failure": result.failure, "seconds": result.seconds,
            "detail": result.detail, "engine": result.engine, "tokenizer": result.tokenizer,
            "tokenizer_reason": result.tokenizer_reason, "notes": list(result.notes), "placement": result.placement,
            "phases": dict(result.phases)}


def result_from_json(data: dict) -> ScoreResult:
    return ScoreResult(losses={k: decode_float(v) for k, v in data["losses"].items()},
                       n_tokens={k: int(v) for k, v in data["n_tokens"].items()},
                       failure=data.get("failure"), seconds=float(data.get("seconds", 0.0)),
                       detail=data.get("detail"), engine=data.get("engine"), tokenizer=data.get("tokenizer"),
                       tokenizer_reason=data.get("tokenizer_reason"), notes=list(data.get("notes") or []),
                       placement=data.get("placement"),
                       phases={k: float(v) for k, v in (data.get("phases") or {}).items()})
