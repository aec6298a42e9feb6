"""A step's samples through the live tokenization rules, for one competition and one model.

validator.scoring.tokens states the rules (T1-T7, C1-C5) and validator.scoring.tokenizer_build
builds the tokenizers; here they meet the competition's parameters (`as_competition`), the
token cache and the model's embedding size (rule T6), and failures become ScoringError.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from validator.core.competitions import Competition
from validator.scoring import tokens
from validator.scoring.engine import ScoringError
from validator.scoring.token_cache import TokenCache
from validator.scoring.tokenizer_build import LazyTokenizer, LiveTokenizer
from validator.scoring.tokenizer_build import load_tokenizer as build_live_tokenizer
from validator.scoring.tokens import TokenizedSample, TokenizerLoadError

CompetitionLike = Union[Competition, Mapping[str, Any]]
# Keys Competition requires that tokenizing and scoring never read (rewards, admission, data):
# a caller may give only the scoring keys, as the worker's callers and the tests do.
_NOT_READ_HERE = {"reward": 0.0, "model_types": [], "parameters": 1, "model_size": 1, "dataset": "-"}


def as_competition(competition: CompetitionLike) -> Competition:
    """The competition of a scoring call, validated by Competition itself: a Competition as is, or
    a dict (Competition.model_dump(mode="json"), as the worker receives it, or only some of the
    scoring keys: id, tokenizer, free_tokenizer, max_sequence_len, cap_sample_len,
    max_tokenize_fails; the rest take Competition's defaults). ValueError when a value is bad."""
    if isinstance(competition, Competition):
        return competition
    if not isinstance(competition, Mapping):
        raise TypeError(f"competition: expected a Competition or a dict, got {type(competition).__name__}")
    return Competition.model_validate({"id": "?", **_NOT_READ_HERE, **competition})


def load_tokenizer(path: str | os.PathLike, *, role: tokens.Role = "model") -> LiveTokenizer:
    """The tokenizer transformers 4.44 builds from a local dir (validator.scoring.tokens rules L1-L8);
    never the network, never code from the dir. role "competition" tolerates a dir saved by
    transformers 5 (see validator.scoring.tokens.resolve_class)."""
    try:
        return build_live_tokenizer(path, role=role)
    except TokenizerLoadError as e:
        raise ScoringError("tokenizer", f"cannot load tokenizer from {path}: {e}") from e


def tokenize_one(tokenizer, sample_id: str, text: str, competition: CompetitionLike) -> TokenizedSample:
    """Rules T1-T4 for one sample; `tokenizer` is a LiveTokenizer (or LazyTokenizer)."""
    comp = as_competition(competition)
    row = tokens.tokenize_text(tokenizer, text, comp.cap_sample_len, comp.max_sequence_len)
    return TokenizedSample(sample_id, row.ids, row.failure, row.capped)


def tokenize_samples(tokenizer, samples: Sequence[tuple[str, str]], competition: CompetitionLike,
                     *, cache: TokenCache | None = None, tokenizer_key: str | None = None,
                     stop_after_fails: int | None = None, time_limit_s: float | None = None) -> list[TokenizedSample]:
    """Tokenize (id, text) samples for a competition; failures are marked, not raised.

    With a cache and a tokenizer_key (`tokenizer.key`), results are reused across models and
    steps. stop_after_fails: raise tokens.TooManyFailures as soon as the round-trip failures
    exceed it (rule T5; the live loop stops there too), instead of tokenizing the rest.
    time_limit_s: raise tokens.TooSlow once tokenizing (building the tokenizer included) has
    taken longer (rule T7); what a too-slow run tokenized is not cached, so the next visit is
    refused again rather than finishing the work piecemeal.
    """
    comp = as_competition(competition)
    out = []
    fresh: list[tuple[str, str, TokenizedSample]] = []
    fails = 0
    t0 = time.monotonic()
    caching = cache is not None and bool(tokenizer_key)
    too_slow = False
    try:
        for sample_id, text in samples:
            sample_id = str(sample_id)
            if not isinstance(text, str):
                raise TypeError(f"sample {sample_id!r}: text must be a str, got {type(text).__name__}")
            hit = cache.get(tokenizer_key, comp, sample_id, text) if caching else None
            if hit is None:
                hit = tokenize_one(tokenizer, sample_id, text, comp)
                fresh.append((sample_id, text, hit))
            out.append(hit)
            fails += hit.failure == "roundtrip"
            if stop_after_fails is not None:
                tokens.check_fails(fails, len(samples), stop_after_fails)
            if time_limit_s is not None:
                tokens.check_time(time.monotonic() - t0, len(out), len(samples), time_limit_s)
    except tokens.TooSlow:
        too_slow = True
        raise
    finally:
        if caching and not too_slow:
            for sample_id, text, row in fresh:
                cache.put(tokenizer_key, comp, sample_id, text, row)
    return out


def check_tokenize_fails(tokenized: Sequence[TokenizedSample], competition: CompetitionLike) -> None:
    """More than max_tokenize_fails round-trip failures disqualify the tokenizer for the step (rule T5)."""
    comp = as_competition(competition)
    fails = sum(1 for t in tokenized if t.failure == "roundtrip")
    try:
        tokens.check_fails(fails, len(tokenized), comp.max_tokenize_fails)
    except tokens.TooManyFailures as e:
        raise ScoringError("tokenizer", str(e)) from e


def _vocab_rows(model_or_config: Any) -> int:
    """Rows usable as token ids: min of input and output embedding rows, or config.vocab_size."""
    rows = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model_or_config, getter, None)
        emb = fn() if callable(fn) else None
        weight = getattr(emb, "weight", None)
        if weight is not None:
            rows.append(int(weight.shape[0]))
    if rows:
        return min(rows)
    config = getattr(model_or_config, "config", model_or_config)
    vocab = getattr(config, "vocab_size", None)
    if vocab is None and hasattr(config, "get_text_config"):
        vocab = getattr(config.get_text_config(), "vocab_size", None)
    if vocab is None:
        raise ScoringError("vocab", "cannot tell the model's vocabulary size")
    return int(vocab)


def check_max_token_id(model_or_config: Any, top: int | None) -> None:
    """Rule T6: the largest id of the step's kept samples must index the model's embeddings;
    checked before any forward pass. None (no id to check) fails like the live code does."""
    if top is None:
        raise ScoringError("tokenizer", "no sample of the step was kept by any tokenizer: no token ids to check "
                                        "against the embedding (the live vocabulary check fails on None)")
    rows = _vocab_rows(model_or_config)
    if top >= rows:
        raise ScoringError("vocab", f"token id {top} is outside the model's {rows} embedding rows "
                                    "(tokenizer and model vocabularies do not match)")


def check_vocab(model_or_config: Any, tokenized: Sequence[TokenizedSample]) -> None:
    """check_max_token_id over these samples (nothing to check when none is kept)."""
    top = tokens.max_token_id(tokenized)
    if top is not None:
        check_max_token_id(model_or_config, top)


def pick_tokenizer_dir(comp: Competition, tokenizer_path: str | os.PathLike | None) -> Path | None:
    """The competition tokenizer's dir: tokenizer_path (hub.fetch_tokenizer's result), else the
    competition's `tokenizer` when it is a local dir; None when the competition names none."""
    if tokenizer_path is not None:
        return Path(tokenizer_path)
    if not comp.tokenizer:
        return None
    if Path(comp.tokenizer).is_dir():
        return Path(comp.tokenizer)
    raise ScoringError("tokenizer", f"competition {comp.id!r} tokenizer {comp.tokenizer!r} is not a local "
                                    "directory; pass tokenizer_path (see hub.fetch_tokenizer)")


def tokenize_step(tok_dir: Path, role: tokens.Role, comp: Competition, step: Sequence[tuple[str, str]],
                  cache: TokenCache | None = None, tokenize_timeout_s: float | None = None) -> tokens.StepTokens:
    """The step's ids under one tokenizer (through the cache); a model's own tokenizer gets
    tokenize_timeout_s (rule T7), the competition's none."""
    plan = tokens.plan_tokenizer(tok_dir, role=role)
    rows = tokenize_samples(LazyTokenizer(plan), step, comp, cache=cache,
                            tokenizer_key=plan.key if cache is not None else None,
                            stop_after_fails=comp.max_tokenize_fails,
                            time_limit_s=tokenize_timeout_s if role == "model" else None)
    return tokens.StepTokens({r.sample_id: r for r in rows}, tokens.max_token_id(rows), plan.describe(), plan.key)


def choose_step_tokens(model_path: Path, comp: Competition, tokenizer_dir: Path | None,
                       step: Sequence[tuple[str, str]], cache: TokenCache | None = None,
                       tokenize_timeout_s: float | None = None) -> tokens.TokenizerChoice:
    """Which tokenizer the model is scored with and its ids for every sample of the step (rules
    C1-C5 of validator.scoring.tokens over T1-T5, and T7: the model's own tokenizer gets
    tokenize_timeout_s); raises ScoringError("tokenizer") when there is none."""

    def tokenize(tok_dir: Path, role: tokens.Role) -> tokens.StepTokens:
        return tokenize_step(tok_dir, role, comp, step, cache, tokenize_timeout_s)

    try:
        return tokens.choose_tokenizer(model_path, tokenizer_dir, comp.free_tokenizer, tokenize)
    except tokens.NoTokenizer as e:
        raise ScoringError("tokenizer", str(e)) from e
    except tokens.TokenizerError as e:  # live: the competition's whole evaluation fails
        raise ScoringError("tokenizer", f"competition tokenizer {tokenizer_dir}: {e}") from e
