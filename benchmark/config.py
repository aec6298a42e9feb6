"""benchmark.json: local candidate models a miner injects into the evaluation.

Format: `{ "<id>": {"competition": "c00", "path": "/models/mine", "label": "my v2", "block": 123?} }`.
Keys starting with `_` are comments. A bad entry is reported and skipped; the rest run.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class BenchmarkEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    competition: str = Field(min_length=1)
    path: Path
    label: str | None = None
    block: int | None = Field(default=None, ge=0)

    @field_validator("path")
    @classmethod
    def _path_is_model_dir(cls, v: Path) -> Path:
        # pydantic turns only ValueError/AssertionError into a per-entry error: anything else the
        # filesystem raises (unknown ~user: RuntimeError, no permission: OSError) would escape it
        try:
            return _model_dir(v)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"cannot use {v}: {e}") from e


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
            errors[key] = "entry id must be 1-64 of [A-Za-z0-9_.-]"
            continue
        try:
            entry = BenchmarkEntry.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "entry"
            errors[key] = f"{where}: {first['msg']}"
            continue
        entries[key] = entry.model_copy(update={"label": entry.label or key})
    return entries, errors


def load_benchmark(path: str | Path) -> tuple[dict[str, BenchmarkEntry], dict[str, str]]:
    """Read benchmark.json; a missing file means no entries (the validator runs without)."""
    path = Path(path)
    try:
        if not path.exists():
            return {}, {}
        # utf-8 as JSON requires, not the locale's encoding; -sig: tolerate an editor's BOM.
        # ValueError covers UnicodeDecodeError (UTF-16, binary) and JSONDecodeError;
        # RecursionError: absurdly deep nesting
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError) as e:
        raise BenchmarkError(f"{path}: cannot read benchmark.json: {e}") from e
    return parse_benchmark(data, str(path))
