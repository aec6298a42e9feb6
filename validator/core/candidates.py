"""benchmark.json's schema: local candidate models a miner injects into the evaluation.

Two forms, per entry:
- ours: `{ "<id>": {"competition": "c00", "path": "/models/mine", "label": "my v2", "block": 123?} }`
- live's (benchmark_example.json of coldint_validator, read by `load_benchmark_config`):
  integer uid keys, an optional `hotkey`, `block` defaulting to 2**31. Such an entry gets
  `uid` set; its label defaults to the path's last part, as live.
`block` absent (or live's 2**31) stays None here: no advantage, evaluated last, which is
what live's 2**31 amounts to; `BenchmarkEntry.live_block` gives live's number.
Keys starting with `_` are comments. A bad entry is reported (its id and why) and skipped;
the rest run. The schema only: the file is read by validator.adapters.candidates.
"""
from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import constants

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_UID = re.compile(r"^[0-9]{1,5}$")  # live: int(key)


class BenchmarkEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    competition: str = Field(min_length=1)
    path: Path
    label: str | None = None
    block: int | None = Field(default=None, ge=0)
    hotkey: str | None = Field(default=None, min_length=1, max_length=64)  # live form: copy checks use it
    uid: int | None = Field(default=None, ge=0)  # set from a live-form key, never read from the entry

    @field_validator("path")
    @classmethod
    def _path_is_model_dir(cls, v: Path) -> Path:
        # pydantic turns only ValueError/AssertionError into a per-entry error: anything else the
        # filesystem raises (unknown ~user: RuntimeError, no permission: OSError) would escape it
        try:
            return _model_dir(v)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"cannot use {v}: {e}") from e

    @field_validator("block")
    @classmethod
    def _live_no_block(cls, v: int | None) -> int | None:
        return None if v is not None and v >= constants.BENCHMARK_NO_BLOCK else v

    @property
    def live_block(self) -> int:
        """The block live's validator uses for this entry (2**31 when none is given)."""
        return constants.BENCHMARK_NO_BLOCK if self.block is None else self.block


def _model_dir(v: Path) -> Path:
    """`v` expanded and resolved, if it is a model directory (has config.json); else ValueError."""
    v = v.expanduser()
    if not v.is_dir():
        raise ValueError(f"{v} is not a directory")
    if not (v / "config.json").is_file():
        raise ValueError(f"{v} has no config.json")
    return v.resolve()


class BenchmarkError(ValueError):
    """benchmark.json as a whole cannot be read."""


def _reasons(exc: ValidationError) -> str:
    out = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "entry"
        got = "" if e["type"] in ("missing", "model_type") or where == "path" else f" (got {e.get('input')!r})"
        out.append(f"{where}: {e['msg']}{got}")
    return "; ".join(out)


def parse_benchmark(data: object, source: str = "benchmark.json",
                    ) -> tuple[dict[str, BenchmarkEntry], dict[str, str]]:
    """Valid entries by id, and a reason for each entry that was skipped; `source` names the file."""
    if not isinstance(data, dict):
        raise BenchmarkError(f"{source}: benchmark.json must be an object of entries, got {type(data).__name__}")
    entries: dict[str, BenchmarkEntry] = {}
    errors: dict[str, str] = {}
    for key, raw in data.items():
        if not isinstance(key, str) or key.startswith("_"):
            continue
        if not _ID.match(key):
            errors[key] = "entry id must be 1-64 of [A-Za-z0-9_.-] (or a uid, as live)"
            continue
        if not isinstance(raw, dict):
            errors[key] = f"entry: expected an object with competition and path, got {type(raw).__name__}"
            continue
        if "uid" in raw:
            errors[key] = "uid: not a field (a live-form entry's uid is its key)"
            continue
        live_uid = int(key) if _UID.match(key) else None
        try:
            entry = BenchmarkEntry.model_validate({**raw, "uid": live_uid})
        except ValidationError as e:
            errors[key] = _reasons(e)
            continue
        if entry.label is None:
            entry = entry.model_copy(update={"label": entry.path.name if live_uid is not None else key})
        entries[key] = entry
    return entries, errors
