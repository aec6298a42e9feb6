"""The Chain port: what the validator needs from a blockchain, and the value types it returns.

Adapters: `local.LocalChain` (SQLite, the embedded default) and `subtensor.SubtensorChain`
(bittensor >= 11). The loop depends only on this protocol.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable


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
