"""What the reliability campaign measured; conftest prints it at the end of the session.

    reliability: N faults fired, M bad inputs reached, K crash points, L lost

Every number is counted where the thing happened, never where a test planned it:

faults fired: distinct injected failures of a dependency (hub, chain, text source, scoring
    worker, disk) whose injection point recorded that it was hit; a fault armed for a step in
    which the code never called the faulty dependency counts nothing. Repeats of one fault
    (the retries of one request to a failing hub) count once: `key` names the fault.
bad inputs reached: distinct hostile or corrupt inputs that got past the first check into
    the stage that must reject or survive them (a commitment with five fields reaching the
    field checks, a hostile repo that was listed and checked, a config document that decoded
    as JSON and reached the schema); inputs stopped at the first check are tallied apart.
crash points: distinct named points of the real validator step path (sync, fetch, each
    scored model, rank, weights, save, ...) at which a process running real Validator steps
    was SIGKILLed at least once and then restarted.
lost: measured after each kill and restart: entries of the saved state (cached losses,
    pools and selection, EMA, fetch records) that differ from a never-killed run of the same
    steps, plus saved losses missing after a restart.
"""
from __future__ import annotations

import itertools
from collections import Counter
from typing import Hashable

_serial = itertools.count()
_faults: set[tuple[str, Hashable]] = set()
_reached: set[tuple[str, Hashable]] = set()
_stopped: set[tuple[str, Hashable]] = set()
_crash_points: dict[str, int] = {}  # point -> kills
_lost: list[int] = []  # one measurement per comparison (the count of differences)


def fault_fired(kind: str, key: Hashable | None = None) -> None:
    """An injected fault was hit. The same `key` of a kind counts once; None: a new fault."""
    _faults.add((kind, next(_serial) if key is None else key))


def bad_input_reached(kind: str, value: Hashable) -> None:
    """A distinct bad input got past the first check into the stage that must handle it."""
    _reached.add((kind, value))


def bad_input_stopped(kind: str, value: Hashable) -> None:
    """A bad input the first check rejected (shown with -v, not in the count)."""
    _stopped.add((kind, value))


def crash_point(name: str, kills: int = 1) -> None:
    """A named point of the real step path where a validator process was SIGKILLed and restarted."""
    _crash_points[name] = _crash_points.get(name, 0) + kills


def lost(differences: int) -> None:
    """One measured comparison after a restart: how many state entries differ or went missing."""
    _lost.append(int(differences))


def ran() -> bool:
    return bool(_faults or _reached or _stopped or _crash_points or _lost)


def summary() -> str:
    return (f"reliability: {len(_faults)} faults fired, {len(_reached)} bad inputs reached, "
            f"{len(_crash_points)} crash points, {sum(_lost)} lost "
            f"({sum(_crash_points.values())} kills, {len(_lost)} state comparisons)")


def details() -> list[str]:
    def by_kind(items: set) -> str:
        return ", ".join(f"{k} x{v}" for k, v in sorted(Counter(kind for kind, _ in items).items()))

    return [f"  faults fired: {by_kind(_faults)}",
            f"  bad inputs reached: {by_kind(_reached)}",
            f"  bad inputs stopped at the first check (not counted): {by_kind(_stopped)}",
            "  crash points: " + ", ".join(f"{k} x{v}" for k, v in sorted(_crash_points.items()))]
