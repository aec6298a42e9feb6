"""competitions.json: schema, merge of `default`, lenient parsing as live.

Format (kept compatible with the live subnet):
    { "default": {...}, "c00": {...}, "_note": "...", ... }
Keys starting with `_` are comments. `default` is merged under every competition (a
competition's own keys win). Required after the merge: reward, model_types, parameters,
model_size, dataset; the other fields default from `constants`.

Parsed as leniently as the live validator reads it, and saying what was coerced: an
integral float (4.2e10) is an int, 0/1 are booleans, a competition id is any text without
':' (the commitment separator), model_types [] admits nothing, all rewards 0 means the
subnet is paused (a valid config: `CompetitionsFile.paused`). A bad value in one
competition disables that competition only (its reason in `disabled` and `problems`);
unknown keys (the live file's "eval_pages") are kept as extras and named once in the log.

`default` also carries validator-wide keys (rows_per_page, eval_samples, db_*,
discard_winrate, use_eval_cache), read into `ValidatorDefaults`; `effective()` lays
command-line overrides over them.

Pure: where the file comes from (URLs, the shipped copy, refreshing) is
`validator.adapters.competitions_source`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

import constants

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("reward", "model_types", "parameters", "model_size", "dataset")
DEFAULT_KEY = "default"
COMMENT_KEYS = frozenset({"comment"})  # informational, as in the live file


class CompetitionsError(ValueError):
    """competitions.json is missing, unreadable or unusable as a whole (the message says where)."""


class Competition(BaseModel):
    # strict: "5" is not an int and true is not a number; a config typo must not be coerced.
    # The lenient coercions live does (4.2e10 -> int, 0/1 -> bool) happen before, and are reported.
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    id: str
    reward: float = Field(ge=0)
    model_types: list[str]  # [] is allowed: the competition admits no model
    parameters: int = Field(gt=0)
    model_size: int = Field(gt=0)
    dataset: str = Field(min_length=1)
    tokenizer: Optional[str] = None
    free_tokenizer: bool = False
    max_sequence_len: int = Field(default=constants.MAX_SEQUENCE_LEN, gt=0)
    cap_sample_len: int = Field(default=constants.CAP_SAMPLE_LEN, gt=0)
    max_tokenize_fails: int = Field(default=constants.MAX_TOKENIZE_FAILS, ge=0)
    group_samples: int = Field(default=constants.GROUP_SAMPLES, gt=0)
    advantage_initial: float = Field(default=constants.ADVANTAGE_INITIAL, ge=0, lt=1)
    advantage_decay: float = Field(default=constants.ADVANTAGE_DECAY, gt=0, le=1)
    weight_skew_factor: float = Field(default=constants.WEIGHT_SKEW_FACTOR, gt=0)
    pool_size: int = Field(default=constants.POOL_SIZE, gt=0)
    pend_size: int = Field(default=constants.PEND_SIZE, ge=0)

    _configured: dict = PrivateAttr(default_factory=dict)

    @property
    def configured(self) -> dict[str, Any]:
        """The competition's keys as the file gives them after merging `default` (the dict the
        live validator holds for it), coercions applied; without a file, the fields."""
        if self._configured:
            return dict(self._configured)
        return self.model_dump(exclude={"id"})

    @property
    def scoring_key(self) -> str:
        """A short digest of what a sample's loss depends on besides the model (tokenizer,
        caps): cached losses are keyed by it, so changing any of them rescores everyone
        instead of mixing losses computed under two rules."""
        rule = [self.tokenizer, self.free_tokenizer, self.max_sequence_len, self.cap_sample_len]
        return hashlib.sha256(json.dumps(rule).encode()).hexdigest()[:12]

    @field_validator("model_types")
    @classmethod
    def _names_non_empty(cls, value: list[str]) -> list[str]:
        if any(not name.strip() for name in value):
            raise ValueError("architecture names must be non-empty strings")
        return value

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_non_empty(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not value.strip():
            raise ValueError("must be a non-empty path or hub repo id (or null)")
        return value

    @field_validator("reward", "advantage_initial", "advantage_decay", "weight_skew_factor")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


# --- validator-wide keys of `default` ----------------------------------------------------------


@dataclass(frozen=True)
class ValidatorDefaults:
    """Validator-wide settings competitions.json's `default` may override (live:
    `constants.defaults` updated by the file's default block). Units as live."""

    rows_per_page: int = constants.ROWS_PER_PAGE  # consecutive rows per sampled page
    eval_samples: int = constants.EVAL_SAMPLES  # samples per step
    db_min_samples: int = constants.DB_MIN_SAMPLES  # sample database: filled to this first
    db_max_samples: int = constants.DB_MAX_SAMPLES  # ... never holds more
    db_extend_samples: int = constants.DB_EXTEND_SAMPLES  # ... grows by this many
    db_extend_interval: float = float(constants.DB_EXTEND_INTERVAL_S)  # ... every this many seconds
    discard_winrate: float = constants.DISCARD_WINRATE  # 0 disables discarding
    use_eval_cache: bool = constants.USE_EVAL_CACHE


# key -> (kind, lowest allowed, highest allowed)
_SETTING_RULES: dict[str, tuple[str, float, float]] = {
    "rows_per_page": ("int", 1, math.inf),
    "eval_samples": ("int", 1, math.inf),
    "db_min_samples": ("int", 1, math.inf),
    "db_max_samples": ("int", 1, math.inf),
    "db_extend_samples": ("int", 0, math.inf),
    "db_extend_interval": ("float", 0, math.inf),
    "discard_winrate": ("float", 0, 1),
    "use_eval_cache": ("bool", 0, 1),
}
SETTING_KEYS = frozenset(_SETTING_RULES)

_INT_FIELDS = frozenset({"parameters", "model_size", "max_sequence_len", "cap_sample_len",
                         "max_tokenize_fails", "group_samples", "pool_size", "pend_size"})
_BOOL_FIELDS = frozenset({"free_tokenizer"})
_KNOWN_KEYS = frozenset(Competition.model_fields) - {"id"} | SETTING_KEYS | COMMENT_KEYS


def _kind_of(key: str) -> Optional[str]:
    if key in _INT_FIELDS:
        return "int"
    if key in _BOOL_FIELDS:
        return "bool"
    rule = _SETTING_RULES.get(key)
    return rule[0] if rule else None


def _coerce(kind: Optional[str], value: Any) -> tuple[Any, bool]:
    """(value, coerced?) under live's leniency: integral float -> int, 0/1 -> bool."""
    if kind == "int" and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value), True
    if kind == "bool" and not isinstance(value, bool) and isinstance(value, (int, float)) and value in (0, 1):
        return bool(value), True
    return value, False


def _coerce_block(block: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    out = {}
    for key, value in block.items():
        out[key], coerced = _coerce(_kind_of(key), value)
        if coerced:
            problems.append(f"competition {where}: key {key!r}: {value!r} read as {out[key]!r}")
    return out


def _check_setting(key: str, value: Any) -> Any:
    """The value of a validator-wide setting, or ValueError saying why not."""
    kind, lo, hi = _SETTING_RULES[key]
    value, _ = _coerce(kind, value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true/false (or 0/1), got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (kind == "int" and not isinstance(value, int)):
        raise ValueError(f"{key}: expected {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    if not (math.isfinite(value) and lo <= value <= hi):
        bound = f">= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
        raise ValueError(f"{key}: must be {bound}, got {value!r}")
    return float(value) if kind == "float" else value


def _check_consistent(settings: ValidatorDefaults) -> None:
    if settings.db_min_samples > settings.db_max_samples:
        raise ValueError(f"db_min_samples ({settings.db_min_samples}) must not exceed "
                         f"db_max_samples ({settings.db_max_samples})")


def parse_settings(default: Mapping[str, Any]) -> tuple[ValidatorDefaults, list[str]]:
    """Validator-wide settings from a `default` block; a bad value keeps our default and is
    listed (it must not stop the competitions from loading)."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key in _SETTING_RULES:
        if key not in default:
            continue
        try:
            values[key] = _check_setting(key, default[key])
        except ValueError as exc:
            problems.append(f"competition {DEFAULT_KEY}: {exc}; using {getattr(ValidatorDefaults(), key)!r}")
    settings = ValidatorDefaults(**values)
    try:
        _check_consistent(settings)
    except ValueError as exc:
        base = ValidatorDefaults()
        settings = replace(settings, db_min_samples=base.db_min_samples, db_max_samples=base.db_max_samples)
        problems.append(f"competition {DEFAULT_KEY}: {exc}; using {base.db_min_samples} and {base.db_max_samples}")
    return settings, problems


def effective(settings: ValidatorDefaults, overrides: Mapping[str, Any]) -> ValidatorDefaults:
    """`settings` with command-line overrides laid over them; None means "not given".
    An unknown key or a bad value raises ValueError naming it (a flag error stops the start)."""
    known = {f.name for f in fields(ValidatorDefaults)}
    values = {}
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"{key}: not a validator-wide setting (known: {', '.join(sorted(known))})")
        if value is not None:
            values[key] = _check_setting(key, value)
    out = replace(settings, **values)
    _check_consistent(out)
    return out


# --- the file -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompetitionsFile:
    """A parsed competitions.json: the competitions in force and everything worth saying."""

    competitions: dict[str, Competition]
    disabled: dict[str, str] = field(default_factory=dict)  # id -> why it is not in force
    settings: ValidatorDefaults = field(default_factory=ValidatorDefaults)
    problems: tuple[str, ...] = ()  # coercions, disabled competitions, bad settings
    unknown_keys: tuple[str, ...] = ()  # kept as extras, used by nothing here
    default: dict[str, Any] = field(default_factory=dict)

    @property
    def paused(self) -> bool:
        """Every reward is 0: the subnet pays no competition (valid; live sets no miner weight)."""
        return all(c.reward == 0 for c in self.competitions.values())


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "?"
    if error["type"] == "missing":
        return f"key {key!r}: required key missing (after merging {DEFAULT_KEY!r})"
    return f"key {key!r}: {error['msg']} (got {error.get('input')!r})"


def _parse_one(cid: str, entry: Any, default: dict, problems: list[str]) -> Competition:
    if not isinstance(entry, dict):
        raise CompetitionsError(f"competition {cid}: expected a JSON object, got {type(entry).__name__}")
    if ":" in cid:
        raise CompetitionsError(f"competition {cid!r}: the id must not contain ':' (the commitment separator)")
    merged = {**default, **_coerce_block(entry, cid, problems)}
    try:
        comp = Competition(**{**merged, "id": cid})
    except ValidationError as exc:
        raise CompetitionsError("; ".join(f"competition {cid}: {_describe(e)}" for e in exc.errors())) from None
    comp._configured = merged
    return comp


_named_unknown: set[str] = set()  # unknown keys already named in this process's log


def parse_config(data: Any) -> CompetitionsFile:
    """Validate a decoded competitions.json. A competition with a bad value is disabled (and
    listed); CompetitionsError only when the file as a whole is unusable: not an object,
    `default` not an object, or no competition left in force."""
    if not isinstance(data, dict):
        raise CompetitionsError(f"competitions: expected a JSON object at the top level, got {type(data).__name__}")
    default = data.get(DEFAULT_KEY, {})
    if not isinstance(default, dict):
        raise CompetitionsError(f"competition {DEFAULT_KEY}: expected a JSON object, got {type(default).__name__}")
    problems: list[str] = []
    default = _coerce_block(default, DEFAULT_KEY, problems)
    settings, setting_problems = parse_settings(default)
    problems += setting_problems
    competitions: dict[str, Competition] = {}
    disabled: dict[str, str] = {}
    for cid, entry in data.items():
        if not isinstance(cid, str):  # only possible for data built in Python, never from JSON
            raise CompetitionsError(f"competitions: key {cid!r} is not a string")
        if cid == DEFAULT_KEY or cid.startswith("_") or not cid:  # live skips '' and '_...' too
            continue
        try:
            competitions[cid] = _parse_one(cid, entry, default, problems)
        except CompetitionsError as exc:
            disabled[cid] = str(exc)
            problems.append(f"{exc}; competition {cid} is disabled")
    if not competitions:
        why = "; ".join(disabled.values()) or "only 'default' and '_' comment keys"
        raise CompetitionsError(f"competitions: no competition in force ({why})")
    unknown = sorted({k for c in competitions.values() for k in c.configured
                      if k not in _KNOWN_KEYS and not k.startswith("_")})
    new = [k for k in unknown if k not in _named_unknown]
    if new:
        log.info("competitions.json: keys this validator does not use, kept as they are: %s", ", ".join(new))
        _named_unknown.update(new)
    return CompetitionsFile(competitions, disabled, settings, tuple(problems), tuple(unknown), default)


def parse_competitions(data: Any) -> dict[str, Competition]:
    """The competitions in force in a decoded competitions.json (see `parse_config`)."""
    parsed = parse_config(data)
    for problem in parsed.problems:
        log.warning("%s", problem)
    return parsed.competitions
