"""What one step carries from stage to stage (StepContext), and its stage timer."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from validator.adapters.evalcache import EvalCache
from validator.core.chain import Metagraph
from validator.core.competitions import Competition, ValidatorDefaults
from validator.core.entries import Entry, FetchRecord
from validator.core.selection import SelectionState, StepPick
from validator.step.fetch import HubHealth


@dataclass
class StageTimer:
    """Seconds per stage of a step, on the monotonic clock."""

    clock: Callable[[], float] = time.monotonic
    t0: float = 0.0
    t: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.t0 = self.t = self.clock()

    def lap(self, name: str) -> None:
        self.stages[name] = self.clock() - self.t
        self.t = self.clock()

    def total(self) -> float:
        return self.clock() - self.t0


@dataclass
class StepContext:
    """One step's inputs and what its stages found so far."""

    timer: StageTimer
    problems: list[str]
    competitions: dict[str, Competition]
    defaults: ValidatorDefaults
    paused: bool  # every reward 0: the hall of fame only
    meta: Metagraph
    stale: bool  # the chain sync failed: the metagraph is the last good one
    now: float  # wall clock at the sync
    seed: int
    entries: dict[str, Entry]  # chain entries by hotkey
    records: dict[str, FetchRecord]  # hotkey -> its last fetch
    cache_of: dict[str, EvalCache]  # competition -> its dataset's cache
    sel: SelectionState
    deadline: float  # the download budget's end, time.monotonic()
    changed: list[int]  # uids whose hotkey changed since the last step
    health: HubHealth = field(default_factory=HubHealth)  # one streak of network failures per step
    visited: dict[int, Entry] = field(default_factory=dict)  # the chain update's visits
    saved_sel: SelectionState | None = None  # what a stopped step keeps: its visits, the pools it started with
    picks: dict[str, StepPick] = field(default_factory=dict)
    chain_in_play: dict[str, list[Entry]] = field(default_factory=dict)
    in_play: dict[str, list[Entry]] = field(default_factory=dict)  # chain entries and candidates
    not_evaluated: list[Entry] = field(default_factory=list)
    sample_ids: dict[str, list[str]] = field(default_factory=dict)
    forwards: int = 0
    tables: dict[str, dict] = field(default_factory=dict)

    @property
    def block(self) -> int:
        return self.meta.block

    def first_seen(self, content: str, hotkey: str, block: int) -> str:
        """The hotkey that committed `content` first (the copy rule), in its competition's cache."""
        cache = self.cache_of[self.entries[hotkey].competition] if hotkey in self.entries \
            else next(iter(self.cache_of.values()))
        return cache.first_seen.observe(content, hotkey, block)

    def in_play_entries(self) -> list[Entry]:
        return [e for es in self.in_play.values() for e in es]
