"""Per-sample summed cross-entropy (the reference loop and the engine), fed by the live tokenization.

Tokenization follows the live validator under transformers 4.44 (validator.scoring.tokens states the
rules); here it meets the token cache, the step's sample list and the model.

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

import errno
import hashlib
import json
import logging
import os
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import constants
from validator.scoring import tokens
from validator.scoring.engine import ScoringError, _engine_run, _is_oom, load_model, model_config, reference_losses
from validator.scoring.tokens import TokenizedSample
from validator.core.scores import ScoreResult, result_to_json

log = logging.getLogger(__name__)

INF = float("inf")
# The model's own tokenizer's time box for a step (score_model_job's default: the worker's default limit)
DEFAULT_TOKENIZE_TIMEOUT_S = constants.TTL_MODEL_EVAL_S * constants.TOKENIZE_TIME_SHARE


# --- competition parameters -----------------------------------------------------------------

def _competition_view(competition: Any) -> SimpleNamespace:
    """The tokenization parameters of a Competition (pydantic model, dict or namespace)."""
    get = competition.get if isinstance(competition, dict) else (lambda k, d=None: getattr(competition, k, d))
    view = SimpleNamespace(
        id=get("id", None),
        tokenizer=get("tokenizer", None),
        free_tokenizer=bool(get("free_tokenizer", False)),
        max_sequence_len=get("max_sequence_len", constants.MAX_SEQUENCE_LEN),
        cap_sample_len=get("cap_sample_len", constants.CAP_SAMPLE_LEN),
        max_tokenize_fails=get("max_tokenize_fails", constants.MAX_TOKENIZE_FAILS),
    )
    for key in ("max_sequence_len", "cap_sample_len", "max_tokenize_fails"):
        value = getattr(view, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"competition {view.id!r}: {key} must be a non-negative integer, got {value!r}")
    return view


# --- tokenizers: the live rules live in validator.scoring.tokens; here they meet the cache and the model ---

def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether the live validator tries a model dir's own tokenizer: it holds tokenizer.json (rule C2)."""
    return (Path(path) / "tokenizer.json").is_file()


def load_tokenizer(path: str | os.PathLike, *, role: tokens.Role = "model") -> tokens.LiveTokenizer:
    """The tokenizer transformers 4.44 builds from a local dir (validator.scoring.tokens rules L1-L8);
    never the network, never code from the dir. role "competition" tolerates a dir saved by
    transformers 5 (see tokens.resolve_class)."""
    try:
        return tokens.load_tokenizer(path, role=role)
    except tokens.TokenizerLoadError as e:
        raise ScoringError("tokenizer", f"cannot load tokenizer from {path}: {e}") from e


def tokenizer_hash(path: str | os.PathLike) -> str:
    """Content hash of the files that define a tokenizer (not the weights next to them)."""
    return tokens.tokenizer_files_hash(path)


def cap_text(text: str, cap: int | None) -> tuple[str, bool]:
    """Cut a text longer than `cap` characters at the last space before the cap
    (hard cut if there is none), as the live subnet does (rule T1)."""
    return tokens.cap_text(text, cap)


def tokenize_one(tokenizer, sample_id: str, text: str, competition: Any) -> TokenizedSample:
    """Rules T1-T4 for one sample; `tokenizer` is a tokens.LiveTokenizer (or LazyTokenizer)."""
    comp = competition if isinstance(competition, SimpleNamespace) else _competition_view(competition)
    row = tokens.tokenize_text(tokenizer, text, comp.cap_sample_len, comp.max_sequence_len)
    return TokenizedSample(sample_id, row.ids, row.failure, row.capped)


def tokenize_samples(tokenizer, samples: Sequence[tuple[str, str]], competition: Any,
                     *, cache: "TokenCache | None" = None, tokenizer_key: str | None = None,
                     stop_after_fails: int | None = None, time_limit_s: float | None = None) -> list[TokenizedSample]:
    """Tokenize (id, text) samples for a competition; failures are marked, not raised.

    With a cache and a tokenizer_key (`tokenizer.key`), results are reused across models and
    steps. stop_after_fails: raise tokens.TooManyFailures as soon as the round-trip failures
    exceed it (rule T5; the live loop stops there too), instead of tokenizing the rest.
    time_limit_s: raise tokens.TooSlow once tokenizing (building the tokenizer included) has
    taken longer (rule T7); what a too-slow run tokenized is not cached, so the next visit is
    refused again rather than finishing the work piecemeal.
    """
    comp = _competition_view(competition)
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


def check_tokenize_fails(tokenized: Sequence[TokenizedSample], competition: Any) -> None:
    """More than max_tokenize_fails round-trip failures disqualify the tokenizer for the step (rule T5)."""
    comp = _competition_view(competition)
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


class TokenCache:
    """(tokenizer key, tokenization params, sample id) -> token ids, across models and steps.

    The tokenizer key is validator.scoring.tokens' TokenizerPlan.key: the rules version, the role
    (model / competition), the tokenizer files' hashes and the class 4.44 builds; the params
    are cap_sample_len and max_sequence_len. Together: everything the ids depend on.

    A short digest of the text is stored with each entry, so a sample id that now names a
    different text is a miss rather than a wrong answer. Saved as one .npz: all ids in one
    integer array (int32 when every id fits, else int64), the index (key -> digest, offset,
    length, failure, capped) as JSON bytes; read with allow_pickle=False, written atomically
    and only when something was added; the oldest entries go beyond `max_entries`.

    In memory the ids stay numpy (views into the loaded array, or the array `put` made):
    loading does Python work per entry, not per token, and an entry becomes a Python list
    only when `get` returns it.
    """

    VERSION = 2  # the layout is unchanged since version 2; only the ids dtype may now be int64

    def __init__(self, max_entries: int = constants.TOKEN_CACHE_MAX_ENTRIES) -> None:
        # key -> (text digest, ids as a 1-D integer array or None, failure, capped)
        self._entries: dict[str, tuple[str, Any, str | None, bool]] = {}
        self.max_entries = max_entries
        self.dirty = False

    @staticmethod
    def _key(tokenizer_key: str, comp: SimpleNamespace, sample_id: str) -> str:
        return f"{tokenizer_key}|{comp.cap_sample_len}|{comp.max_sequence_len}|{sample_id}"

    @staticmethod
    def _digest(text: str) -> str:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tokenizer_key: str, comp: SimpleNamespace, sample_id: str, text: str) -> TokenizedSample | None:
        entry = self._entries.get(self._key(tokenizer_key, comp, sample_id))
        if entry is None or entry[0] != self._digest(text):
            return None
        ids = entry[1].tolist() if entry[1] is not None else None  # a fresh list of Python ints
        return TokenizedSample(sample_id, ids, entry[2], entry[3])

    def put(self, tokenizer_key: str, comp: SimpleNamespace, sample_id: str, text: str, ts: TokenizedSample) -> None:
        key = self._key(tokenizer_key, comp, sample_id)
        ids = None if ts.ids is None else _token_array(ts.ids)
        self._entries.pop(key, None)  # re-inserted last: the oldest entries are the first to go
        self._entries[key] = (self._digest(text), ids, ts.failure, ts.capped)
        while len(self._entries) > self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self.dirty = True

    def save(self, path: str | os.PathLike, *, write_bytes: Callable[[Path, bytes], None] | None = None) -> None:
        """Write the cache atomically (write_bytes: state.atomic_write_bytes unless given); OSError
        (disk full, read-only dir) propagates: see save_token_cache."""
        import io

        import numpy as np

        from validator.adapters.files import atomic_write_bytes

        index, arrays, offset = {}, [], 0
        for k, (digest, ids, failure, capped) in self._entries.items():
            n = -1 if ids is None else len(ids)
            index[k] = [digest, offset, n, failure, capped]
            if n > 0:
                arrays.append(ids)
                offset += n
        if not arrays:
            flat = np.zeros(0, np.int32)
        elif all(a.dtype == np.int32 for a in arrays):
            flat = np.concatenate(arrays)
        else:  # an int64 entry (a loaded int64 file, or a put beyond int32): int32 again if all fit
            flat = np.concatenate(arrays, dtype=np.int64)
            if flat.max() <= _INT32_MAX:
                flat = flat.astype(np.int32)
        buf = io.BytesIO()
        # Uncompressed: savez_compressed makes the file 1.5-2.5x smaller but the save ~100x
        # slower (13 s vs 0.1 s for 20M ids) and the load ~10x (benchmarks/bench_token_cache.py).
        np.savez(buf, ids=flat,
                 index=np.frombuffer(json.dumps({"version": self.VERSION, "entries": index}).encode(), np.uint8))
        (write_bytes or atomic_write_bytes)(Path(path), buf.getvalue())
        self.dirty = False

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TokenCache":
        """Load a saved cache; a missing file is an empty cache, a corrupt one is an error."""
        import numpy as np

        cache = cls()
        p = Path(path)
        if not p.exists():
            return cache
        try:
            with np.load(p, allow_pickle=False) as f:  # reading a member checks its CRC
                ids, data = f["ids"], json.loads(f["index"].tobytes())
            if data.get("version") != cls.VERSION:
                log.warning("token cache %s has version %r, starting empty", p, data.get("version"))
                return cache
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype} of shape {ids.shape}")
            if ids.size and ids.min() < 0:
                raise ValueError("negative token id")
            ids.flags.writeable = False  # entries are views into it
            total = len(ids)
            entries = cache._entries
            for k, (digest, offset, n, failure, capped) in data["entries"].items():
                if n < 0:
                    entries[k] = (digest, None, failure, bool(capped))
                elif 0 <= offset and offset + n <= total:
                    entries[k] = (digest, ids[offset:offset + n], failure, bool(capped))
                else:
                    raise ValueError(f"entry {k!r} ({offset}, {n}) lies outside the {total} ids")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as e:
            # (a truncated or damaged .npz is a BadZipFile, which is none of the others)
            raise ValueError(f"token cache {p} is not a valid cache file: {e}") from e
        return cache


def save_token_cache(cache: TokenCache, path: str | os.PathLike, *,
                     write_bytes: Callable[[Path, bytes], None] | None = None) -> str | None:
    """Save the cache; None when saved, else a note for the operator. Disk full (ENOSPC, EDQUOT)
    or any other OSError costs only the cache (the next visit tokenizes again), never the model."""
    try:
        cache.save(path, write_bytes=write_bytes)
    except OSError as e:
        what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else type(e).__name__
        log.warning("token cache %s not saved (%s): %s", path, what, e)
        return f"token cache not saved ({what}): {e}"
    return None


_INT32_MAX = 2**31 - 1


def _token_array(ids: Sequence[int]):
    """A TokenizedSample's ids as a 1-D array: int32 when every id fits, else int64."""
    import numpy as np

    arr = np.array(ids, dtype=np.int64)  # a copy: later changes to the caller's list don't leak in
    if arr.ndim != 1:
        raise ValueError(f"token ids must be a flat sequence, got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ValueError("token ids must be non-negative")
    return arr.astype(np.int32) if not arr.size or arr.max() <= _INT32_MAX else arr


# --- one model, end to end ---------------------------------------------------------------------

def _pick_tokenizer_dir(comp: SimpleNamespace, tokenizer_path: str | os.PathLike | None) -> Path | None:
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


def choose_step_tokens(model_path: Path, comp: SimpleNamespace, tokenizer_dir: Path | None,
                       step: Sequence[tuple[str, str]], cache: TokenCache | None = None,
                       tokenize_timeout_s: float | None = None) -> tokens.TokenizerChoice:
    """Which tokenizer the model is scored with and its ids for every sample of the step (rules
    C1-C5 of validator.scoring.tokens over T1-T5, and T7: the model's own tokenizer gets
    tokenize_timeout_s); raises ScoringError("tokenizer") when there is none."""

    def tokenize_step(tok_dir: Path, role: tokens.Role) -> tokens.StepTokens:
        plan = tokens.plan_tokenizer(tok_dir, role=role)
        rows = tokenize_samples(tokens.LazyTokenizer(plan), step, comp, cache=cache,
                                tokenizer_key=plan.key if cache is not None else None,
                                stop_after_fails=comp.max_tokenize_fails,
                                time_limit_s=tokenize_timeout_s if role == "model" else None)
        return tokens.StepTokens({r.sample_id: r for r in rows}, tokens.max_token_id(rows), plan.describe(), plan.key)

    try:
        return tokens.choose_tokenizer(model_path, tokenizer_dir, comp.free_tokenizer, tokenize_step)
    except tokens.NoTokenizer as e:
        raise ScoringError("tokenizer", str(e)) from e
    except tokens.TokenizerError as e:  # live: the competition's whole evaluation fails
        raise ScoringError("tokenizer", f"competition tokenizer {tokenizer_dir}: {e}") from e


def score_model(model_path: str | os.PathLike, samples: Sequence[tuple[str, str]], competition: Any, *,
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
    comp = _competition_view(competition)
    ids_of = [str(sid) for sid, _ in samples]
    wanted = set(ids_of)
    step = [(str(sid), text) for sid, text in samples]
    step += [(str(sid), text) for sid, text in (step_samples or ()) if str(sid) not in wanted]
    used = None
    choice = None
    try:
        choice = choose_step_tokens(model_path, comp, _pick_tokenizer_dir(comp, tokenizer_path), step, token_cache,
                                    tokenize_timeout_s)
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
            losses, used = _resident_losses(model, token_lists, device, engine, choice.step.max_token_id, used)
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
        tokenizer_reason=choice.reason)


def _try_streamed(model_path: Path, token_lists: list, device: str, max_device_bytes: int | None,
                  max_token_id: int | None) -> tuple[list[float] | None, str | None]:
    """(losses, engine description) when the model is to be streamed layer by layer; (None,
    why not) when it is scored resident (it fits, or streaming does not support it)."""
    from validator.scoring import streaming

    try:
        budget = streaming.should_stream(model_path, device, max_device_bytes)
    except streaming.Unsupported as e:
        return None, f"resident: {e}"
    if budget is None:
        return None, None
    check_max_token_id(model_config(model_path), max_token_id)
    try:
        losses, info = streaming.streamed_losses(model_path, token_lists, device, max_device_bytes=budget)
    except streaming.Unsupported as e:
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
                    max_device_bytes: int | None = None) -> dict:
    """Worker entry point ("validator.scoring.job:score_model_job"): JSON-able in and out.

    samples: [[sample_id, text], ...]; competition: Competition.model_dump() (or a dict
    with the same keys). Returns result_to_json(score_model(...)): losses keyed by sample
    id with inf encoded as the string "inf", n_tokens, failure, seconds, detail, engine,
    tokenizer ("model" | "competition" | None when no tokenizer was chosen), tokenizer_reason.
    token_cache_path: a TokenCache file loaded before and saved after (a failed save is a note,
    see save_token_cache). step_samples: [[sample_id, text], ...], the step's whole evaluation
    set (see score_model). tokenize_timeout_s: the model's own tokenizer's time box.
    max_device_bytes: the device memory cap (see score_model: streamed scoring).
    """
    cache = None
    notes = []
    if token_cache_path:
        try:
            cache = TokenCache.load(token_cache_path)
        except ValueError as e:  # a damaged cache must not fail every model: rebuild it
            log.warning("%s; starting an empty token cache", e)
            notes.append(f"token cache rebuilt: {e}")
            cache = TokenCache()
    result = score_model(model_path, [(str(s[0]), s[1]) for s in samples], competition, device=device,
                         tokenizer_path=tokenizer_path, engine=engine, token_cache=cache,
                         step_samples=None if step_samples is None else [(str(s[0]), s[1]) for s in step_samples],
                         tokenize_timeout_s=tokenize_timeout_s, max_device_bytes=max_device_bytes)
    if cache is not None and cache.dirty:
        note = save_token_cache(cache, token_cache_path)
        if note:
            notes.append(note)
    result.notes.extend(notes)
    return result_to_json(result)
