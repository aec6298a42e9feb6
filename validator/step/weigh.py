"""Stage: the weight vector of a step and whether (and how) it is set on chain.

The competitions' weights (from the selection, which took them from the typed ranking),
the hall of fame's shares and the moving average give the vector; the rules of when a
validator sets it (offline, interval, a stale metagraph, a stop) are written here once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

import constants
from validator.adapters.files import StateError, read_json
from validator.core import halloffame
from validator.core.chain import ChainError, Metagraph
from validator.core.competitions import Competition
from validator.core.selection import SelectionState
from validator.core.weights import U16_MAX, u16_weights, weight_vector
from validator.ports import Chain


def hall_of_fame_rewards(source: Any, path: Path | None, meta: Metagraph, block_now: int,
                         problems: list[str]) -> Mapping[int, float]:
    """The hall-of-fame shares of this block: from `source` (refreshed on its interval, the
    last good copy kept; .hall_of_fame / .maybe_reload() / .problems()) or the file `path`;
    {} when there is none."""
    hof: Any = None
    if source is not None:
        source.maybe_reload()
        problems += list(source.problems())
        hof = source.hall_of_fame
    elif path is not None and Path(path).exists():
        try:
            hof = halloffame.parse_hall_of_fame(read_json(path), problems)
        except (ValueError, StateError) as e:
            problems.append(f"hall of fame {path} ignored: {e}")
    if not hof:
        return {}
    return halloffame.hall_of_fame_rewards(hof, dict(zip(meta.uids, meta.hotkeys)), block_now)


def step_vector(sel: SelectionState, competitions: dict[str, Competition], hof_rewards: Mapping[int, float],
                ema: list[float]) -> np.ndarray | None:
    """The moving average after this step's weights; None when no model has weight."""
    per_comp = {cid: cs.weights for cid, cs in sel.competitions.items() if cid in competitions}
    prev = np.array(ema, dtype=np.float32) if len(ema) == constants.SUBNET_UIDS else None
    return weight_vector(per_comp, {cid: c.reward for cid, c in competitions.items()}, hof_rewards,
                         constants.SUBNET_UIDS, prev)


def not_set_reason(vector: np.ndarray | None, *, stopping: bool, stale: bool) -> str | None:
    """Why this step's weights are not set, before the chain is asked; None: try to set them."""
    if stopping:
        return "not set: shutting down mid-step"
    if vector is None:
        return "not set: no model has weight this step (the previous weights are kept)"
    if stale:
        return "not set: the chain sync failed, the metagraph is stale"
    return None


def set_weights(chain: Chain, vector: np.ndarray, meta: Metagraph, now: float, paused: bool, *,
                last_set_at: float | None, offline: bool, dont_set_weights: bool, interval_s: float,
                version_key: int) -> tuple[str, bool]:
    """(what happened, whether the weights were set): the flags, the interval since the last
    set (a clock jumped back sets again), then the chain; a chain failure is retried next step."""
    if offline or dont_set_weights:
        return "not set: " + ("--offline" if offline else "--dont-set-weights"), False
    if last_set_at is not None and 0 <= now - last_set_at < interval_s:
        return f"not set: last set {now - last_set_at:.0f} s ago, interval {interval_s:.0f} s", False
    n_uids = min(max(meta.uids, default=-1) + 1, len(vector))
    uids, values = u16_weights(vector, n_uids)
    if not uids:
        return "not set: the weights sum to less than 1e-5", False
    try:
        # u16 / 65535: any max-normalising conversion in the chain client sends these u16 exactly
        chain.set_weights(uids, [v / U16_MAX for v in values], version_key)
    except (ChainError, OSError, ValueError) as e:
        return f"not set: {e} (retried next step)", False
    return f"set at block {meta.block} for {len(uids)} uids" + (" (paused: hall of fame only)" if paused else ""), True
