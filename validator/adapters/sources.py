"""Which sample source a competition's `dataset` value names: a FineWeb name or a local path."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from validator.adapters.data import LocalSource
from validator.adapters.fineweb import FineWebSource
from validator.ports import SampleSource

FINEWEB_NAMES = ("fineweb2", "fineweb-edu", "fineweb-edu-score-2")


def source_for(dataset: str, endpoint: str | None = None, **kwargs: Any) -> SampleSource:
    """A competition's `dataset` value -> its source: a FineWeb name, or a local path.
    `kwargs` (rows_per_page, revision, shard_list_cache, ...) go to FineWebSource; local
    files take none (they are sampled document by document)."""
    if not isinstance(dataset, str) or not dataset.strip():
        raise ValueError(f"dataset {dataset!r}: must be a non-empty string")
    if dataset.strip().lower() in FINEWEB_NAMES:
        return FineWebSource(endpoint=endpoint, **kwargs)
    if Path(dataset).expanduser().exists():
        return LocalSource(Path(dataset).expanduser())
    raise ValueError(f"dataset {dataset!r}: neither a known dataset name ({', '.join(FINEWEB_NAMES)}) "
                     f"nor an existing file or directory")
