"""Seeds and page choice: what every validator seeded at one block agrees on (pure).

The seed is a function of the block hash; the pages, rows and documents a step reads are
drawn from a numpy Generator seeded with it, by these rules, so two validators with the
same files pick the same samples. The sources that read them are `validator.adapters.data`
(local files) and `validator.adapters.fineweb`.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

import constants


def seed_from_block_hash(block_hash: str) -> int:
    """A 63-bit seed from a block hash, so every validator seeded at that block agrees."""
    if not isinstance(block_hash, str) or not block_hash.strip():
        raise ValueError(f"block hash {block_hash!r}: must be a non-empty string")
    text = block_hash.strip().lower()
    text = text[2:] if text.startswith("0x") else text
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def usable_text(text: Any) -> bool:
    """A row counts as a sample when it is non-blank text."""
    return isinstance(text, str) and bool(text.strip())


def choose(rng: np.random.Generator, count: int, k: int) -> list[int]:
    """k distinct indices out of `count` (all of them, shuffled, when k >= count)."""
    k = min(k, count)
    if k <= 0:
        return []
    return [int(i) for i in rng.choice(count, size=k, replace=False)]


class Page(NamedTuple):
    """`rows_per_page` consecutive rows of one dump, the first at row `start` of the dump."""

    dump: str
    start: int


def locate(counts: Sequence[int], start: int, length: int) -> list[tuple[int, int, int]]:
    """Rows [start, start + length) of a dump whose shards hold `counts` rows (in shard
    order) as (shard index, first row in that shard, rows) pieces. A page that runs past
    a shard's last row continues at row 0 of the next shard; it stops at the dump's end."""
    if start < 0 or length < 0:
        raise ValueError(f"rows [{start}, {start + length}): start and length must be >= 0")
    out: list[tuple[int, int, int]] = []
    offset, end = 0, start + length
    for i, count in enumerate(counts):
        lo, hi = max(start, offset), min(end, offset + count)
        if lo < hi:
            out.append((i, lo - offset, hi - lo))
        offset += count
        if offset >= end:
            break
    return out


def page_start(rng: np.random.Generator, total_rows: int, rows_per_page: int) -> int:
    """The live draw of a page's first row: `randint(0, rows - 1 - rows_per_page)` (both
    ends included), so a page never reaches the dump's last row. A dump of at most
    `rows_per_page` rows (where live would raise) gives 0: the page is the whole dump."""
    return int(rng.integers(max(total_rows - rows_per_page, 1)))


def rows_per_page_setting(config: Mapping[str, Any]) -> int:
    """competitions.json's validator-wide `rows_per_page` (the `default` block, merged into
    every competition) -> the page size; constants.ROWS_PER_PAGE when the key is absent."""
    value = config.get("rows_per_page", constants.ROWS_PER_PAGE)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # live reads JSON leniently: 50.0 is 50
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"rows_per_page {value!r}: must be an integer >= 1")
    return value
