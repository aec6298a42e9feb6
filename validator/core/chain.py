"""What a chain returns: a commitment, the metagraph, and the error of an unreachable chain.

The port itself is `validator.ports.Chain`; adapters are in validator/adapters/chain/.
"""
from __future__ import annotations

from dataclasses import dataclass, field



@dataclass(frozen=True)
class Commitment:
    text: str
    block: int


@dataclass
class Metagraph:
    """A snapshot of the subnet at `block`. Lists are indexed by uid position (uids[i])."""

    block: int
    block_hash: str
    uids: list[int]
    hotkeys: list[str]
    coldkeys: list[str]
    stake: list[float]
    incentive: list[float]
    validator_permit: list[bool]
    last_update: list[int]
    # validator uid -> {miner uid: normalised weight}, as last set on chain
    weights: dict[int, dict[int, float]] = field(default_factory=dict)

    def uid_of(self, hotkey: str) -> int | None:
        try:
            return self.uids[self.hotkeys.index(hotkey)]
        except ValueError:
            return None

    def hotkey_of(self, uid: int) -> str | None:
        try:
            return self.hotkeys[self.uids.index(uid)]
        except ValueError:
            return None


class ChainError(RuntimeError):
    """The chain could not be reached or refused an operation."""
