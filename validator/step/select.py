"""Stage: which models a step evaluates, from the chain.

The chain sync (the last good one kept), its commitments parsed and deduplicated as live,
the live chain update (visiting uids through the fetch stage) and each competition's
evaluated entries.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Callable

import constants
from validator.core.chain import ChainError, Commitment, Metagraph
from validator.core.competitions import Competition
from validator.core.entries import Entry, FetchRecord, commit_key
from validator.core.identity import InvalidCommitment, ModelId
from validator.core.sanitize import printable
from validator.core.selection import Commit, SelectionState, VisitResult, update_chain
from validator.core.visits import validators_from_metagraph
from validator.ports import Chain

log = logging.getLogger(__name__)


def sync_chain(chain: Chain, last: tuple[Metagraph, dict[str, Commitment]] | None,
               ) -> tuple[Metagraph | None, dict[str, Commitment], str | None]:
    """(metagraph, commitments, error): the last good sync is kept when the chain fails."""
    try:
        meta, commitments = chain.sync()
        return meta, commitments, None
    except (ChainError, OSError, TimeoutError) as e:
        if last is None:
            return None, {}, f"chain sync failed and no earlier sync to fall back on: {e}"
        return last[0], last[1], f"chain sync failed, using the sync of block {last[0].block}: {e}"


def parse_commitments(
    meta: Metagraph, commitments: dict[str, Commitment], competitions: dict[str, Competition]
) -> tuple[dict[str, Entry], dict[str, str]]:
    """Chain entries by hotkey, and a reason per hotkey whose commitment was dropped.

    Dedupe as live (retrieve_metadata): one key per `namespace/name|commit`; a later block
    for the same key is dropped before any download, equal blocks keep both. A commitment to
    a competition not in the config still claims its key (live parses it first) and is then
    left out as unknown."""
    entries: dict[str, Entry] = {}
    problems: dict[str, str] = {}
    seen: dict[str, tuple[int, str]] = {}  # label -> (block, hotkey) of the oldest holder
    parsed: list[tuple[str, int, ModelId, Commitment]] = []
    for hotkey, c in sorted(commitments.items(), key=lambda kv: meta.uid_of(kv[0]) if meta.uid_of(kv[0]) is not None
                            else 1 << 30):
        uid = meta.uid_of(hotkey)
        if uid is None:
            continue  # deregistered hotkeys keep stale commitments on chain
        try:
            mid = ModelId.from_commitment(c.text)
        except InvalidCommitment as e:
            problems[hotkey] = f"uid {uid}: invalid commitment: {printable(e)}"
            continue
        label = f"{mid.namespace}/{mid.name}|{mid.commit}"
        if label in seen:
            block, holder = seen[label]
            if block < c.block:
                problems[hotkey] = f"uid {uid}: same model as uid {meta.uid_of(holder)}, committed earlier"
                continue
            if block > c.block:
                problems[holder] = f"uid {meta.uid_of(holder)}: same model as uid {uid}, committed earlier"
                parsed = [p for p in parsed if p[0] != holder]
        seen[label] = (c.block, hotkey)  # as live: the last kept holder (equal blocks keep both)
        parsed.append((hotkey, uid, mid, c))
    for hotkey, uid, mid, c in parsed:
        if mid.competition not in competitions:
            problems[hotkey] = f"uid {uid}: unknown competition {printable(repr(mid.competition), 80)}"
            continue
        entries[hotkey] = Entry(key=f"uid:{uid}", competition=mid.competition, label=f"uid {uid}", uid=uid,
                                hotkey=hotkey, block=c.block, commitment=c.text, model_id=mid,
                                scoring=competitions[mid.competition].scoring_key)
    return entries, problems


def _fraction(seed: int, uid: int) -> float:
    """The random fraction live adds to a visit priority, drawn from the step seed (seeded)."""
    digest = hashlib.sha256(f"{seed}:{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def entry_of_held(uid: int, commit: Commit | None, meta: Metagraph,
                  competitions: dict[str, Competition]) -> Entry | None:
    """The chain entry a step evaluates for `uid`: the commitment the selection holds (it is
    refreshed at each chain update, so between updates a recommit waits, as live)."""
    if commit is None or "/" not in commit.key or commit.competition not in competitions:
        return None
    hotkey, _, text = commit.key.partition("/")
    if meta.hotkey_of(uid) != hotkey:
        return None
    try:
        mid = ModelId.from_commitment(text)
    except InvalidCommitment:
        return None
    return Entry(key=f"uid:{uid}", competition=commit.competition, label=f"uid {uid}", uid=uid, hotkey=hotkey,
                 block=commit.block, commitment=text, model_id=mid,
                 scoring=competitions[commit.competition].scoring_key)


def chain_update(sel: SelectionState, meta: Metagraph, entries: dict[str, Entry],
                 competitions: dict[str, Competition], fetch: Callable[[list[Entry]], None],
                 records: dict[str, FetchRecord], seed: int, now: float, changed: list[int],
                 should_stop: Callable[[], bool]) -> tuple[SelectionState, dict[int, Entry]]:
    """The live chain update: visit (download) the uids the selection asks for. Returns the new
    selection and each visited uid's entry. A stop (`should_stop`: the step stopping or its
    download budget spent) ends it early; then the next step updates again."""
    by_uid = {e.uid: e for e in entries.values()}
    visited: dict[int, Entry] = {}

    def visit(uid: int, commit: Commit) -> VisitResult:
        e = visited[uid] = by_uid[uid]
        fetch([e])
        if e.path is not None:
            return VisitResult.OK
        rec = records.get(e.hotkey)
        # skipped (budget, hub down) or a transient failure: the commitment counts as new next time
        return VisitResult.RETRY if e.status == "skipped" or (rec and rec.transient) else VisitResult.FAILED

    up = update_chain(sel, competitions=list(competitions), n_uids=max(meta.uids, default=-1) + 1,
                      chain={e.uid: Commit(commit_key(e), e.competition, e.block) for e in entries.values()},
                      validators=validators_from_metagraph(meta), wall_clock=now, visit=visit,
                      fractions=lambda uid: _fraction(seed, uid), hotkey_changed=changed, should_stop=should_stop)
    return up.state, visited


def chain_entries(cid: str, uids: list[int], sel: SelectionState, meta: Metagraph,
                  competitions: dict[str, Competition], visited: dict[int, Entry]) -> list[Entry]:
    """The entries of the uids a competition evaluates, in evaluation order. A model this
    step's chain update just fetched is not fetched again."""
    out = []
    for uid in uids:
        e = entry_of_held(uid, sel.held.get(uid), meta, competitions) if uid < constants.SUBNET_UIDS else None
        if e is None:
            e = Entry(key=f"uid:{uid}", competition=cid, label=f"uid {uid}", uid=uid,
                      hotkey=meta.hotkey_of(uid), status="failed", reason="no model held for this uid")
        v = visited.get(uid)
        if v is not None and v.path is not None and v.commitment == e.commitment and v.hotkey == e.hotkey:
            e.path, e.content_hash, e.reason = v.path, v.content_hash, v.reason
        out.append(e)
    return out


def hotkey_changes(uid_hotkeys: dict[str, str], ema: list[float], meta: Metagraph,
                   ) -> tuple[list[int], list[float], dict[str, str]]:
    """Uids whose hotkey changed since the last step (a new miner at a reused uid): their
    weight in the moving average and their last visit time are not inherited. A uid that
    left the metagraph loses its weight too, and its last hotkey is remembered, so the
    miner registered there later is a change as well. Returns (changed uids, the moving
    average with their weights zeroed, the uid -> hotkey map to keep); the inputs are not changed."""
    changed = []
    ema = list(ema)
    now_at = {str(u): hk for u, hk in zip(meta.uids, meta.hotkeys)}
    for key, old in uid_hotkeys.items():
        hk = now_at.get(key)
        if hk == old or not key.isdigit():
            continue
        uid = int(key)
        if hk is not None:
            changed.append(uid)
        if uid < len(ema) and ema[uid]:
            log.info("uid %d: hotkey %s -> %s, its moving-average weight %.4g is not inherited",
                     uid, printable(old, 64), printable(hk, 64), ema[uid])
            ema[uid] = 0.0
    kept = {**{k: hk for k, hk in uid_hotkeys.items() if k not in now_at}, **now_at}
    return sorted(changed), ema, kept
