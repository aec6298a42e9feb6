"""The hall of fame: its entries parsed as leniently as live, the per-uid shares it earns
(float32, decayed per epoch, capped), and how the shares join model weights (pure).

Where hall_of_fame.json comes from is `validator.adapters.halloffame`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

import constants
from validator.core.numeric import f32_sum, is_int, is_number


class HallOfFameEntry(BaseModel):
    """One hall-of-fame award: ``reward / 200`` of the weights at ``block``, decaying per epoch.

    As lenient as live: any non-negative reward (the live file has 1e9: with the cap it takes
    the whole share), a block in the future, extra keys; only block and reward are read."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    block: int | float
    reward: int | float
    desc: Any = ""
    url: Any = ""

    @field_validator("block", "reward", mode="before")
    @classmethod
    def _finite_number(cls, v: Any) -> Any:
        if not is_number(v) or not math.isfinite(v):
            raise ValueError(f"expected a finite number, got {v!r}")
        return v

    @field_validator("reward")
    @classmethod
    def _not_negative(cls, v: float) -> float:
        # live would add a negative share (and then fail to set weights); we stop at it
        if v < 0:
            raise ValueError(f"must be >= 0, got {v!r}")
        return v


class HallOfFameError(ValueError):
    """hall_of_fame.json does not have the expected shape."""


def parse_hall_of_fame(data: Any, problems: list[str] | None = None) -> dict[str, list[HallOfFameEntry]]:
    """``{hotkey: [{block, reward, desc, url}, ...]}`` read as leniently as live.

    An entry that is not valid (missing block or reward, not a number) stops that hotkey's
    remaining entries, the ones before it count (live: the exception ends the hotkey's loop);
    a hotkey whose value is not a list has no entries. Each such skip is described in
    ``problems`` when given. Keys starting with ``_`` are comments. Only a top level that is
    not an object raises HallOfFameError.
    """
    if not isinstance(data, Mapping):
        raise HallOfFameError(f"hall of fame: expected an object {{hotkey: [entries]}}, got {type(data).__name__}")
    notes = problems if problems is not None else []
    out: dict[str, list[HallOfFameEntry]] = {}
    for hotkey, entries in data.items():
        if not isinstance(hotkey, str) or hotkey.startswith("_"):
            continue
        if not isinstance(entries, (list, tuple)):
            notes.append(f"hall of fame: hotkey {hotkey}: expected a list of entries, got "
                         f"{type(entries).__name__}; no reward")
            out[hotkey] = []
            continue
        parsed: list[HallOfFameEntry] = []
        for n, entry in enumerate(entries):
            if isinstance(entry, HallOfFameEntry):
                parsed.append(entry)
                continue
            try:
                parsed.append(HallOfFameEntry.model_validate(entry))
            except ValidationError as exc:
                reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())
                notes.append(f"hall of fame: hotkey {hotkey} entry #{n} ({entry!r}): {reasons}; "
                             f"this and its {len(entries) - n - 1} later entries ignored")
                break
        out[hotkey] = parsed
    return out


class HallOfFameRewards(dict):
    """``{uid: share}`` of the hall of fame (float32 values, as live), with ``total``: the
    hall-of-fame part of the weights, exactly ``max_fraction`` when the cap applied (live's
    ``reward_sum``; the float32 shares then sum to it only up to rounding)."""

    def __init__(self, shares: Mapping[int, float], total: float):
        super().__init__(shares)
        self.total = float(total)


def _hotkey_pairs(hotkey_of_uid: Mapping[int, str] | Sequence[str]) -> list[tuple[int, str]]:
    if isinstance(hotkey_of_uid, Mapping):
        pairs = list(hotkey_of_uid.items())
    elif isinstance(hotkey_of_uid, Sequence) and not isinstance(hotkey_of_uid, str):
        pairs = list(enumerate(hotkey_of_uid))
    else:
        raise ValueError(f"hotkey_of_uid: expected {{uid: hotkey}} or a list of hotkeys, "
                         f"got {type(hotkey_of_uid).__name__}")
    for uid, hk in pairs:
        if not is_int(uid) or uid < 0:
            raise ValueError(f"hotkey_of_uid: uid {uid!r} is not an integer >= 0")
    return sorted((int(u), hk) for u, hk in pairs)


def _hof_shares(hof: Mapping[str, Sequence[Any]], pairs: list[tuple[int, str]], block_now: float,
                max_fraction: float, decay: float, epoch: int) -> HallOfFameRewards:
    if not (is_number(max_fraction) and 0.0 <= max_fraction <= 1.0):
        raise ValueError(f"max_fraction: must be in [0, 1], got {max_fraction!r}")
    if epoch <= 0:
        raise ValueError(f"epoch: must be positive, got {epoch}")
    parsed = parse_hall_of_fame(hof)
    shares: dict[int, np.float32] = {}
    for uid, hotkey in pairs:  # live walks the metagraph's uids in order
        entries = parsed.get(hotkey) if isinstance(hotkey, str) else None
        if not entries:
            continue
        acc = np.float32(0.0)
        for e in entries:  # float32 accumulation, as live's torch vector
            iv = e.reward / constants.HALL_OF_FAME_IV_FACTOR
            acc = np.float32(acc + np.float32(iv * decay ** ((block_now - e.block) / epoch)))
        shares[uid] = acc
    vec = np.array(list(shares.values()), dtype=np.float32)
    total = float(f32_sum(vec))
    if total > max_fraction:
        vec = vec * np.float32(max_fraction / total)
        total = float(max_fraction)
    return HallOfFameRewards({u: float(v) for u, v in zip(shares, vec.tolist()) if v != 0.0}, total)


def hall_of_fame_rewards(hof: Mapping[str, Sequence[Any]], hotkey_of_uid: Mapping[int, str] | Sequence[str],
                         block_now: int, max_fraction: float = constants.REWARDS_MAX_FRACTION) -> HallOfFameRewards:
    """Live ``get_reward_weights``: per uid whose hotkey is in the hall of fame, each entry adds
    ``reward / 200 * 0.995 ** ((block_now - block) / 361)`` (a future block adds more than
    reward/200); a total above ``max_fraction`` scales every share to sum to exactly it.
    Hotkeys not in the metagraph get nothing; uids with a zero share are left out.
    ``hof`` is the raw file content or `parse_hall_of_fame`'s result."""
    return _hof_shares(hof, _hotkey_pairs(hotkey_of_uid), block_now, max_fraction,
                       constants.HALL_OF_FAME_DECAY, constants.BLOCKS_PER_EPOCH)


def hall_of_fame_weights(hof: Mapping[str, Sequence[Any]], hotkey_to_uid: Mapping[str, int],
                         block_now: float, decay: float = constants.HALL_OF_FAME_DECAY,
                         cap: float = constants.REWARDS_MAX_FRACTION,
                         epoch: int = constants.BLOCKS_PER_EPOCH) -> HallOfFameRewards:
    """`hall_of_fame_rewards` keyed the other way (``{hotkey: uid}``), with the decay, cap and
    epoch as parameters."""
    return _hof_shares(hof, _hotkey_pairs({uid: hk for hk, uid in hotkey_to_uid.items()}), block_now, cap,
                       decay, epoch)


def apply_hall_of_fame(weights: Any, hof_shares: Mapping[int, float]) -> np.ndarray:
    """Scale the (normalised) model weights by ``1 - total share`` and add the shares.

    If the model weights are all zero the result holds only the hall-of-fame shares.
    (Not live's mixing, which normalises after adding: the validator uses `weight_vector`.)
    """
    w = np.asarray(weights, dtype=np.float64).copy()
    total_w = w.sum()
    if total_w > 0:
        w = w / total_w
    total_share = hof_shares.total if isinstance(hof_shares, HallOfFameRewards) else float(sum(hof_shares.values()))
    if not 0.0 <= total_share <= 1.0:
        raise ValueError(f"hall of fame shares: total must be in [0, 1], got {total_share}")
    w *= 1.0 - total_share
    for uid, share in hof_shares.items():
        if not 0 <= uid < w.shape[0]:
            raise ValueError(f"hall of fame shares: uid {uid} out of range 0..{w.shape[0] - 1}")
        w[uid] += share
    return w
