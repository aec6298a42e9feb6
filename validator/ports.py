"""The ports: what a validator step needs from the world, and nothing of how it is done.

The step (validator/step/) depends on these protocols only; validator/app.py plugs the
adapters in (validator/adapters/, validator/scoring/). Each port names its value types and
its one typed error, so a caller never duck-types an exception or re-reads a file.

- Chain: the metagraph, commitments, block hashes and weights (adapters/chain/).
- ModelSource: a commitment -> a verified Snapshot on local disk, or FetchError (adapters/hub/).
- Scorer: a model dir and samples -> ScoreResult, in an isolated worker (scoring/).
- SampleSource: (seed, n) -> evaluation text (adapters/data.py, adapters/fineweb.py).
- CompetitionsSource: the competitions in force, refreshed (adapters/config_source.py).
- CandidateSource: benchmark.json's local candidates (adapters/candidates.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol, Sequence, runtime_checkable

from validator.core.chain import Commitment, Metagraph
from validator.core.failures import FetchError
from validator.core.identity import ModelId

if TYPE_CHECKING:
    from validator.core.competitions import Competition, CompetitionsFile
    from validator.core.entries import Entry
    from validator.core.scores import ScoreResult

__all__ = ["Chain", "ModelSource", "Snapshot", "FetchError", "Scorer", "BatchScorer", "ScoreJob", "SampleSource",
           "CompetitionsSource", "CandidateSource"]


@runtime_checkable
class Chain(Protocol):
    netuid: int
    hotkey: str | None  # the validator's own hotkey, None when it has none (read-only use)

    @property
    def block(self) -> int: ...

    def block_hash(self, block: int) -> str: ...

    def sync(self) -> tuple[Metagraph, dict[str, Commitment]]:
        """The metagraph and every hotkey's latest commitment, in one round trip."""
        ...

    def commit(self, signer: Any, text: str) -> None:
        """Publish `text` as the commitment of `signer` (a hotkey ss58 for LocalChain,
        a bittensor Wallet for SubtensorChain)."""
        ...

    def set_weights(self, uids: Sequence[int], weights: Sequence[float], version_key: int) -> None:
        """Set weights as the validator this chain was opened for."""
        ...


class Snapshot(NamedTuple):
    """A model verified on local disk: its directory and its content (directory) hash."""

    path: Path
    content_hash: str


class ModelSource(Protocol):
    """A commitment's model, downloaded, checked and verified: a Snapshot, or FetchError with
    its reason. `deadline` (time.monotonic()) is the step's download budget, checked inside
    a download."""

    def __call__(self, model_id: ModelId, hotkey: str, competition: "Competition", *,
                 deadline: float | None = None) -> Snapshot: ...


class Scorer(Protocol):
    """The losses of `samples` for the model in `path`, as a ScoreResult (a model-level failure
    is its `failure`, never an exception). The tokenizer-failure rule counts over
    `step_samples`, the step's whole evaluation set."""

    def __call__(self, path: Path, samples: list[tuple[str, str]], competition: "Competition", *,
                 step_samples: list[tuple[str, str]] | None = None) -> "ScoreResult": ...


# one model to score: (model_path, samples, competition, step_samples)
ScoreJob = tuple[Path, list[tuple[str, str]], "Competition", "list[tuple[str, str]] | None"]


@runtime_checkable
class BatchScorer(Protocol):
    """A Scorer that also scores several models at once (one per device): results in job
    order; `on_result(index, result)` as each ends; none starts once `should_stop()`."""

    def __call__(self, path: Path, samples: list[tuple[str, str]], competition: "Competition", *,
                 step_samples: list[tuple[str, str]] | None = None) -> "ScoreResult": ...

    def score_many(self, jobs: list[ScoreJob], on_result: "Callable[[int, ScoreResult], None] | None" = None,
                   should_stop: Callable[[], bool] | None = None) -> "list[ScoreResult | None]": ...


@runtime_checkable
class SampleSource(Protocol):
    """Evaluation text: the same seed gives the same samples on every validator."""

    name: str

    def sample(self, seed: int, n: int) -> list[tuple[str, str]]: ...


class CompetitionsSource(Protocol):
    """The competitions in force now (refreshed by the source; the last good copy on failure)."""

    def __call__(self) -> "dict[str, Competition] | CompetitionsFile": ...


class CandidateSource(Protocol):
    """Local candidate models (benchmark.json) of the competitions in force, re-read each
    step, and a problem line for each candidate left out."""

    def __call__(self, competitions: "dict[str, Competition]") -> "tuple[list[Entry], list[str]]": ...
