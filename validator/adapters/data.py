"""Sample sources: the error they raise and the local-files source.

Every source (this one, `validator.adapters.fineweb.FineWebSource`) answers
`sample(seed, n) -> [(sample_id, text)]`. The same seed gives the same list (validators
seeded from the same block hash agree on what they score), and a sample id names the same
text forever, so the loss cache can key on it. The seeded choice rules are
`validator.core.seeding`; `validator.adapters.sources.source_for` picks a source.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from validator.core.seeding import choose, usable_text

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".txt": "text"}


class DataError(Exception):
    """A source cannot deliver samples (missing shard, unreadable file, hub unreachable)."""


# --- local files ------------------------------------------------------------------------------


class LocalSource:
    """Parquet (`text` column), jsonl (`text` field) or plain text (blank-line separated
    documents) in a file or a directory tree. Garbage rows are skipped and counted."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"local dataset {self.path}: no such file or directory")
        self.name = f"local:{self.path}"
        self.skipped = 0  # rows that were not a non-empty string (or did not parse)
        self.skipped_files: list[str] = []  # files that could not be read at all
        self._docs: list[tuple[str, str]] | None = None

    def _files(self) -> list[tuple[str, Path, str]]:
        """(relative name, path, kind), in a stable order."""
        if self.path.is_file():
            kind = LOCAL_SUFFIXES.get(self.path.suffix.lower(), "text")
            return [(self.path.name, self.path, kind)]
        out = []
        for p in sorted(self.path.rglob("*")):
            rel = p.relative_to(self.path)
            if not p.is_file() or any(part.startswith(".") for part in rel.parts):
                continue
            kind = LOCAL_SUFFIXES.get(p.suffix.lower())
            if kind is not None:
                out.append((rel.as_posix(), p, kind))
        return out

    def _read_file(self, p: Path, kind: str) -> list[tuple[int, Any]]:
        """(row, value) pairs; values are checked by the caller."""
        if kind == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(p)
            if "text" not in pf.schema_arrow.names:
                raise DataError(f"no 'text' column (columns: {pf.schema_arrow.names})")
            return list(enumerate(pf.read(columns=["text"]).column("text").to_pylist()))
        raw = p.read_text(encoding="utf-8", errors="replace")
        if kind == "jsonl":
            rows = []
            for i, line in enumerate(raw.splitlines()):
                if not line.strip():
                    continue  # blank lines are layout, not rows
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    rows.append((i, None))
                    continue
                rows.append((i, obj.get("text") if isinstance(obj, dict) else None))
            return rows
        blocks = [b.strip() for b in raw.replace("\r\n", "\n").split("\n\n")]
        return list(enumerate(b for b in blocks if b))

    def documents(self) -> list[tuple[str, str]]:
        """Every usable (sample_id, text), read once."""
        if self._docs is not None:
            return self._docs
        docs: list[tuple[str, str]] = []
        for rel, p, kind in self._files():
            try:
                rows = self._read_file(p, kind)
            except Exception as e:  # one bad file must not take the others down
                log.warning("local dataset: skipping %s: %s", p, e)
                self.skipped_files.append(rel)
                continue
            for row, value in rows:
                if usable_text(value):
                    docs.append((f"{rel}/{row}", value))
                else:
                    self.skipped += 1
        if self.skipped:
            log.info("local dataset %s: skipped %d empty or unparsable rows", self.path, self.skipped)
        self._docs = docs
        return docs

    def sample(self, seed: int, n: int) -> list[tuple[str, str]]:
        docs = self.documents()
        if not docs:
            raise DataError(f"local dataset {self.path}: no usable documents "
                            f"({self.skipped} rows skipped, {len(self.skipped_files)} files unreadable)")
        if n > len(docs):
            log.info("local dataset %s: asked for %d samples, only %d exist", self.path, n, len(docs))
        rng = np.random.default_rng(seed)
        return [docs[i] for i in choose(rng, len(docs), n)]
