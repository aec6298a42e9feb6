"""competitions.json: schema, merge of `default`, loading from a file or an https URL.

Format (kept compatible with the live subnet):
    { "default": {...}, "c00": {...}, "_note": "...", ... }
Keys starting with `_` are comments. `default` is merged under every competition (a
competition's own keys win). Required after the merge: reward, model_types, parameters,
model_size, dataset; the other fields default from `constants`. Unknown keys (e.g.
"comment", "eval_pages") are kept as extras, since the live file carries them.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import constants

REQUIRED_KEYS = ("reward", "model_types", "parameters", "model_size", "dataset")
DEFAULT_KEY = "default"
# Same alphabet as the commitment's competition field (validator/identity.py), so every
# competition can be committed to.
_COMPETITION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LOOPBACK_NAMES = {"localhost"}


class CompetitionsError(ValueError):
    """competitions.json is missing, unreadable or malformed (the message says where)."""


class Competition(BaseModel):
    # strict: "5" is not an int and true is not a number; a config typo must not be coerced.
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    id: str
    reward: float = Field(ge=0)
    model_types: list[str] = Field(min_length=1)
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
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        return value


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "?"
    if error["type"] == "missing":
        return f"key {key!r}: required key missing (after merging {DEFAULT_KEY!r})"
    return f"key {key!r}: {error['msg']} (got {error.get('input')!r})"


def _parse_one(cid: str, entry: Any, default: dict) -> Competition:
    if not isinstance(entry, dict):
        raise CompetitionsError(f"competition {cid}: expected a JSON object, got {type(entry).__name__}")
    if not _COMPETITION_ID.match(cid):
        raise CompetitionsError(f"competition {cid!r}: the id must match [A-Za-z0-9_-]{{1,64}}")
    merged = {**default, **entry, "id": cid}
    try:
        return Competition(**merged)
    except ValidationError as exc:
        details = "; ".join(f"competition {cid}: {_describe(e)}" for e in exc.errors())
        raise CompetitionsError(details) from None


def parse_competitions(data: Any) -> dict[str, Competition]:
    """Validate a decoded competitions.json; raises CompetitionsError naming competition and key."""
    if not isinstance(data, dict):
        raise CompetitionsError(f"competitions: expected a JSON object at the top level, got {type(data).__name__}")
    default = data.get(DEFAULT_KEY, {})
    if not isinstance(default, dict):
        raise CompetitionsError(f"competition {DEFAULT_KEY}: expected a JSON object, got {type(default).__name__}")
    out: dict[str, Competition] = {}
    for cid, entry in data.items():
        if not isinstance(cid, str):  # only possible for data built in Python, never from JSON
            raise CompetitionsError(f"competitions: key {cid!r} is not a string")
        if cid == DEFAULT_KEY or cid.startswith("_"):
            continue
        out[cid] = _parse_one(cid, entry, default)
    if not out:
        raise CompetitionsError("competitions: no competition defined (only 'default' and '_' comment keys)")
    if sum(c.reward for c in out.values()) <= 0:
        raise CompetitionsError("competitions: every reward is 0; at least one competition needs reward > 0")
    return out


def _is_loopback(host: Optional[str]) -> bool:
    if not host:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fetch_url(url: str, timeout: float) -> bytes:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "http" and not _is_loopback(parsed.hostname):
        # Plain http is only for local setups and tests; anything remote must be https so
        # a man in the middle cannot rewrite rewards.
        raise CompetitionsError(
            f"competitions URL {url}: plain http is only allowed on loopback (127.0.0.1, localhost); use https"
        )
    request = urllib.request.Request(url, headers={"User-Agent": "coldint-validator"})
    # a loopback server is never reached through an HTTP(S)_PROXY from the environment
    handlers = [urllib.request.ProxyHandler({})] if _is_loopback(parsed.hostname) else []
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as response:
            body = response.read(constants.COMPETITIONS_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise CompetitionsError(f"competitions URL {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CompetitionsError(f"competitions URL {url}: could not fetch ({reason})") from None
    if len(body) > constants.COMPETITIONS_MAX_BYTES:
        raise CompetitionsError(f"competitions URL {url}: more than {constants.COMPETITIONS_MAX_BYTES} bytes")
    return body


def _read_file(path: Path) -> bytes:
    try:
        if path.stat().st_size > constants.COMPETITIONS_MAX_BYTES:
            raise CompetitionsError(f"competitions file {path}: more than {constants.COMPETITIONS_MAX_BYTES} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise CompetitionsError(f"competitions file {path}: not found") from None
    except IsADirectoryError:
        raise CompetitionsError(f"competitions file {path}: is a directory") from None
    except OSError as exc:
        raise CompetitionsError(f"competitions file {path}: cannot read ({exc.strerror})") from None


def load_competitions(location: str | Path, timeout: float = constants.COMPETITIONS_TIMEOUT_S) -> dict[str, Competition]:
    """Load and validate competitions.json from a file path or an https:// URL
    (http:// only on loopback)."""
    text = str(location)
    scheme = urllib.parse.urlparse(text).scheme.lower() if "://" in text else ""
    if scheme in ("https", "http"):
        raw, what = _fetch_url(text, timeout), f"competitions URL {text}"
    elif scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(text).path))
        raw, what = _read_file(path), f"competitions file {path}"
    elif scheme:
        raise CompetitionsError(f"competitions location {text}: unsupported scheme {scheme!r} (use a path or https://)")
    else:
        path = Path(text).expanduser()
        raw, what = _read_file(path), f"competitions file {path}"
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CompetitionsError(f"{what}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise CompetitionsError(f"{what}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    try:
        return parse_competitions(data)
    except CompetitionsError as exc:
        raise CompetitionsError(f"{what}: {exc}") from None


class CompetitionsConfig:
    """The competitions in force, reloadable; a failed reload keeps the last good config
    (a validator must not stop because GitHub hiccupped or someone pushed a typo)."""

    def __init__(self, location: str | Path, timeout: float = constants.COMPETITIONS_TIMEOUT_S,
                 refresh_s: float | None = None) -> None:
        self.location = str(location)
        self.timeout = timeout
        self.refresh_s = constants.COMPETITIONS_REFRESH_S if refresh_s is None else refresh_s
        self.last_error: Optional[str] = None
        self.loaded_at: Optional[float] = None  # wall-clock time of the last good load
        self.attempted_at: Optional[float] = None
        self._competitions: Optional[dict[str, Competition]] = None
        self.reload()

    def reload(self) -> bool:
        """Load again; True when the new config is in force, False when the old one is kept."""
        self.attempted_at = time.time()
        try:
            competitions = load_competitions(self.location, self.timeout)
        except CompetitionsError as exc:
            self.last_error = str(exc)
            return False
        self._competitions = competitions
        self.loaded_at = self.attempted_at
        self.last_error = None
        return True

    def maybe_reload(self, now: Optional[float] = None) -> bool:
        """Reload when `refresh_s` has passed since the last attempt; True if a new config is in force."""
        now = time.time() if now is None else now
        if self.attempted_at is not None and now - self.attempted_at < self.refresh_s:
            return False
        return self.reload()

    @property
    def loaded(self) -> bool:
        return self._competitions is not None

    @property
    def competitions(self) -> Optional[dict[str, Competition]]:
        """The config in force; None only when no load has ever succeeded (see `last_error`)."""
        return None if self._competitions is None else dict(self._competitions)

    def require(self) -> dict[str, Competition]:
        """The config in force, or CompetitionsError with the reason none ever loaded."""
        if self._competitions is None:
            raise CompetitionsError(f"no valid competitions loaded from {self.location}: {self.last_error}")
        return dict(self._competitions)
