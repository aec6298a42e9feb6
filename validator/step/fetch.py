"""Stage: the models of the field on local disk, through the ModelSource port.

Each hotkey's last fetch is a FetchRecord: a transient failure is retried after its backoff,
a permanent one waits for a new commitment, and a step stops asking a hub that is down.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import constants
from validator.core.competitions import Competition
from validator.core.entries import Entry, FetchRecord, clamp_retry_at
from validator.core.failures import FetchError
from validator.core.sanitize import printable
from validator.ports import ModelSource

log = logging.getLogger(__name__)


@dataclass
class HubHealth:
    """Network failures in a row over one step's downloads: after a few the hub is taken as down."""

    network_failures: int = 0


def fetch_models(
    entries: list[Entry],
    fetch: ModelSource,
    competitions: dict[str, Competition],
    records: dict[str, FetchRecord],
    first_seen: Callable[[str, str, int], str],
    now: float,
    deadline: float,
    retry_after: Callable[[str, int], float | None],
    on_progress: Callable[[Entry], None] | None = None,
    health: HubHealth | None = None,
) -> None:
    """Ensure each entry's model is on disk and verified; sets entry.path / status in place.

    A failure is recorded per hotkey: transient ones are retried after a backoff, permanent
    ones wait for a new commitment. Content first seen under another hotkey is a copy.
    After a few network failures in a row the hub is taken as down for the rest of the
    step: each further try would cost its full timeout and retries. Pass the step's one
    `health` to every call of a step (the chain update fetches one model per call).
    `deadline` is on time.monotonic(), the clock the ModelSource checks it on."""
    health = HubHealth() if health is None else health
    for e in entries:
        rec = records.get(e.hotkey)
        if rec is None or rec.commitment != e.commitment:
            rec = records[e.hotkey] = FetchRecord(commitment=e.commitment)
        if rec.retry_at is not None:
            rec.retry_at = clamp_retry_at(rec.retry_at, now)
        if rec.waiting(now):
            e.status, e.reason = "failed", rec.failure
            continue
        if time.monotonic() > deadline:
            e.status, e.reason = "skipped", "download time budget of this step used up"
            continue
        if health.network_failures >= constants.HUB_MAX_NETWORK_FAILURES_IN_A_ROW:
            e.status, e.reason = "skipped", f"hub unreachable: {health.network_failures} network failures in a row"
            continue
        try:
            path, content = fetch(e.model_id, e.hotkey, competitions[e.competition], deadline=deadline)
        except FetchError as exc:
            _failed(e, rec, exc.reason.value, exc.detail or exc, health, now, retry_after, on_progress)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad model never stops the loop; untyped: the network's
            _failed(e, rec, "network", exc, health, now, retry_after, on_progress)
            continue
        health.network_failures = 0
        original = first_seen(content, e.hotkey, e.block)
        rec.path, rec.content_hash = str(path), content
        rec.reason, rec.detail, rec.attempts = None, "", 0
        e.path, e.content_hash = path, content
        if original != e.hotkey:
            # Scored as live scores it: identical losses never beat the older original (strict <),
            # so a copy only wins once the original is gone, on every validator alike.
            e.reason = f"copy: same content as {original[:8]}, which committed it first"
        if on_progress:
            on_progress(e)


def _failed(e: Entry, rec: FetchRecord, reason: str, detail: object, health: HubHealth, now: float,
            retry_after: Callable[[str, int], float | None], on_progress: Callable[[Entry], None] | None) -> None:
    health.network_failures = health.network_failures + 1 if reason == "network" else 0
    rec.attempts += 1
    wait = retry_after(reason, rec.attempts)
    # the hub's detail quotes the repo (names, file lists, server text): escaped before it is shown
    rec.reason, rec.detail = reason, printable(detail, 300)
    rec.retry_at = None if wait is None else now + wait
    e.status, e.reason = "failed", rec.failure
    log.warning("uid %s: %s", e.uid, e.reason)
    if on_progress:
        on_progress(e)
