"""The inputs of a chain update's visit rounds (live v1.0.16): the miners other validators
favour (top miners), the wall-clock slice of uids to revisit, and when an update is due.

Pure: the metagraph, the wall clock and the last slice end are parameters. The rounds
themselves are `validator.core.selection.update_chain`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import constants
from validator.core.chain import Metagraph


@dataclass(frozen=True)
class ValidatorView:
    """A validator-permit holder as `top_miners` needs it."""

    uid: int
    stake: float
    idle_blocks: int  # block_now - its last weight update
    weights: Mapping[int, float]  # miner uid -> weight (any scale: the cut is relative)


# --- top miners ---------------------------------------------------------------------------------


def validators_from_metagraph(meta: Metagraph) -> list[ValidatorView]:
    """The validator-permit holders of a metagraph, with their idle time and weights."""
    return [ValidatorView(uid, float(meta.stake[i]), int(meta.block) - int(meta.last_update[i]),
                          meta.weights.get(uid, {}))
            for i, uid in enumerate(meta.uids) if meta.validator_permit[i]]


def top_miners(validators: Iterable[ValidatorView], *, n_validators: int = constants.TOP_MINER_VALIDATORS,
               max_idle_blocks: int = constants.TOP_MINER_MAX_VALIDATOR_IDLE_BLOCKS,
               fraction: float = constants.TOP_MINER_FRACTION) -> list[int]:
    """Miners other validators favour, ascending.

    The `n_validators` permit holders with the largest stake (ties: the higher uid first); one
    whose last weight update is more than `max_idle_blocks` old is skipped (its slot is not
    refilled). Of each, every miner holding more than `fraction` of its total weight."""
    ranked = sorted(validators, key=lambda v: (v.stake, v.uid), reverse=True)[:n_validators]
    out: set[int] = set()
    for v in ranked:
        if v.idle_blocks > max_idle_blocks:
            continue
        positive = [(u, w) for u, w in v.weights.items() if w > 0]
        threshold = fraction * sum(w for _, w in positive)
        out.update(u for u, w in positive if w > threshold)
    return sorted(out)


# --- the revisit slice --------------------------------------------------------------------------


def revisit_slice(wall_clock: float, last_until: int | None, *, n_slots: int = constants.SUBNET_UIDS,
                  period_s: int = constants.REVISIT_SLICE_PERIOD_S,
                  max_n: int = constants.REVISIT_SLICE_MAX_UIDS) -> tuple[list[int], int]:
    """(uids to revisit, the slice end to keep for next time).

    The wall clock picks `until = int((int(t) % period) / period * n_slots)`, the same on every
    validator. The slice runs from the last end (first time: `until - max_n`, mod n_slots) up
    to `until`, wrapping past the last slot (a last end equal to `until` wraps a full turn),
    and keeps its last `max_n` uids."""
    until = int((int(wall_clock) % period_s) / period_s * n_slots)
    start = (until - max_n) % n_slots if last_until is None else last_until
    uids = list(range(start, until)) if start < until else list(range(start, n_slots)) + list(range(until))
    return uids[-max_n:], until


def chain_update_due(last_update: float | None, wall_clock: float,
                     interval_s: float = constants.CHAIN_UPDATE_INTERVAL_S) -> bool:
    """Whether a chain update runs now (live: at start, then every 16 minutes)."""
    return last_update is None or wall_clock - last_update >= interval_s
