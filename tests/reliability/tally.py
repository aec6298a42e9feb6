"""What the reliability campaign tried, counted; conftest prints it at the end of the session.

    reliability: N faults, M bad inputs, K crash points, 0 lost

faults: injected failures of a dependency (hub, chain, text source, scoring worker, disk);
bad inputs: hostile or corrupt inputs fed to the validator; crash points: SIGKILLs of a
process mid-save or mid-step followed by a restart; lost: saved state or cached losses
missing after a restart, or a bad weight vector reaching the chain (must stay 0).
"""
from __future__ import annotations

from collections import Counter

counts: Counter = Counter()
kinds: dict[str, Counter] = {"faults": Counter(), "bad inputs": Counter(), "crash points": Counter()}


def fault(name: str, n: int = 1) -> None:
    counts["faults"] += n
    kinds["faults"][name] += n


def bad_input(name: str, n: int = 1) -> None:
    counts["bad inputs"] += n
    kinds["bad inputs"][name] += n


def crash_point(name: str, n: int = 1) -> None:
    counts["crash points"] += n
    kinds["crash points"][name] += n


def lost(n: int = 1) -> None:
    counts["lost"] += n


def summary() -> str:
    return (f"reliability: {counts['faults']} faults, {counts['bad inputs']} bad inputs, "
            f"{counts['crash points']} crash points, {counts['lost']} lost")
