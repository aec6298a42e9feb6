"""How the live validator reads a model repo: which files it downloads, which class it builds.

The live subnet-29 validator (coldint_validator v1.0.16) downloads a model with
`AutoTokenizer.from_pretrained(repo, revision=commit)` (errors ignored) and then
`AutoModelForCausalLM.from_pretrained(repo, revision=commit, use_safetensors=True)` into one
cache dir, under transformers 4.44.0, and hashes the snapshot those two calls leave. This
module replays what those calls fetch, from the repo's file list and its few small JSON files,
so every validator (and the miner who publishes) hashes exactly the same files:

- config.json; generation_config.json when present (every 4.44 causal LM can generate);
- model.safetensors, else model.safetensors.index.json and every shard its weight_map names;
- tokenizer_config.json, special_tokens_map.json, added_tokens.json, tokenizer.json and the
  vocab files of the tokenizer class 4.44 picks: `tokenizer_class` of tokenizer_config.json,
  else of config.json (tried with "Fast" appended first), else the class registered for the
  config's model_type; when that lookup fails in 4.44 no further tokenizer file is fetched.

Anything else in the repo (.gitattributes, README.md, *.py, pytorch_model.bin, original/...)
is neither downloaded nor hashed, and is no reason to refuse. Refusals (RepoRefused) are ours
where the live validator would fail to load the model anyway, plus our safety rules: weights
are safetensors only, an index may only name plain files of this repo, and no pickle-capable
file is ever in the set.

The class rule: AutoModelForCausalLM builds the class registered for `model_type`
(`architectures` and `auto_map` are not used); the live validator registers its own Sliced
classes for llama, phi3 and phi. A competition admits the model when any of its model_types
is a substring of the class's printed form.

Pure: no I/O, no transformers import; the tables are transformers 4.44's (transformers444).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from packaging.version import InvalidVersion, Version

import constants
from validator.core import transformers444 as tf444

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
# The JSON files the rule reads, in the order to fetch them (the index only without SAFE_WEIGHTS).
SMALL_FILES = (TOKENIZER_CONFIG, CONFIG, SAFE_INDEX)
# Formats that can carry pickled Python objects (arbitrary code on load): never downloaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
_VERSIONED_TOKENIZER = re.compile(r"tokenizer\.(.*)\.json")  # 4.44's _re_tokenizer_file


class RepoRefused(ValueError):
    """The repo cannot be accepted; `reason` is a hub FailureReason value."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class DownloadSet:
    files: tuple[str, ...]  # what is downloaded and hashed, sorted
    requested_absent: tuple[str, ...]  # asked for by the two from_pretrained calls, not in the repo
    model_type: str
    tokenizer_class: str | None  # the class AutoTokenizer loads; None when 4.44 fails before


class _TokenizerFails(Exception):
    """4.44's AutoTokenizer raises here: it fetches nothing more (the validator ignores it)."""


def small_files_needed(repo_files: Iterable[str]) -> tuple[str, ...]:
    """Which of SMALL_FILES the caller must read (those in the repo) before download_set."""
    names = set(repo_files)
    return tuple(n for n in SMALL_FILES if n in names and not (n == SAFE_INDEX and SAFE_WEIGHTS in names))


def download_set(repo_files: Iterable[str], small_files: Mapping[str, bytes]) -> DownloadSet:
    """The exact files a live validator downloads (and hashes) from a repo holding `repo_files`
    (paths relative to the repo root), given the bytes of its small_files_needed(). Raises
    RepoRefused (reason "constraint" or "unsafe_format")."""
    names = set(repo_files)
    missing = [n for n in small_files_needed(names) if n not in small_files]
    if missing:
        raise ValueError(f"download_set: the content of {missing} is needed (see small_files_needed)")
    requested: list[str] = []
    tokenizer_class = _tokenizer_request(names, small_files, requested)
    model_type = _model_request(names, small_files, requested)
    files = tuple(sorted(set(requested) & names))
    pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:  # a guard on the tables: nothing pickle-capable is ever fetched
        raise RepoRefused("unsafe_format", f"{pickles[0]} would be loaded and can hold pickled code")
    return DownloadSet(files, tuple(sorted(set(requested) - names)), model_type, tokenizer_class)


# --- the model: AutoConfig + AutoModelForCausalLM.from_pretrained(use_safetensors=True) ---------


class _BadJson(Exception):
    """Not readable JSON: transformers raises on it."""


def _parse(name: str, small_files: Mapping[str, bytes]) -> Any:
    data = small_files[name]
    if len(data) > constants.HUB_SMALL_FILE_MAX_BYTES:  # bounded before parsing; real ones are far smaller
        raise RepoRefused("constraint", f"{name} is {len(data)} bytes, more than HUB_SMALL_FILE_MAX_BYTES = "
                                        f"{constants.HUB_SMALL_FILE_MAX_BYTES}")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
        raise _BadJson(f"{name}: not readable JSON ({type(exc).__name__}: {str(exc)[:120]})") from None


def _json(name: str, small_files: Mapping[str, bytes]) -> Any:
    """Parsed JSON of a file the model needs: RepoRefused(constraint) when unreadable."""
    try:
        return _parse(name, small_files)
    except _BadJson as exc:
        raise RepoRefused("constraint", str(exc)) from None


def config_model_type(cfg: Any) -> str:
    """The model_type AutoConfig builds from a config.json dict; RepoRefused(constraint) when
    4.44 would not build a causal LM from it."""
    if not isinstance(cfg, dict):
        raise RepoRefused("constraint", f"{CONFIG}: not a JSON object")
    if "configuration_files" in cfg:  # 4.44 would load another, versioned config file instead
        raise RepoRefused("constraint", f"{CONFIG}: versioned configuration_files are not supported")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise RepoRefused("constraint", f"{CONFIG}: no model_type")
    if model_type not in tf444.CONFIG_MODEL_TYPES or model_type not in tf444.CAUSAL_LM_CLASSES:
        raise RepoRefused("constraint", f"{CONFIG}: model_type {model_type!r} has no causal LM class built into "
                                        f"transformers {tf444.VERSION} (remote code is never run)")
    return model_type


def _model_request(names: set[str], small_files: Mapping[str, bytes], requested: list[str]) -> str:
    requested.append(CONFIG)
    if CONFIG not in names:
        raise RepoRefused("constraint", f"no {CONFIG} at the top level")
    model_type = config_model_type(_json(CONFIG, small_files))
    requested.append(SAFE_WEIGHTS)
    if SAFE_WEIGHTS not in names:
        requested.append(SAFE_INDEX)
        if SAFE_INDEX not in names:
            raise RepoRefused("unsafe_format", f"no {SAFE_WEIGHTS} or {SAFE_INDEX}: weights must be safetensors")
        requested.extend(_shards(_json(SAFE_INDEX, small_files), names))
    requested.append(GENERATION_CONFIG)  # fetched after the weights load; absent is fine
    return model_type


def _shards(index: Any, names: set[str]) -> list[str]:
    """The shard files an index names, each a plain file of this repo (never another snapshot's)."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or "metadata" not in index:
        raise RepoRefused("unsafe_format", f"{SAFE_INDEX}: not a safetensors index (weight_map and metadata)")
    shards = set()
    for tensor, shard in weight_map.items():
        if (not isinstance(shard, str) or not shard or "/" in shard or "\\" in shard or shard in (".", "..")
                or shard not in names):
            raise RepoRefused("unsafe_format", f"{SAFE_INDEX}: tensor {str(tensor)[:80]!r} maps to {shard!r}, "
                                               "not a plain file of this repo")
        if not shard.endswith(".safetensors"):
            raise RepoRefused("unsafe_format", f"{SAFE_INDEX}: shard {shard!r} is not a .safetensors file")
        shards.add(shard)
    return sorted(shards)


# --- the tokenizer: AutoTokenizer.from_pretrained, whose errors the validator ignores ----------


def _tokenizer_request(names: set[str], small_files: Mapping[str, bytes], requested: list[str]) -> str | None:
    """Append what AutoTokenizer fetches to `requested`; the class it loads, or None."""
    requested.append(TOKENIZER_CONFIG)
    try:
        tok_cfg = _tokenizer_config(names, small_files)
        cls = _tokenizer_class(names, small_files, tok_cfg)
        if cls in tf444.UNSUPPORTED_TOKENIZERS:
            raise RepoRefused("unsafe_format", f"tokenizer class {cls} loads nested or pickled files")
        fast_file = _fast_tokenizer_file(tok_cfg)
    except _TokenizerFails:
        return None
    files = [*tf444.TOKENIZER_VOCAB_FILES[cls], *tf444.TOKENIZER_COMMON_FILES]
    files = [fast_file if f == "tokenizer.json" else f for f in files]
    unknown = [f for f in files if f not in constants.TOKENIZER_FILES and f != fast_file]
    if unknown:  # the tables and the one list of tokenizer names must agree
        raise RepoRefused("unsafe_format", f"tokenizer class {cls} asks for unknown files {unknown}")
    requested.extend(files)
    return cls


def _tokenizer_config(names: set[str], small_files: Mapping[str, bytes]) -> dict:
    if TOKENIZER_CONFIG not in names:
        return {}
    try:
        cfg = _parse(TOKENIZER_CONFIG, small_files)
    except _BadJson:
        raise _TokenizerFails() from None
    if not isinstance(cfg, dict):
        raise _TokenizerFails()
    return cfg


def _loads(name: str) -> bool:
    return name in tf444.TOKENIZER_VOCAB_FILES or name in tf444.UNSUPPORTED_TOKENIZERS


def _tokenizer_class(names: set[str], small_files: Mapping[str, bytes], tok_cfg: dict) -> str:
    """4.44's AutoTokenizer class choice (use_fast=True, trust_remote_code unset)."""
    class_name = tok_cfg.get("tokenizer_class")
    remote = _remote_tokenizer(tok_cfg)
    model_type = None
    if class_name is None:  # AutoConfig.from_pretrained: config.json must load
        cfg = _tokenizer_model_config(names, small_files)
        model_type = cfg["model_type"]
        class_name = cfg.get("tokenizer_class")
        if "auto_map" in cfg:  # read as 4.44 does: `"AutoTokenizer" in config.auto_map`, then indexed
            auto_map = cfg["auto_map"]
            try:
                named = "AutoTokenizer" in auto_map
            except TypeError:
                raise _TokenizerFails() from None
            if named:
                if not isinstance(auto_map, dict):
                    raise _TokenizerFails()
                remote = auto_map["AutoTokenizer"] is not None
    if class_name is not None and not isinstance(class_name, str):
        raise _TokenizerFails()
    local = (model_type is not None and model_type in tf444.TOKENIZER_CLASSES) or (
        class_name is not None and (_loads(class_name) or _loads(class_name + "Fast")))
    if remote and not local:  # would need the repo's code: refused by transformers, nothing fetched
        raise _TokenizerFails()
    if class_name is not None:
        if not class_name.endswith("Fast") and _loads(class_name + "Fast"):
            return class_name + "Fast"
        if _loads(class_name):
            return class_name
        raise _TokenizerFails()  # unknown, or a dummy (its backend, e.g. sentencepiece, is missing)
    slow, fast = tf444.TOKENIZER_CLASSES.get(model_type, (None, None))
    chosen = fast or slow
    if chosen is None or not _loads(chosen):
        raise _TokenizerFails()
    return chosen


def _tokenizer_model_config(names: set[str], small_files: Mapping[str, bytes]) -> dict:
    """config.json as AutoConfig.from_pretrained needs it (a known model_type), else it fails."""
    if CONFIG not in names:
        raise _TokenizerFails()
    try:
        cfg = _parse(CONFIG, small_files)
    except _BadJson:
        raise _TokenizerFails() from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str) \
            or cfg["model_type"] not in tf444.CONFIG_MODEL_TYPES:
        raise _TokenizerFails()
    return cfg


def _remote_tokenizer(tok_cfg: dict) -> bool:
    """Whether tokenizer_config.json's auto_map names a tokenizer in the repo's code."""
    if "auto_map" not in tok_cfg:
        return False
    auto_map = tok_cfg["auto_map"]
    if isinstance(auto_map, (list, tuple)):
        return True
    if isinstance(auto_map, dict):
        return auto_map.get("AutoTokenizer") is not None
    raise _TokenizerFails()  # 4.44 calls .get on it and fails


def _fast_tokenizer_file(tok_cfg: dict) -> str:
    """tokenizer.json, or the versioned file `fast_tokenizer_files` picks for 4.44."""
    if "fast_tokenizer_files" not in tok_cfg:
        return "tokenizer.json"
    listed = tok_cfg["fast_tokenizer_files"]
    if isinstance(listed, dict):
        listed = list(listed)
    if not isinstance(listed, (list, tuple, str)) or not all(isinstance(f, str) for f in listed):
        raise _TokenizerFails()
    versions = {}
    for name in listed:
        found = _VERSIONED_TOKENIZER.search(name)
        if found:
            versions[found.group(1)] = name
    chosen = "tokenizer.json"
    try:
        for v in sorted(versions):
            if Version(v) > Version(tf444.VERSION):
                break
            chosen = versions[v]
    except InvalidVersion:
        raise _TokenizerFails() from None
    if "/" in chosen or "\\" in chosen or chosen in (".", ".."):
        raise RepoRefused("unsafe_format", f"{TOKENIZER_CONFIG}: fast_tokenizer_files picks {chosen!r}, "
                                           "not a top-level file")
    return chosen


# --- the class rule --------------------------------------------------------------------------


def live_model_class(model_type: str) -> str:
    """The class the live validator builds for `model_type`, as str(type(model)) prints it."""
    cls = tf444.LIVE_CAUSAL_LM_OVERRIDES.get(model_type) or tf444.CAUSAL_LM_CLASSES.get(model_type)
    if cls is None:
        raise RepoRefused("constraint", f"model_type {model_type!r} has no causal LM class in transformers "
                                        f"{tf444.VERSION}")
    return cls


def model_type_allowed(printed_class: str, model_types: Iterable[str]) -> bool:
    """The live rule: some entry of the competition's model_types is a substring of the
    printed class (so "LlamaForCausalLM" admits SlicedLlamaForCausalLM); [] admits nothing."""
    return any(isinstance(t, str) and t in printed_class for t in model_types)
