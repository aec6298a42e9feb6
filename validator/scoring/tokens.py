"""Tokenization exactly as the live validator does it under transformers 4.44.0 / tokenizers 0.19.1.

The live validator (coldint_validator v1.0.16, neurons/dataset.py and neurons/validator.py)
calls `AutoTokenizer.from_pretrained(dir)`, `tokenizer(row, truncation=False)["input_ids"]` and
`tokenizer.decode(ids)`. What those calls do depends on the transformers version; this module
states what 4.44 does as rules and applies them with the `tokenizers` library directly, so the
installed transformers (5.x here) plays no part. Nothing in a tokenizer dir is executed: only
JSON is read, and tokenizer.json is handed to `tokenizers.Tokenizer.from_str`.

Loading a dir (what AutoTokenizer.from_pretrained(dir) builds under 4.44):
  L1  Only a dir holding tokenizer.json is loaded. Without it 4.44 would build the fast tokenizer
      from the slow one, which needs the sentencepiece package the live validator does not have
      (sentencepiece-only dirs never load; the validator does not even try them for a model).
  L2  tokenizer.json must be in the format tokenizers 0.19.1 reads: BPE merges as "a b" strings
      (tokenizers >= 0.20 writes [a, b] pairs, which 0.19.1 refuses), and only the normalizer,
      pre-tokenizer, model, post-processor and decoder types 0.19.1 has.
  L3  Class: tokenizer_config.json's "tokenizer_class", else config.json's "tokenizer_class", else
      the fast class 4.44 maps config.json's "model_type" to. A name not ending in "Fast" means
      its Fast twin when 4.44 has one. "TokenizersBackend" (what transformers 5 writes) does not
      exist in 4.44. auto_map (remote code) is never used: without trust_remote_code 4.44 uses
      the local class, or refuses when there is none. Classes whose 4.44 behaviour is modelled
      here: see CLASSES; any other class is refused by name (a deliberate difference: 4.44 may
      load some of them).
  L4  Keyword arguments: tokenizer_config.json's keys; without "added_tokens_decoder" there (old
      saves) special_tokens_map.json's keys override them and added_tokens.json / tokenizer.json's
      added tokens are collected; special tokens named like an added token become that token;
      class defaults fill the keys still absent (e.g. LlamaTokenizerFast: "<s>", "</s>", "<unk>",
      no clean-up). A "tokenizer_file" or "fast_tokenizer_files" key makes 4.44 read another file
      than the dir's tokenizer.json, "from_slow" makes it convert the slow tokenizer: refused.
  L5  Added tokens: tokens of "added_tokens_decoder" that the backend lacks (with these exact
      flags) are added, then every special token (bos, eos, unk, sep, pad, cls, mask, additional)
      not yet an added token; consecutive special / non-special runs go to add_special_tokens /
      add_tokens. A special token missing from the vocabulary therefore gets a new id.
  L6  Class rules. GPT2/CodeGen/GPTNeoX: the pre-tokenizer's top-level add_prefix_space is set to
      the kwarg (default False). Llama/Gemma/GPTNeoX: the post-processor is rebuilt as
      [bos] $A [eos] from add_bos_token/add_eos_token (defaults True/False; GPTNeoX False/False),
      whatever tokenizer.json's post-processor says. Llama with add_prefix_space set converts from
      the slow tokenizer: refused (no sentencepiece). CodeGen with add_bos_token: refused. Qwen2:
      string special tokens become AddedToken(special, not normalized). GPT2TokenizerFast ignores
      add_bos_token (no BOS).
  L7  tokenizer.json's truncation and padding are switched off (truncation=False, no padding);
      split_special_tokens sets encode_special_tokens.
  L8  Decode: the backend's decode with special tokens kept, then, when
      clean_up_tokenization_spaces is truthy (absent: True, 4.44's default; LlamaTokenizerFast
      and GemmaTokenizerFast default to False), the ten replacements of clean_up_tokenization.

Tokenizing a step's samples (dataset.tokenize), per text, with cap_sample_len and max_sequence_len:
  T1  A text longer than cap_sample_len (0/None: no cap) is cut at the last space before that
      position (the space dropped), at exactly cap_sample_len when there is none: "capped".
  T2  ids = encode(row) with special tokens; decode(ids) != row is a round-trip failure: loss +inf.
  T3  Otherwise EOS (eos_token_id) is appended unless the row was capped (no EOS token at all makes
      the live code fail: the tokenizer is rejected).
  T4  More ids than max_sequence_len (0/None: no limit): "too long", loss +inf; never truncated.
  T5  Round-trip failures are counted over the step's whole sample list; more than
      max_tokenize_fails abandons the tokenizer for the step.
  T6  The largest id over the kept samples is checked against the model's embedding rows.
  T7  (ours, not live) The model's own tokenizer gets a time box for the step's samples (building it
      included); over it, it is refused as "too slow (N s for M samples)" and rule C3 applies.

Choosing the tokenizer of one model (validator.py), see `choose_tokenizer`:
  C1  A competition with a tokenizer tokenizes the step with it first; if that fails (too many
      failures, load error, no sample kept) the competition cannot be evaluated at all.
  C2  The model's own tokenizer is tried only when its dir holds tokenizer.json, and only when
      free_tokenizer is set or the competition has no tokenizer.
  C3  Used when it loads and passes T5; on any error the competition tokenizer is used instead (the
      model is not failed); without a competition tokenizer the model is not evaluated.
  C4  No tokenizer.json and no competition tokenizer: the model is not evaluated.
  C5  When the model's tokenizer keeps no sample at all, the live code keeps the model's (all
      +inf) samples with the competition tokenizer's largest id for the vocabulary check.

Deliberate differences: the competition's own tokenizer (role "competition") may be a transformers 5
/ tokenizers >= 0.20 save (rule L2 and the "TokenizersBackend" name are waived for it; the live
competition tokenizers are 4.x saves, so nothing changes for them); classes not in CLASSES are
refused; tokenizer files are read up to size limits; rule T7 (a tokenizer the live validator would
spend 30 minutes on, e.g. 300k normalizer replacements, is refused here instead).

The plan (L1, L3, the refusals of L4) and rules T and C are here; validator.scoring.tokenizer_build
builds the planned tokenizer (L2, L4-L8).
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import constants
from validator.core import transformers444 as t444
from validator.core.identity import file_hash

# Part of every cache key: cached ids made under other rules are never reused.
RULES_VERSION = "transformers-4.44.0/tokenizers-0.19.1:1"

Role = Literal["model", "competition"]


class TokenizerError(ValueError):
    """A tokenizer cannot be used for the step (it does not load, or too many failures)."""


class TokenizerLoadError(TokenizerError):
    """4.44 would not build this tokenizer (or the rules here do not model what it builds)."""


class TooManyFailures(TokenizerError):
    """More round-trip failures than max_tokenize_fails over the step's samples (rule T5)."""


class TooSlow(TokenizerError):
    """Tokenizing the step's samples took longer than the model tokenizer's time box (rule T7)."""


class NoTokenizer(TokenizerError):
    """No usable tokenizer for the model: it is not evaluated (rules C3, C4)."""


# --- rules L3, L4, L6: the classes -------------------------------------------------------------

_EOT = "<|endoftext|>"


@dataclass(frozen=True)
class _Class:
    """What a 4.44 fast tokenizer class does beyond PreTrainedTokenizerFast (rule L6)."""
    defaults: dict = field(default_factory=dict)  # its __init__ defaults (special tokens, clean-up)
    post_processor: tuple[bool, bool] | None = None  # rebuilds [bos] $A [eos]: (add_bos, add_eos) defaults
    prefix_space: bool = False  # sets the pre-tokenizer's add_prefix_space (default False)
    slow_on_prefix_space: bool = False  # add_prefix_space set -> from_slow (needs sentencepiece)
    refuses_bos: bool = False  # add_bos_token true -> ValueError
    wrap_special: bool = False  # str special tokens -> AddedToken(special=True, normalized=False)
    padding_side: str = "right"


_GPT2_SPECIALS = {"unk_token": _EOT, "bos_token": _EOT, "eos_token": _EOT}
CLASSES: dict[str, _Class] = {
    "PreTrainedTokenizerFast": _Class(),
    "GPT2TokenizerFast": _Class(defaults=_GPT2_SPECIALS, prefix_space=True),
    "CodeGenTokenizerFast": _Class(defaults=_GPT2_SPECIALS, prefix_space=True, refuses_bos=True),
    "GPTNeoXTokenizerFast": _Class(defaults={**_GPT2_SPECIALS, "pad_token": None}, prefix_space=True,
                                   post_processor=(False, False)),
    "LlamaTokenizerFast": _Class(defaults={"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>",
                                           "clean_up_tokenization_spaces": False},
                                 post_processor=(True, False), slow_on_prefix_space=True),
    "GemmaTokenizerFast": _Class(defaults={"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>",
                                           "pad_token": "<pad>", "clean_up_tokenization_spaces": False},
                                 post_processor=(True, False), padding_side="left"),
    "Qwen2TokenizerFast": _Class(defaults={"unk_token": _EOT, "bos_token": None, "eos_token": _EOT,
                                           "pad_token": _EOT}, wrap_special=True),
}
def _class_exists_444(name: str) -> bool:
    return name in t444.TOKENIZER_VOCAB_FILES


def resolve_class(tokenizer_config: dict, model_config: dict | None, *, role: Role = "model") -> tuple[str, str]:
    """(class name, where it came from) that AutoTokenizer 4.44 builds (rule L3); pure."""
    name = tokenizer_config.get("tokenizer_class")
    source = "tokenizer_config.json tokenizer_class"
    if name is None:
        if model_config is None:
            raise TokenizerLoadError("tokenizer_config.json names no tokenizer_class and there is no config.json "
                                     "to take it from (4.44's AutoConfig fails)")
        name = model_config.get("tokenizer_class")
        source = "config.json tokenizer_class"
        if name is None:
            model_type = model_config.get("model_type")
            if not isinstance(model_type, str) or model_type not in t444.CONFIG_MODEL_TYPES:
                raise TokenizerLoadError(f"config.json model_type {model_type!r} is unknown to transformers 4.44")
            fast = t444.TOKENIZER_CLASSES.get(model_type, (None, None))[1]
            if fast is None:
                raise TokenizerLoadError(f"transformers 4.44 has no fast tokenizer for model_type {model_type!r}")
            return fast, f"config.json model_type {model_type!r}"
    if not isinstance(name, str):
        raise TokenizerLoadError(f"{source} {name!r} is not a class name")
    if name == "TokenizersBackend" and role == "competition":
        # transformers 5 writes this name; 4.44 lacks it. Tolerated only for the competition's own
        # tokenizer (the operator's choice; the live ones are 4.x saves): a deliberate difference.
        return "PreTrainedTokenizerFast", f"{source} 'TokenizersBackend' read as PreTrainedTokenizerFast"
    if not name.endswith("Fast") and _class_exists_444(name + "Fast"):
        return name + "Fast", source
    if not _class_exists_444(name):
        hint = " (a transformers 5 class)" if name == "TokenizersBackend" else ""
        raise TokenizerLoadError(f"tokenizer class {name!r}{hint} does not exist in transformers 4.44")
    return name, source


# --- reading files ------------------------------------------------------------------------------

def read_bytes(path: Path, limit: int) -> bytes:
    size = path.stat().st_size
    if size > limit:
        raise TokenizerLoadError(f"{path.name} is {size} bytes, more than the {limit} read")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TokenizerLoadError(f"{path.name} grew past the {limit} bytes read")
    return data


def read_json(path: Path, limit: int = constants.HUB_SMALL_FILE_MAX_BYTES) -> Any:
    """The JSON in a file, or None when the file is absent."""
    if not path.is_file():
        return None
    try:
        return json.loads(read_bytes(path, limit).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerLoadError(f"{path.name}: not valid JSON ({e})") from None


def tokenizer_files_hash(path: str | Path) -> str:
    """Content hash of the files that define a tokenizer. config.json is left out: all it can
    change is the class, which is part of the cache key on its own (so models sharing a
    tokenizer share its cache entries)."""
    p = Path(path)
    digest = hashlib.sha256()
    for name in constants.TOKENIZER_FILES:
        f = p / name
        if f.is_file():
            digest.update(f"{name}:{file_hash(f)};".encode())
    return base64.b64encode(digest.digest()).decode()


# --- the plan (cheap; validator.scoring.tokenizer_build builds it) -----------------------------

@dataclass(frozen=True)
class TokenizerPlan:
    """What 4.44 would build from a dir, decided from its small files (no tokenizer.json parse)."""
    path: Path
    role: Role
    class_name: str
    class_source: str
    config: dict  # tokenizer_config.json ({} when absent)
    key: str  # cache identity: rules version, role, file hashes, class

    def describe(self) -> str:
        return f"{self.class_name} ({self.class_source})"


def plan_tokenizer(path: str | Path, *, role: Role = "model") -> TokenizerPlan:
    """Rules L1, L3 and the refusals of L4 for the dir; raises TokenizerLoadError."""
    d = Path(path)
    if not d.is_dir():
        raise TokenizerLoadError(f"{d}: not a directory")
    if not (d / "tokenizer.json").is_file():
        raise TokenizerLoadError(f"{d.name}: no tokenizer.json; transformers 4.44 without the sentencepiece package "
                                 "(as the live validator runs) cannot build a tokenizer from the other files")
    config = read_json(d / "tokenizer_config.json")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise TokenizerLoadError("tokenizer_config.json is not a JSON object")
    model_config = None
    if config.get("tokenizer_class") is None:
        model_config = read_json(d / "config.json")
        if model_config is not None and not isinstance(model_config, dict):
            raise TokenizerLoadError("config.json is not a JSON object")
    class_name, source = resolve_class(config, model_config, role=role)
    if class_name not in CLASSES:
        raise TokenizerLoadError(f"tokenizer class {class_name} ({source}): its transformers 4.44 behaviour is not "
                                 f"modelled here (modelled: {', '.join(sorted(CLASSES))})")
    for key in ("tokenizer_file", "fast_tokenizer_files"):
        if key in config:
            raise TokenizerLoadError(f"tokenizer_config.json sets {key!r}: 4.44 would read that instead of the "
                                     "dir's tokenizer.json")
    if config.get("from_slow"):
        raise TokenizerLoadError("tokenizer_config.json sets from_slow: 4.44 would convert the slow tokenizer "
                                 "(sentencepiece-based ones cannot load there) instead of reading tokenizer.json")
    key = f"{RULES_VERSION}|{role}|{tokenizer_files_hash(d)}|{class_name}"
    return TokenizerPlan(d, role, class_name, source, config, key)


# --- rules T1-T6 --------------------------------------------------------------------------------

def cap_text(text: str, cap: int | None) -> tuple[str, bool]:
    """Rule T1: (row, capped)."""
    if not cap or len(text) <= cap:
        return text, False
    cut = text.rfind(" ", 0, cap)
    return text[:cap if cut < 0 else cut], True


@dataclass
class TokenizedSample:
    sample_id: str
    ids: list[int] | None  # what the model is scored on (EOS included); None = loss +inf
    failure: str | None = None  # "roundtrip" | "too_long"; ids is None exactly when set
    capped: bool = False


@dataclass
class RowResult:
    """One text through rules T1-T4, with the details the golden data records."""
    capped: bool
    row_len: int
    round_trip_ok: bool
    eos_appended: bool
    n_tokens: int  # ids before the length check (with EOS when appended)
    ids: list[int] | None
    decoded: str | None  # what decode gave, for a round-trip failure

    @property
    def result(self) -> str:
        if not self.round_trip_ok:
            return "round_trip_failure"
        return "ok" if self.ids is not None else "too_long"

    @property
    def failure(self) -> str | None:
        return {"ok": None, "round_trip_failure": "roundtrip", "too_long": "too_long"}[self.result]


def tokenize_text(tokenizer: Any, text: str, cap_sample_len: int | None, max_sequence_len: int | None) -> RowResult:
    """Rules T1-T4 for one text. `tokenizer`: a LiveTokenizer (or LazyTokenizer)."""
    row, capped = cap_text(text, cap_sample_len)
    ids = tokenizer.encode(row)
    decoded = tokenizer.decode(ids)
    if decoded != row:
        return RowResult(capped, len(row), False, False, len(ids), None, decoded)
    if not capped:
        eos = tokenizer.eos_token_id
        if eos is None:  # live: ids + [None] fails in torch.tensor
            raise TokenizerLoadError("the tokenizer has no EOS token to append")
        ids = ids + [eos]
    kept = ids if not (max_sequence_len and len(ids) > max_sequence_len) else None
    return RowResult(capped, len(row), True, not capped, len(ids), kept, None)


def check_fails(failures: int, total: int, max_tokenize_fails: int) -> None:
    """Rule T5: raise TooManyFailures when failures exceed max_tokenize_fails."""
    if failures > max_tokenize_fails:
        raise TooManyFailures(f"more than {max_tokenize_fails} round-trip failures over the step's {total} samples "
                              "(texts that do not decode back to themselves)")


def check_time(elapsed_s: float, done: int, total: int, limit_s: float) -> None:
    """Rule T7: raise TooSlow when tokenizing `done` of `total` samples took more than limit_s."""
    if elapsed_s > limit_s:
        raise TooSlow(f"too slow ({elapsed_s:.1f} s for {done} samples; the time box is {limit_s:g} s "
                      f"for the step's {total})")


def max_token_id(rows: Iterable[TokenizedSample]) -> int | None:
    """Rule T6: the largest id over the kept samples (None when none is kept)."""
    return max((max(r.ids) for r in rows if r.ids), default=None)


# --- rules C1-C5 --------------------------------------------------------------------------------

@dataclass
class StepTokens:
    """A tokenizer's result over the step's whole sample list."""
    rows: dict[str, TokenizedSample]
    max_token_id: int | None
    class_name: str
    key: str


@dataclass
class TokenizerChoice:
    used: Literal["model", "competition"]
    reason: str
    step: StepTokens


def choose_tokenizer(model_dir: Path, competition_dir: Path | None, free_tokenizer: bool,
                     tokenize_step: Callable[[Path, Role], StepTokens]) -> TokenizerChoice:
    """Rules C1-C5. tokenize_step(dir, role) tokenizes the step's samples (T1-T5) and raises
    TokenizerError; a NoTokenizer from here means the model is not evaluated, any other
    TokenizerError that the competition tokenizer failed (the whole competition fails live)."""
    comp = None
    if competition_dir is not None:
        comp = tokenize_step(Path(competition_dir), "competition")
        if comp.max_token_id is None:
            raise TokenizerError("the competition tokenizer kept no sample of the step (live: max() of an empty "
                                 "list ends the competition's evaluation)")
    if not (Path(model_dir) / "tokenizer.json").is_file():
        if comp is None:
            raise NoTokenizer("no competition tokenizer, and no tokenizer.json in the model dir")
        return TokenizerChoice("competition", "no tokenizer.json in the model dir: the model tokenizer is not tried "
                               "(4.44 without the sentencepiece package could not build one from tokenizer.model)", comp)
    if comp is not None and not free_tokenizer:
        return TokenizerChoice("competition", "free_tokenizer is off: the competition tokenizer is used", comp)
    try:
        own = tokenize_step(Path(model_dir), "model")
    except TokenizerError as e:
        if comp is None:
            raise NoTokenizer(f"no competition tokenizer, and the model tokenizer failed: {e}") from e
        return TokenizerChoice("competition", f"model tokenizer rejected: {e}", comp)
    reason = f"model tokenizer used ({own.class_name}): at most max_tokenize_fails round-trip failures"
    if own.max_token_id is None:
        own.max_token_id = comp.max_token_id if comp is not None else None
        reason += "; it kept no sample, so the competition tokenizer's largest id is checked (as live)"
    return TokenizerChoice("model", reason, own)
