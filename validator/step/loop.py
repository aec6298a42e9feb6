"""The Validator: one step = sync -> fetch -> score -> rank -> weigh.

Each stage is a function of its inputs; `Validator.step` wires them. The loop depends on
ports only: a `Chain`, a `fetch` function (the hub), a `score` function (a scoring worker)
and a `source_for` function (sample sources), all injected by `cli.py` or a test.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import signal
import stat
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np

from validator.core.failures import FetchError
import constants
from benchmark.config import BenchmarkError, load_benchmark
from validator.adapters import hub
from validator.core import ranking
from validator.core.chain import ChainError, Commitment, Metagraph
from validator.ports import Chain
from validator.core.competitions import Competition, CompetitionsFile, ValidatorDefaults, effective
from validator.core.consensus import ConsensusWatch, consensus_report
from validator.adapters.data import seed_from_block_hash
from validator.adapters.evalcache import EvalCache, cache_file, pick_eval_samples, pick_rechecks, verify_rechecks
from validator.core.identity import InvalidCommitment, ModelId
from validator.core.sanitize import printable
from validator.core.selection import (Commit, CompetitionState, SelectionError, SelectionState, VisitResult,
                                 chain_update_due, finish_step, pick_step, update_chain, validators_from_metagraph)
from validator.adapters.files import (StateError, atomic_write_json, keep_bad_copy, load_or_default, read_json,
                             remove_stale_temps)

log = logging.getLogger(__name__)

class FetchFn(Protocol):
    """The model source: (verified snapshot dir, its directory hash) of a commitment, or FetchError.
    `deadline` (time.monotonic()) is the step's download budget, checked inside a download."""

    def __call__(self, model_id: ModelId, hotkey: str, competition: Competition, *,
                 deadline: float | None = None) -> tuple[Path, str]: ...


# score(model_path, samples, competition) -> {"losses": {sid: float}, "n_tokens": {sid: int}, "failure": str|None}
class ScoreFn(Protocol):
    """Losses of `samples` for the model in `path`: {"losses", "n_tokens", "failure"}. The
    tokenizer-failure rule counts over `step_samples`, the step's whole evaluation set."""

    def __call__(self, path: Path, samples: list[tuple[str, str]], comp: Competition, *,
                 step_samples: list[tuple[str, str]] | None = None) -> dict: ...


@dataclass
class Entry:
    """One model in the field: a chain uid's commitment or a benchmark.json candidate."""

    key: str  # "uid:<uid>" or "bench:<id>"; stable across steps
    competition: str
    label: str
    uid: int | None = None
    hotkey: str | None = None
    block: int | None = None  # commitment block; None for benchmark entries (no advantage)
    commitment: str | None = None
    model_id: ModelId | None = None
    path: Path | None = None
    content_hash: str | None = None
    status: str = "pending"  # pending | scored | cached | failed | skipped
    reason: str | None = None
    scoring: str = ""  # the competition's scoring_key: its tokenization rules
    tokenizer: str | None = None  # "model" | "competition": which tokenizer scored it this step
    tokenizer_reason: str | None = None  # why the model's own tokenizer was not used
    engine: str | None = None  # how it was scored: "engine (...)", "reference: ...", "streamed (N groups)"
    notes: list[str] = field(default_factory=list)  # around the model, not its fault (token cache not saved)

    @property
    def cache_key(self) -> str:
        # the same content under another competition, or under changed tokenization rules, is another row
        return f"{self.competition}:{self.scoring}:{self.content_hash}"


# --- stage 1: chain ---------------------------------------------------------------------------


def sync_chain(chain: Chain, last: tuple[Metagraph, dict[str, Commitment]] | None):
    """(metagraph, commitments, error): the last good sync is kept when the chain fails."""
    try:
        meta, commitments = chain.sync()
        return meta, commitments, None
    except (ChainError, OSError, TimeoutError) as e:
        if last is None:
            return None, {}, f"chain sync failed and no earlier sync to fall back on: {e}"
        return last[0], last[1], f"chain sync failed, using the sync of block {last[0].block}: {e}"


# --- stage 2: commitments ---------------------------------------------------------------------


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


# --- stage 3: models on disk ----------------------------------------------------------------


@dataclass
class FetchRecord:
    """What happened the last time a hotkey's commitment was fetched (persisted)."""

    commitment: str
    reason: str | None = None  # a hub FailureReason value, or None when fine (a copy is fine: it is scored)
    detail: str = ""
    attempts: int = 0
    retry_at: float | None = 0.0  # None: permanent, wait for a new commitment
    path: str | None = None
    content_hash: str | None = None


def clamp_retry_at(retry_at: float, now: float) -> float:
    """A persisted retry time (wall clock) at most the largest backoff ahead of `now`: after the
    clock jumped back (or in a hand-edited state) a retry is never put days away."""
    return min(retry_at, now + constants.DOWNLOAD_RETRY_BACKOFF_S[-1])


@dataclass
class HubHealth:
    """Network failures in a row over one step's downloads: after a few the hub is taken as down."""

    network_failures: int = 0


def fetch_models(
    entries: list[Entry],
    fetch: FetchFn,
    competitions: dict[str, Competition],
    records: dict[str, FetchRecord],
    first_seen: Callable[[str, str, int], str],
    now: float,
    deadline: float,
    retry_after: Callable[[str, int], float | None],
    on_progress: Callable[[Entry], None] | None = None,
    health: "HubHealth | None" = None,
) -> None:
    """Ensure each entry's model is on disk and verified; sets entry.path / status in place.

    A failure is recorded per hotkey: transient ones are retried after a backoff, permanent
    ones wait for a new commitment. Content first seen under another hotkey is a copy.
    After a few network failures in a row the hub is taken as down for the rest of the
    step: each further try would cost its full timeout and retries. Pass the step's one
    `health` to every call of a step (the chain update fetches one model per call)."""
    health = HubHealth() if health is None else health
    for e in entries:
        rec = records.get(e.hotkey)
        if rec is None or rec.commitment != e.commitment:
            rec = records[e.hotkey] = FetchRecord(commitment=e.commitment)
        if rec.retry_at is not None:
            rec.retry_at = clamp_retry_at(rec.retry_at, now)
        if rec.reason is not None and (rec.retry_at is None or now < rec.retry_at):
            e.status, e.reason = "failed", f"{rec.reason}: {rec.detail}"
            continue
        if time.monotonic() > deadline:
            e.status, e.reason = "skipped", "download time budget of this step used up"
            continue
        if health.network_failures >= constants.HUB_MAX_NETWORK_FAILURES_IN_A_ROW:
            e.status, e.reason = "skipped", f"hub unreachable: {health.network_failures} network failures in a row"
            continue
        try:
            path, content = fetch(e.model_id, e.hotkey, competitions[e.competition], deadline=deadline)
        except Exception as exc:  # noqa: BLE001 - one bad model never stops the loop
            reason = getattr(getattr(exc, "reason", None), "value", None) or "network"
            health.network_failures = health.network_failures + 1 if reason == "network" else 0
            rec.attempts += 1
            wait = retry_after(reason, rec.attempts)
            # the hub's detail quotes the repo (names, file lists, server text): escaped before it is shown
            rec.reason, rec.detail = reason, printable(getattr(exc, "detail", "") or exc, 300)
            rec.retry_at = None if wait is None else now + wait
            e.status, e.reason = "failed", f"{reason}: {rec.detail}"
            log.warning("uid %s: %s", e.uid, e.reason)
            if on_progress:
                on_progress(e)
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


class UnsafeEntry(ValueError):
    """A benchmark candidate holds something other than regular files and folders."""


def _fingerprint(directory: Path) -> tuple:
    """What a file listing says about a directory's content: a change of any file's size or
    mtime changes it (a candidate being rewritten gets hashed again). Walks with lstat and
    refuses anything but regular files and folders (UnsafeEntry): reading a FIFO blocks, a
    device never ends, a symlink points anywhere. Hidden folders are skipped, as publishing does."""
    if not stat.S_ISDIR(os.stat(directory).st_mode):  # the path itself is the operator's: may be a link
        raise UnsafeEntry(f"{printable(directory)} is not a directory")
    out = []

    def fail(err: OSError) -> None:
        raise err

    for cur, dirs, names in os.walk(directory, onerror=fail):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in dirs + names:
            full = Path(cur) / name
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                out.append((full.relative_to(directory).as_posix(), st.st_size, st.st_mtime_ns))
            elif not stat.S_ISDIR(st.st_mode):
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise UnsafeEntry(f"{printable(full.relative_to(directory))} is {kind}")
    return tuple(sorted(out))


def benchmark_entries(path: Path | None, competitions: dict[str, Competition],
                      hashes: dict[Path, tuple[tuple, str]] | None = None) -> tuple[list[Entry], list[str]]:
    """benchmark.json entries (re-read every step); bad entries are reported and skipped.

    `hashes` (path -> (fingerprint, dir hash)) keeps a candidate from being read whole
    again every step while its files are unchanged."""
    hashes = {} if hashes is None else hashes
    if path is None:
        return [], []
    try:
        parsed, errors = load_benchmark(path)
    except BenchmarkError as e:
        return [], [printable(e)]
    problems = [f"benchmark entry {printable(repr(k), 80)}: {printable(v)}" for k, v in errors.items()]
    out = []
    for bid, b in parsed.items():
        if b.competition not in competitions:
            problems.append(f"benchmark entry {printable(repr(bid), 80)}: unknown competition "
                            f"{printable(repr(b.competition), 80)}")
            continue
        name = printable(repr(bid), 80)
        try:
            fp = _fingerprint(b.path)
            if b.path not in hashes or hashes[b.path][0] != fp:
                # what validators will hash once it is published: its download set only
                hashes[b.path] = (fp, hub.model_dir_hash(b.path))
            content = hashes[b.path][1]
        except UnsafeEntry as e:
            problems.append(f"benchmark entry {name}: refused: {e}")
            continue
        except FetchError as e:
            problems.append(f"benchmark entry {name}: {e.reason.value}: {printable(e.detail)}")
            continue
        except OSError as e:
            problems.append(f"benchmark entry {name}: cannot read {printable(b.path)}: {printable(e)}")
            continue
        out.append(Entry(key=f"bench:{bid}", competition=b.competition, label=printable(b.label or bid, 80),
                         block=b.block,
                         path=b.path, content_hash=content, scoring=competitions[b.competition].scoring_key))
    return out, problems


# --- stage 5: scoring ---------------------------------------------------------------------


def score_entries(
    entries: list[Entry],
    comp: Competition,
    cache: "EvalCache",
    sample_ids: list[str],
    score: ScoreFn,
    seed: int,
    should_stop: Callable[[], bool],
    on_scored: Callable[[Entry, int], None],
) -> int:
    """Compute the missing losses (and a few re-checks) of each entry; returns forward-pass count.

    The competition's models are scored as one batch when `score` has `score_many` (a model per
    device at once, validator.scoring.dispatch.Scorer); `on_scored(entry, n)` runs after each model, so the
    caller can save the cache: a kill loses at most the models in flight."""
    forwards = 0
    step_samples = list(zip(sample_ids, cache.db.texts(sample_ids)))
    plans = []  # (entry, missing, rechecks, todo)
    later = []  # a second entry of a model (same cache key): planned after the first is scored, so cached

    def plan(e: Entry) -> None:
        if not sample_ids:  # the text source failed with an empty database: nothing evaluated
            e.status, e.reason = "skipped", "no evaluation samples this step (see problems)"
            return
        missing = cache.losses.missing(e.cache_key, sample_ids)
        missing_set = set(missing)
        rechecks = pick_rechecks(cache.losses, e.cache_key, [s for s in sample_ids if s not in missing_set], seed)
        todo = list(missing) + list(rechecks)
        if not todo:
            e.status = "cached"
            on_scored(e, 0)
            return
        plans.append((e, missing, rechecks, todo))

    keys = set()
    for e in entries:
        if e.path is None or should_stop():
            continue
        if e.cache_key in keys:
            later.append(e)
            continue
        keys.add(e.cache_key)
        plan(e)

    def take(e: Entry, res: dict) -> dict | None:
        # both quote the model's files (tokenizer errors, exception text): escaped before shown
        why = res.get("tokenizer_reason")
        e.tokenizer, e.tokenizer_reason = res.get("tokenizer"), None if why is None else printable(why)
        e.engine = None if res.get("engine") is None else printable(res["engine"])
        e.notes = [printable(n) for n in res.get("notes") or []]
        if res.get("failure"):
            e.status, e.reason = "failed", printable(res["failure"])
            return None
        return res

    def finish(k: int, res: dict) -> None:
        nonlocal forwards
        e, missing, rechecks, todo = plans[k]
        forwards += len(todo)
        result, keep = take(e, res), list(missing)  # a passing re-check keeps the cached value
        if result is not None and rechecks and not verify_rechecks(
                cache.losses, e.cache_key, {s: result["losses"][s] for s in rechecks}):
            # the cached row was wrong (nondeterminism or tampering) and has been reset
            e.reason = "re-check mismatch: cached losses reset"
            forwards += len(sample_ids)
            result, keep = take(e, score(e.path, step_samples, comp, step_samples=step_samples)), list(sample_ids)
        if result is not None:
            cache.losses.put(e.cache_key, {s: result["losses"][s] for s in keep},
                             {s: result["n_tokens"][s] for s in keep})
            e.status = "scored" if missing else "cached"
        on_scored(e, len(todo))

    jobs = [(e.path, list(zip(todo, cache.db.texts(todo))), comp, step_samples) for e, _, _, todo in plans]
    score_many = getattr(score, "score_many", None)
    if score_many is not None and len(jobs) > 1:
        score_many(jobs, on_result=finish, should_stop=should_stop)
    else:
        for k, (path, samples, _, _) in enumerate(jobs):
            if k and should_stop():
                break
            finish(k, score(path, samples, comp, step_samples=step_samples))
    for e in later:
        if should_stop():
            break
        n = len(plans)
        plan(e)
        if len(plans) > n:
            todo = plans[n][3]
            finish(n, score(e.path, list(zip(todo, cache.db.texts(todo))), comp, step_samples=step_samples))
    return forwards


# --- stage 6: ranking and weights ---------------------------------------------------------------


def loss_rows(entries: list[Entry], cache: "EvalCache", sample_ids: list[str]) -> list[list[float] | None]:
    """Per entry its per-sample loss row over `sample_ids`, None when its evaluation failed."""
    ok = [e for e in entries if e.status in ("scored", "cached")]
    mat = cache.losses.get_matrix([e.cache_key for e in ok], sample_ids) if ok else np.zeros((0, len(sample_ids)))
    rows = {id(e): mat[i].tolist() for i, e in enumerate(ok)}
    return [rows.get(id(e)) for e in entries]


def rank_chain(entries: list[Entry], comp: Competition, cache: "EvalCache", sample_ids: list[str],
               block_now: int, seed: int, discard_winrate: float) -> ranking.CompetitionStep:
    """The live per-competition step over the chain models evaluated, in evaluation order."""
    return ranking.competition_step(
        loss_rows(entries, cache, sample_ids), [e.block for e in entries], block_now,
        group_samples=comp.group_samples, advantage_initial=comp.advantage_initial,
        advantage_decay=comp.advantage_decay, weight_skew_factor=comp.weight_skew_factor,
        pool_size=comp.pool_size, seed=seed, discard_winrate=discard_winrate)


def rank_competition(entries: list[Entry], comp: Competition, cache: "EvalCache", sample_ids: list[str],
                     block_now: int, seed: int, chain_step: ranking.CompetitionStep | None = None,
                     chain_entries: list[Entry] | None = None) -> dict:
    """The competition's table: per model stats, win rates and the head-to-head matrix.

    `win_rate` ranks every entry, benchmark candidates included (what a candidate would get);
    `chain_win_rate`, `weight` and `pool` come from `chain_step`, the live step over the chain
    models alone (`chain_entries`, in evaluation order): a candidate never takes weight."""
    ok = [e for e in entries if e.status in ("scored", "cached")]
    blocks = [e.block for e in ok]
    table = []
    matrix: dict = {"labels": [e.label for e in ok]}
    chain_of = {id(e): i for i, e in enumerate(chain_entries or [])}
    pool = set(chain_step.next_pool) if chain_step else set()
    n_groups = 0  # the columns the wins count: live drops the samples that do not fill a group
    if ok and sample_ids:
        losses = cache.losses.get_matrix([e.cache_key for e in ok], sample_ids)
        ntok = cache.losses.get_ntokens([e.cache_key for e in ok], sample_ids)
        field_step = ranking.competition_step(
            losses.tolist(), blocks, block_now, group_samples=comp.group_samples,
            advantage_initial=comp.advantage_initial, advantage_decay=comp.advantage_decay,
            weight_skew_factor=comp.weight_skew_factor, pool_size=comp.pool_size, seed=seed)
        grouped = losses if field_step.grouped_losses is None else field_step.grouped_losses
        n_groups = int(grouped.shape[1])
        rule = (block_now, comp.advantage_initial, comp.advantage_decay)
        wblocks = np.array([np.nan if b is None else float(b) for b in blocks])
        wm = ranking.win_matrix(grouped, wblocks, *rule) if grouped.shape[1] else {}
        # strict JSON (the step report): a pair with no sample finite for both has mean_delta NaN -> null
        matrix.update({k: np.where(np.isfinite(v), v, None).tolist() if np.asarray(v).dtype.kind == "f"
                       else np.asarray(v).tolist() for k, v in wm.items()})
        with np.errstate(divide="ignore", invalid="ignore"):
            # live's loss per token: the summed loss over the number of token ids (n_tokens + 1)
            per_tok = losses / np.where(ntok > 0, ntok + 1, np.nan)
        rates = field_step.win_rate or [0.0] * len(ok)
        for i, e in enumerate(ok):
            finite_tok = per_tok[i][np.isfinite(per_tok[i])]
            finite = losses[i][np.isfinite(losses[i])]
            n_nan = int(np.isnan(losses[i]).sum())
            if n_nan and not e.reason:  # NaN weights give NaN losses: say why the model wins nothing
                e.reason = (f"{n_nan} of {len(sample_ids)} losses are NaN (non-finite model outputs); "
                            "a NaN loss never takes a sample from another model")
            elif not finite.size and not e.reason:
                e.reason = f"no finite loss on any of {len(sample_ids)} samples"
            table.append({**_entry_row(e, block_now), "win_rate": float(rates[i]),
                          "loss_per_token": float(finite_tok.mean()) if finite_tok.size else None,
                          "loss_per_token_std": float(finite_tok.std()) if finite_tok.size else None,
                          "loss_per_sample": float(finite.mean()) if finite.size else None,
                          # per sample, for the plots of `coldint-validator leaderboard --out`
                          "losses_per_token": [float(x) if np.isfinite(x) else None for x in per_tok[i]]})
    table += [_entry_row(e, block_now) for e in entries if e not in ok]
    for row, e in zip(table, [e for e in ok] + [e for e in entries if e not in ok]):
        j = chain_of.get(id(e))
        if j is None or chain_step is None:
            continue
        if chain_step.win_rate is not None:
            row["chain_win_rate"] = float(chain_step.win_rate[j])
            row["abs_win_rate"] = float(chain_step.win_abs_rate[j])
            factor = chain_step.advantage_factor[j]
            row["advantage"] = None if factor is None else 1.0 - float(factor)
        if chain_step.weights is not None:
            row["weight"] = float(chain_step.weights[j])
        row["pool"] = j in pool
    # ties in win rate (often 0 for all but the leader) are ordered by loss per token
    table.sort(key=lambda r: (r["win_rate"] is None, -(r["win_rate"] or 0.0),
                              math.inf if r.get("loss_per_token") is None else r["loss_per_token"]))
    return {"models": table, "win_matrix": matrix, "n_samples": len(sample_ids),
            "group_samples": comp.group_samples, "n_groups": n_groups, "block": block_now,
            "error": chain_step.error if chain_step else None}


def _shown(text: str | None, limit: int | None = None) -> str | None:
    return None if text is None else printable(text, limit)


def _entry_row(e: Entry, block_now: int) -> dict:
    # the last gate before the console and the report: every text that can come from a miner is escaped
    return {"key": _shown(e.key), "label": _shown(e.label), "uid": e.uid, "hotkey": _shown(e.hotkey),
            "block": e.block,
            "age_blocks": None if e.block is None else block_now - e.block, "status": e.status,
            "reason": _shown(e.reason), "content_hash": _shown(e.content_hash), "commitment": _shown(e.commitment),
            "win_rate": None, "chain_win_rate": None, "weight": None,
            "tokenizer": _shown(e.tokenizer), "tokenizer_reason": _shown(e.tokenizer_reason),
            "engine": _shown(e.engine), "notes": list(e.notes)}


def unevaluated_entries(entries: dict[str, Entry], records: dict[str, FetchRecord],
                        evaluated: set[int | None]) -> list[Entry]:
    """Chain entries not evaluated this step because their download failed or was skipped:
    shown in their competition's table with the reason, so a miner sees why. A visit of this
    step says it; otherwise the fetch record of the same commitment does."""
    out = []
    for hk, e in entries.items():
        if e.uid in evaluated:
            continue
        rec = records.get(hk)
        if e.status not in ("failed", "skipped") and rec is not None and rec.commitment == e.commitment \
                and rec.reason is not None:
            e.status, e.reason = "failed", f"{rec.reason}: {rec.detail}"
        if e.status in ("failed", "skipped"):
            out.append(e)
    return out


def _fraction(seed: int, uid: int) -> float:
    """The random fraction live adds to a visit priority, drawn from the step seed (seeded)."""
    digest = hashlib.sha256(f"{seed}:{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def commit_key(e: Entry) -> str:
    """What the selection holds per uid: the hotkey and its whole commitment text."""
    return f"{e.hotkey}/{e.commitment}"


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


# --- the Validator --------------------------------------------------------------------------


@dataclass
class Settings:
    state_dir: Path
    offline: bool = False  # no weight setting (and no network chain; the cli picks the chain)
    dont_set_weights: bool = False
    benchmark_path: Path | None = None
    hall_of_fame_path: Path | None = None  # a file; `hall_of_fame=` of the Validator takes a source
    eval_samples: int | None = None  # None: competitions.json's eval_samples (live), else this
    download_budget_s: float = constants.TTL_DOWNLOADS_S
    weights_interval_s: float = constants.MIN_WEIGHT_SET_INTERVAL_S
    version_key: int = constants.WEIGHTS_VERSION_KEY
    save_step_json: Path | None = None
    step_interval_s: float = constants.STEP_MIN_INTERVAL_S


@dataclass
class ValidatorState:
    """What survives a restart, besides the eval caches."""

    step: int = 0
    ema: list[float] = field(default_factory=list)  # live's self.weights (256 entries)
    last_weights_block: int | None = None
    last_weights_at: float | None = None  # wall clock of the last successful set
    selection: dict = field(default_factory=dict)  # SelectionState.to_json(): pools, pending, held, visits
    records: dict[str, dict] = field(default_factory=dict)  # hotkey -> FetchRecord fields
    uid_hotkeys: dict[str, str] = field(default_factory=dict)  # uid -> hotkey at the last step

    @classmethod
    def load(cls, path: Path) -> "ValidatorState":
        """The saved state; a field with a value of the wrong shape (a hand-edited file) falls
        back to its default, with a warning and a `.bad` copy of the file, so it can never
        crash a later step."""
        data = load_or_default(path, None)
        if data is None:
            return cls()
        if not isinstance(data, dict):
            log.warning("state file %s is not a JSON object: starting fresh (%s)", path, keep_bad_copy(path))
            return cls()
        kept, dropped = {}, []
        for name in cls.__dataclass_fields__:
            if name not in data:
                continue
            value = _clean_state_field(name, data[name])
            if value is _BAD:
                dropped.append(name)
            else:
                kept[name] = value
                if name == "records" and len(value) != len(data[name]):
                    dropped.append(f"records of {len(data[name]) - len(value)} hotkey(s)")
        if dropped:
            log.warning("state file %s: unusable %s, using defaults for them (%s)", path, ", ".join(dropped),
                        keep_bad_copy(path))
        return cls(**kept)

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))


_BAD = object()
_RECORD_TYPES = {"commitment": (str,), "reason": (str, type(None)), "detail": (str,), "attempts": (int,),
                 "retry_at": (int, float, type(None)), "path": (str, type(None)), "content_hash": (str, type(None))}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _clean_state_field(name: str, v: Any) -> Any:
    """A saved ValidatorState field checked for shape: the value, or _BAD. `records` keeps its
    well-formed entries only."""
    if name == "step":
        return v if _is_int(v) and v >= 0 else _BAD
    if name == "last_weights_block":
        return v if v is None or (_is_int(v) and v >= 0) else _BAD
    if name == "last_weights_at":
        return v if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)) \
            else _BAD
    if name == "ema":
        ok = isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                         and np.isfinite(x) and x >= 0 for x in v)
        return [float(x) for x in v] if ok else _BAD
    if name == "selection":
        try:
            SelectionState.from_json(v)
        except SelectionError:
            return _BAD
        return v
    if name == "uid_hotkeys":
        return v if isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()) \
            else _BAD
    if name == "records":
        if not isinstance(v, dict):
            return _BAD
        return {hk: r for hk, r in v.items()
                if isinstance(r, dict) and "commitment" in r and set(r) <= set(_RECORD_TYPES)
                and all(isinstance(x, _RECORD_TYPES[k]) and not isinstance(x, bool) for k, x in r.items())}
    return _BAD


CompetitionsFn = Callable[[], "dict[str, Competition] | CompetitionsFile"]


class Saver:
    """Writes the validator's files (atomically); a test passes another to fill the disk."""

    def cache(self, cache: "EvalCache", path: Path) -> None:
        cache.save(path)

    def state(self, state: ValidatorState, path: Path) -> None:
        state.save(path)

    def report(self, report: dict, path: Path) -> None:
        atomic_write_json(path, report)


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def save_problem(exc: OSError, what: str) -> str:
    """The step problem of a failed save: `disk_full: ...` when the disk or quota is full."""
    if exc.errno in _NO_SPACE:
        return (f"disk_full: {what} save failed ({printable(exc)}); the results are kept in memory and count, "
                "everything is written once space is back")
    return f"{what} save failed ({printable(exc)}); kept in memory, saved again at the next save"


def note_once(problems: list[str], msg: str) -> None:
    """Add `msg` (and log it) unless it is there already; a full disk fails every save of the
    step (each model's cache save, the state, the report) and is said once."""
    if msg in problems or (msg.startswith("disk_full:") and any(p.startswith("disk_full:") for p in problems)):
        return
    log.error(msg)
    problems.append(msg)


class Validator:
    def __init__(self, chain: Chain, competitions: CompetitionsFn, fetch: FetchFn,
                 score: ScoreFn, source_for: Callable[[str], Any], settings: Settings,
                 hotkey: str | None = None, retry_after: Callable[[str, int], float | None] | None = None,
                 cleanup: Callable[[set[Path]], Any] | None = None, progress: Any = None,
                 hall_of_fame: Any = None, overrides: dict[str, Any] | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] | None = None,
                 saver: Saver | None = None):
        self.chain, self.competitions, self.fetch, self.score = chain, competitions, fetch, score
        self.source_for, self.settings, self.hotkey, self.cleanup = source_for, settings, hotkey, cleanup
        self.retry_after = retry_after or (lambda reason, attempts: constants.DOWNLOAD_RETRY_BACKOFF_S[0])
        self.progress = progress
        self.hall_of_fame = hall_of_fame  # a source with .hall_of_fame / .maybe_reload() / .problems(); or None
        self.overrides = {"eval_samples": settings.eval_samples, **(overrides or {})}
        self.clock = clock  # wall clock: persisted times (visits, retries, weight sets), the revisit slice
        self._monotonic = monotonic  # see monotonic()
        self.saver = saver or Saver()
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        # temporary files of a save the last process was killed in (never part of the state)
        for sub in ("", "evalcache", "tokenizers"):
            remove_stale_temps(settings.state_dir / sub)
        self.state_path = settings.state_dir / "validator_state.json"
        self.state = ValidatorState.load(self.state_path)
        self.caches: dict[str, EvalCache] = {}
        self.load_problems: list[str] = []  # reported with the next step
        self.last_sync: tuple[Metagraph, dict[str, Commitment]] | None = None
        self.last_chain_update: float | None = None  # self.monotonic(); in memory, so a start always updates
        self.bench_hashes: dict[Path, tuple[tuple, str]] = {}  # benchmark candidates, see benchmark_entries
        self.consensus_watch = ConsensusWatch()
        self.stopping = False

    def monotonic(self) -> float:
        """The clock of in-process intervals (the chain update), which a wall-clock jump must not
        stretch: time.monotonic(), or the injected `monotonic`; a wall clock a test injected or
        set (self.clock) without one drives them as well."""
        if self._monotonic is not None:
            return self._monotonic()
        return time.monotonic() if self.clock is time.time else self.clock()

    def note_problem(self, msg: str) -> None:
        """A problem found outside the step's stages (a port, a damaged file): in the next report."""
        self.load_problems.append(msg)

    # -- persistence --------------------------------------------------------------------------

    def cache_for(self, dataset: str, defaults: ValidatorDefaults | None = None) -> "EvalCache":
        if dataset not in self.caches:
            path = self._cache_path(dataset)
            try:
                self.caches[dataset] = EvalCache.load(path)
            except Exception as e:  # noqa: BLE001 - a damaged (hand-edited) cache must not stop every step
                kept = ", ".join(keep_bad_copy(p) for p in (path, EvalCache.samples_path(path)) if p.exists())
                msg = f"evaluation cache {path} unusable ({e}): starting it empty; {kept}"
                log.warning(msg)
                self.note_problem(msg)
                self.caches[dataset] = EvalCache()
        cache = self.caches[dataset]
        if defaults is not None:  # competitions.json's db_* keys, re-read with the config
            cache.configure(min_samples=defaults.db_min_samples, max_samples=defaults.db_max_samples,
                            extend_samples=defaults.db_extend_samples, extend_interval=defaults.db_extend_interval)
        return cache

    def _cache_path(self, dataset: str) -> Path:
        return cache_file(self.settings.state_dir, dataset)

    def save(self) -> None:
        for dataset, cache in self.caches.items():
            self.saver.cache(cache, self._cache_path(dataset))
        self.saver.state(self.state, self.state_path)

    def _try_save(self, problems: list[str], what: str = "state") -> None:
        """save(), but a failure (disk full, read-only disk) is reported, not raised: the state
        stays in memory and the next save writes it."""
        try:
            self.save()
        except OSError as e:
            note_once(problems, save_problem(e, what))

    def request_stop(self, *_: Any) -> None:
        self.stopping = True

    def _config(self, problems: list[str]) -> tuple[dict[str, Competition], ValidatorDefaults, bool]:
        """The competitions in force, the validator-wide settings (flags over `default`) and
        whether the subnet is paused (every reward 0)."""
        cfg = self.competitions()
        if isinstance(cfg, CompetitionsFile):
            problems += [p for p in cfg.problems]
            comps, defaults = dict(cfg.competitions), cfg.settings
        else:
            comps, defaults = dict(cfg), ValidatorDefaults()
        try:
            defaults = effective(defaults, {k: v for k, v in self.overrides.items() if v is not None})
        except ValueError as e:  # flags were checked at start; a config change cannot make them wrong
            problems.append(f"validator settings: {e}")
        paused = bool(comps) and all(c.reward == 0 for c in comps.values())
        return comps, defaults, paused

    def _seed(self, block_now: int, problems: list[str]) -> int:
        # samples: seeded by the hash of the last epoch boundary, so validators agree
        seed_block = block_now - block_now % constants.BLOCKS_PER_EPOCH
        try:
            return seed_from_block_hash(self.chain.block_hash(seed_block))
        except (ChainError, OSError) as e:
            problems.append(f"block hash of {seed_block} unavailable ({e}); seeding with the block number")
            return seed_block

    # -- one step ---------------------------------------------------------------------------------

    def step(self) -> dict:
        t0 = time.monotonic()
        stages: dict[str, float] = {}
        problems: list[str] = []

        def stage(name: str, t: float) -> float:
            stages[name] = time.monotonic() - t
            return time.monotonic()

        t = time.monotonic()
        competitions, defaults, paused = self._config(problems)
        meta, commitments, err = sync_chain(self.chain, self.last_sync)
        if err:
            problems.append(err)
        if meta is None:
            return self._finish({"step": self.state.step, "block": None, "competitions": {}, "weights": {},
                                 "problems": problems, "weights_set": "not set: no metagraph"}, t0, stages)
        self.last_sync = (meta, commitments)
        block_now, now = meta.block, self.clock()
        seed = self._seed(block_now, problems)
        t = stage("sync", t)

        entries, bad = parse_commitments(meta, commitments, competitions)
        problems += list(bad.values())
        # "copy" was a permanent failure in states saved before the live rules: a copy is scored now
        records = {hk: FetchRecord(**r) for hk, r in self.state.records.items() if r.get("reason") != "copy"}
        cache_of = {cid: self.cache_for(c.dataset, defaults) for cid, c in competitions.items()}
        problems += self.load_problems  # noted outside the stages: damaged cache files (loaded just now), a port
        self.load_problems = []
        changed = self._hotkey_changes(meta)
        sel = SelectionState.from_json(self.state.selection) if self.state.selection else SelectionState()

        def first_seen(content: str, hotkey: str, block: int) -> str:
            cache = cache_of[entries[hotkey].competition] if hotkey in entries else next(iter(cache_of.values()))
            return cache.first_seen.observe(content, hotkey, block)

        deadline = time.monotonic() + self.settings.download_budget_s
        health = HubHealth()  # one streak of network failures over the whole step
        fetch = lambda es: fetch_models(es, self.fetch, competitions, records, first_seen, now,  # noqa: E731
                                        deadline, self.retry_after, health=health)
        visited: dict[int, Entry] = {}
        if chain_update_due(self.last_chain_update, self.monotonic()):
            sel = self._chain_update(sel, meta, entries, competitions, fetch, records, visited, seed, now,
                                     deadline, changed)
        saved_sel = sel  # what a partial (stopped) step keeps: the visits done, the pools it started with
        t = stage("fetch", t)

        bench, bench_problems = benchmark_entries(self.settings.benchmark_path, competitions, self.bench_hashes)
        problems += bench_problems
        picks, chain_in_play, in_play = {}, {}, {}
        for cid, comp in competitions.items():
            cs = sel.competitions.get(cid) or CompetitionState()
            picks[cid] = pick_step(cs, pool_size=comp.pool_size, pend_size=comp.pend_size)
            chain_in_play[cid] = self._chain_entries(cid, picks[cid].evaluated, sel, meta, competitions, visited)
            fetch([e for e in chain_in_play[cid] if e.model_id is not None and e.path is None])
            in_play[cid] = chain_in_play[cid] + [b for b in bench if b.competition == cid]
        not_evaluated = unevaluated_entries(entries, records, {e.uid for es in chain_in_play.values() for e in es})
        self.state.records = {hk: asdict(r) for hk, r in records.items() if hk in entries}

        sample_ids: dict[str, list[str]] = {}
        n_samples = defaults.eval_samples
        for cid, comp in competitions.items():
            cache = cache_of[cid]
            try:
                cache.refresh(self.source_for(comp.dataset, rows_per_page=defaults.rows_per_page), seed, now)
            except Exception as e:  # noqa: BLE001 - a dead text source must not stop the step
                problems.append(f"competition {cid}: sample source {comp.dataset!r} failed: {e}")
            keys = [e.cache_key for e in in_play[cid] if e.path is not None]
            sample_ids[cid] = pick_eval_samples(cache.db, cache.losses, keys, n_samples, seed)
        t = stage("samples", t)

        n_models = sum(1 for es in in_play.values() for e in es if e.path is not None)
        if self.progress:
            self.progress.start("score", n_models)
        forwards = 0
        for cid, comp in competitions.items():
            def scored(e: Entry, n: int, cid: str = cid) -> None:
                # save after every model: a kill mid-step loses at most the model in flight
                try:
                    self.saver.cache(cache_of[cid], self._cache_path(competitions[cid].dataset))
                except OSError as exc:  # the losses stay in memory: ranked this step, written later
                    note_once(problems, save_problem(exc, "evaluation cache"))
                if self.progress:
                    self.progress.advance("score", f"{e.label}: {e.status}")
            forwards += score_entries(in_play[cid], comp, cache_of[cid], sample_ids[cid], self.score, seed,
                                      lambda: self.stopping, scored)
        for e in (e for es in in_play.values() for e in es):
            for note in e.notes:  # the operator's problem (e.g. the token cache not saved), never the model's
                if note not in problems:
                    problems.append(f"{e.label}: {note}")
        t = stage("score", t)

        tables = {}
        for cid, comp in competitions.items():
            chain_es = chain_in_play[cid]
            outcome = rank_chain(chain_es, comp, cache_of[cid], sample_ids[cid], block_now, seed,
                                 defaults.discard_winrate) if chain_es else None
            if outcome is not None and outcome.error:
                problems.append(f"competition {cid}: {outcome.error}")
            tables[cid] = rank_competition(in_play[cid] + [e for e in not_evaluated if e.competition == cid], comp,
                                           cache_of[cid], sample_ids[cid], block_now, seed, outcome, chain_es)
            if not self.stopping:  # a partial step keeps the pools it started with
                sel = finish_step(sel, cid, picks[cid], outcome).state
        self.state.selection = (saved_sel if self.stopping else sel).to_json()
        self._forget_dead_models(cache_of, entries, records, in_play)

        hof_rewards = self._hall_of_fame(meta, block_now, problems)
        per_comp = {cid: cs.weights for cid, cs in sel.competitions.items() if cid in competitions}
        prev = np.array(self.state.ema, dtype=np.float32) if len(self.state.ema) == constants.SUBNET_UIDS else None
        vector = ranking.weight_vector(per_comp, {cid: c.reward for cid, c in competitions.items()}, hof_rewards,
                                       constants.SUBNET_UIDS, prev)
        t = stage("rank", t)

        if self.stopping:
            weights_set = "not set: shutting down mid-step"
        elif vector is None:
            weights_set = "not set: no model has weight this step (the previous weights are kept)"
        elif err:
            weights_set = "not set: the chain sync failed, the metagraph is stale"
        else:
            weights_set = self._set_weights(vector, meta, now, paused)
        if vector is not None and not self.stopping:
            self.state.ema = [float(x) for x in vector]
        if self.cleanup:
            try:
                held = {e.path for es in in_play.values() for e in es if e.path is not None}
                self.cleanup(held | {Path(r.path) for r in records.values() if r.path})
            except OSError as e:
                problems.append(f"model store cleanup failed: {e}")
        self.state.step += 1
        self._try_save(problems)
        stage("save", t)
        ema = self.state.ema
        report = {"step": self.state.step, "block": block_now, "seed": seed, "forward_samples": forwards,
                  "competitions": tables, "problems": problems, "weights_set": weights_set, "paused": paused,
                  "weights": {str(u): float(w) for u, w in enumerate(ema) if w > 0 and u in meta.uids},
                  "hotkeys": {str(u): hk for u, hk in zip(meta.uids, meta.hotkeys)}}
        self._consensus(meta, report, problems)
        return self._finish(report, t0, stages)

    def _chain_update(self, sel: SelectionState, meta: Metagraph, entries: dict[str, Entry],
                      competitions: dict[str, Competition], fetch: Callable[[list[Entry]], None],
                      records: dict[str, FetchRecord], visited: dict[int, Entry], seed: int, now: float,
                      deadline: float, changed: list[int]) -> SelectionState:
        """The live chain update: visit (download) the uids the selection asks for; `visited`
        gets each visited uid's entry. A stop or a spent download budget ends it early; then
        the next step updates again."""
        by_uid = {e.uid: e for e in entries.values()}

        def visit(uid: int, commit: Commit) -> VisitResult:
            e = visited[uid] = by_uid[uid]
            fetch([e])
            if e.path is not None:
                return VisitResult.OK
            rec = records.get(e.hotkey)
            # skipped (budget, hub down) or a transient failure: the commitment counts as new next time
            return VisitResult.RETRY if e.status == "skipped" or (rec and rec.retry_at is not None) \
                else VisitResult.FAILED

        stop = lambda: self.stopping or time.monotonic() > deadline  # noqa: E731
        up = update_chain(sel, competitions=list(competitions), n_uids=max(meta.uids, default=-1) + 1,
                          chain={e.uid: Commit(commit_key(e), e.competition, e.block) for e in entries.values()},
                          validators=validators_from_metagraph(meta), wall_clock=now, visit=visit,
                          fractions=lambda uid: _fraction(seed, uid), hotkey_changed=changed, should_stop=stop)
        if not stop():
            self.last_chain_update = self.monotonic()
        return up.state

    @staticmethod
    def _chain_entries(cid: str, uids: list[int], sel: SelectionState, meta: Metagraph,
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

    def _hotkey_changes(self, meta: Metagraph) -> list[int]:
        """Uids whose hotkey changed since the last step (a new miner at a reused uid): their
        weight in the moving average and their last visit time are not inherited. A uid that
        left the metagraph loses its weight too, and its last hotkey is remembered, so the
        miner registered there later is a change as well."""
        changed = []
        now_at = {str(u): hk for u, hk in zip(meta.uids, meta.hotkeys)}
        for key, old in self.state.uid_hotkeys.items():
            hk = now_at.get(key)
            if hk == old or not key.isdigit():
                continue
            uid = int(key)
            if hk is not None:
                changed.append(uid)
            if uid < len(self.state.ema) and self.state.ema[uid]:
                log.info("uid %d: hotkey %s -> %s, its moving-average weight %.4g is not inherited",
                         uid, printable(old, 64), printable(hk, 64), self.state.ema[uid])
                self.state.ema[uid] = 0.0
        self.state.uid_hotkeys = {**{k: hk for k, hk in self.state.uid_hotkeys.items() if k not in now_at}, **now_at}
        return sorted(changed)

    def _consensus(self, meta: Metagraph, report: dict, problems: list[str]) -> None:
        try:
            report["consensus"] = consensus_report(meta, report["weights"], report, hotkey=self.hotkey)
        except ValueError as e:
            problems.append(f"consensus estimate failed: {e}")
            return
        warning = self.consensus_watch.observe(report["consensus"])
        if warning:
            log.warning(warning)
            problems.append(warning)

    @staticmethod
    def _forget_dead_models(cache_of: dict[str, "EvalCache"], entries: dict[str, Entry],
                            records: dict[str, FetchRecord], in_play: dict[str, list[Entry]]) -> None:
        """Drop loss rows of content no hotkey commits any more and of benchmark candidates
        no longer listed: without it the cache grows by a row per model ever scored, and is
        rewritten whole after every model. Models committed but out of the pool keep theirs
        (the revisit slice brings them back)."""
        live = {replace(entries[hk], content_hash=r.content_hash).cache_key for hk, r in records.items()
                if hk in entries and r.commitment == entries[hk].commitment and r.content_hash}
        live |= {e.cache_key for es in in_play.values() for e in es if e.content_hash}
        for cache in {id(c): c for c in cache_of.values()}.values():
            dropped = cache.losses.keep_models(live)
            if dropped:
                log.info("evaluation cache: forgot %d model(s) no longer committed or listed", len(dropped))

    def _finish(self, report: dict, t0: float, stages: dict) -> dict:
        report["seconds"] = time.monotonic() - t0
        report["stage_seconds"] = stages
        # problems quote repos, commitments and hub answers: escaped before the log or the console
        report["problems"] = [printable(p, constants.PROBLEM_MAX_CHARS) for p in report["problems"]]
        for path in (self.settings.state_dir / "last_step.json", self.settings.save_step_json):
            if path is None:
                continue
            try:
                self.saver.report(report, path)
            except OSError as e:  # the step's work is done and saved; only its report is not on disk
                note_once(report["problems"], save_problem(e, f"step report {path}"))
        return report

    def _hall_of_fame(self, meta: Metagraph, block_now: int, problems: list[str]) -> Mapping[int, float]:
        """The hall-of-fame shares of this block: from the source (refreshed on its interval,
        the last good copy kept) or the --hall-of-fame file; {} when there is none."""
        hof: Any = None
        if self.hall_of_fame is not None:
            self.hall_of_fame.maybe_reload()
            problems += list(self.hall_of_fame.problems())
            hof = self.hall_of_fame.hall_of_fame
        elif self.settings.hall_of_fame_path is not None and Path(self.settings.hall_of_fame_path).exists():
            try:
                hof = ranking.parse_hall_of_fame(read_json(self.settings.hall_of_fame_path), problems)
            except (ValueError, StateError) as e:
                problems.append(f"hall of fame {self.settings.hall_of_fame_path} ignored: {e}")
        if not hof:
            return {}
        return ranking.hall_of_fame_rewards(hof, dict(zip(meta.uids, meta.hotkeys)), block_now)

    def _set_weights(self, vector: np.ndarray, meta: Metagraph, now: float, paused: bool) -> str:
        if self.settings.offline or self.settings.dont_set_weights:
            return "not set: " + ("--offline" if self.settings.offline else "--dont-set-weights")
        last = self.state.last_weights_at
        if last is not None and 0 <= now - last < self.settings.weights_interval_s:
            return (f"not set: last set {now - last:.0f} s ago, interval "
                    f"{self.settings.weights_interval_s:.0f} s")
        n_uids = min(max(meta.uids, default=-1) + 1, len(vector))
        uids, values = ranking.u16_weights(vector, n_uids)
        if not uids:
            return "not set: the weights sum to less than 1e-5"
        try:
            # u16 / 65535: any max-normalising conversion in the chain client sends these u16 exactly
            self.chain.set_weights(uids, [v / ranking.U16_MAX for v in values], self.settings.version_key)
        except (ChainError, OSError, ValueError) as e:
            return f"not set: {e} (retried next step)"
        self.state.last_weights_block, self.state.last_weights_at = meta.block, now
        return f"set at block {meta.block} for {len(uids)} uids" + (" (paused: hall of fame only)" if paused else "")

    def run(self, steps: int | None = None) -> Iterator[dict]:
        """Yield each step's report until `steps` are done or SIGINT/SIGTERM; state is saved
        after every step and on the way out."""
        old = {s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            done = 0
            while not self.stopping and (steps is None or done < steps):
                started = time.monotonic()
                report = self.step()
                done += 1
                yield report
                while (not self.stopping and (steps is None or done < steps)
                       and time.monotonic() - started < self.settings.step_interval_s):
                    time.sleep(0.5)
        finally:
            self._try_save([], "final state")
            for s, h in old.items():
                signal.signal(s, h)
