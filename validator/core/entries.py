"""The field's value types: one model in a step (Entry) and a hotkey's last fetch (FetchRecord).

Pure: values and the small predicates every stage asks of them, so a rule ("a failed
download waits for its retry time", "a transient failure is retried") is written once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import constants
from validator.core.identity import ModelId

EVALUATED = ("scored", "cached")  # statuses with a loss row
NOT_EVALUATED = ("failed", "skipped")  # statuses shown with their reason, without losses


@dataclass
class Entry:
    """One model in the field: a chain uid's commitment or a benchmark.json candidate."""

    key: str  # "uid:<uid>" or "bench:<id>"; stable across steps
    competition: str
    label: str
    uid: int | None = None
    hotkey: str | None = None
    block: int | None = None  # commitment block; None for benchmark entries (no advantage)
    commitment: str | None = None
    model_id: ModelId | None = None
    path: Path | None = None
    content_hash: str | None = None
    status: str = "pending"  # pending | scored | cached | failed | skipped
    reason: str | None = None
    scoring: str = ""  # the competition's scoring_key: its tokenization rules
    tokenizer: str | None = None  # "model" | "competition": which tokenizer scored it this step
    tokenizer_reason: str | None = None  # why the model's own tokenizer was not used
    engine: str | None = None  # how it was scored: "engine (...)", "reference: ...", "streamed (N groups)"
    notes: list[str] = field(default_factory=list)  # around the model, not its fault (token cache not saved)
    scored_on: str | None = None  # a Ray cluster's "<node> <gpu type>" that scored it this step

    @property
    def cache_key(self) -> str:
        # the same content under another competition, or under changed tokenization rules, is another row
        return f"{self.competition}:{self.scoring}:{self.content_hash}"

    @property
    def evaluated(self) -> bool:
        """It has a loss row this step."""
        return self.status in EVALUATED

    @property
    def not_evaluated(self) -> bool:
        """Its download or scoring failed, or was skipped: shown with its reason."""
        return self.status in NOT_EVALUATED


@dataclass
class FetchRecord:
    """What happened the last time a hotkey's commitment was fetched (persisted)."""

    commitment: str
    reason: str | None = None  # a hub FailureReason value, or None when fine (a copy is fine: it is scored)
    detail: str = ""
    attempts: int = 0
    retry_at: float | None = 0.0  # None: permanent, wait for a new commitment
    path: str | None = None
    content_hash: str | None = None

    @property
    def failure(self) -> str:
        """The failure as an entry's reason."""
        return f"{self.reason}: {self.detail}"

    def failed_for(self, commitment: str | None) -> bool:
        """The last fetch of this very commitment failed."""
        return self.commitment == commitment and self.reason is not None

    def waiting(self, now: float) -> bool:
        """Failed, and not to be tried now: permanent, or before its retry time."""
        return self.reason is not None and (self.retry_at is None or now < self.retry_at)

    @property
    def transient(self) -> bool:
        """A failure retried after a backoff (a permanent one has no retry time)."""
        return self.retry_at is not None


def clamp_retry_at(retry_at: float, now: float) -> float:
    """A persisted retry time (wall clock) at most the largest backoff ahead of `now`: after the
    clock jumped back (or in a hand-edited state) a retry is never put days away."""
    return min(retry_at, now + constants.DOWNLOAD_RETRY_BACKOFF_S[-1])


def commit_key(e: Entry) -> str:
    """What the selection holds per uid: the hotkey and its whole commitment text."""
    return f"{e.hotkey}/{e.commitment}"
