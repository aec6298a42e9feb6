"""The Validator: one step = sync -> fetch -> score -> rank -> weigh.

Each stage is a function of its inputs; `Validator.step` wires them. The loop depends on
ports only: a `Chain`, a `fetch` function (the hub), a `score` function (a scoring worker)
and a `source_for` function (sample sources), all injected by `cli.py` or a test.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

import constants
from benchmark.config import BenchmarkError, load_benchmark
from validator import ranking
from validator.chain import Chain, ChainError, Commitment, Metagraph
from validator.competitions import Competition
from validator.data import seed_from_block_hash
from validator.evalcache import EvalCache, cache_file, pick_eval_samples, pick_rechecks, verify_rechecks
from validator.identity import InvalidCommitment, ModelId, dir_hash
from validator.state import (StateError, atomic_write_json, keep_bad_copy, load_or_default, read_json,
                             remove_stale_temps)

log = logging.getLogger(__name__)

# fetch(model_id, hotkey, competition) -> (verified snapshot dir, its directory hash); raises hub.HubError
FetchFn = Callable[[ModelId, str, Competition], tuple[Path, str]]
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

    Identical commitment text under two hotkeys: the older block wins (ties: lower uid)."""
    entries: dict[str, Entry] = {}
    problems: dict[str, str] = {}
    owner_of_text: dict[str, Entry] = {}
    for hotkey, c in sorted(commitments.items(), key=lambda kv: (kv[1].block, meta.uid_of(kv[0]) or 0)):
        uid = meta.uid_of(hotkey)
        if uid is None:
            continue  # deregistered hotkeys keep stale commitments on chain
        try:
            mid = ModelId.from_commitment(c.text)
        except InvalidCommitment as e:
            problems[hotkey] = f"uid {uid}: invalid commitment: {e}"
            continue
        if mid.competition not in competitions:
            problems[hotkey] = f"uid {uid}: unknown competition {mid.competition!r}"
            continue
        if c.text in owner_of_text:
            problems[hotkey] = f"uid {uid}: same commitment as uid {owner_of_text[c.text].uid}, which committed first"
            continue
        e = Entry(key=f"uid:{uid}", competition=mid.competition, label=f"uid {uid}", uid=uid, hotkey=hotkey,
                  block=c.block, commitment=c.text, model_id=mid, scoring=competitions[mid.competition].scoring_key)
        owner_of_text[c.text] = e
        entries[hotkey] = e
    return entries, problems


def other_validators_top(meta: Metagraph, self_hotkey: str | None, n: int) -> list[int]:
    """Uids most weighted by other validators, by stake-weighted weight."""
    score: dict[int, float] = {}
    for vuid, row in meta.weights.items():
        hk = meta.hotkey_of(vuid)
        if hk is None or hk == self_hotkey:
            continue
        stake = meta.stake[meta.uids.index(vuid)] if vuid in meta.uids else 0.0
        for uid, w in row.items():
            score[uid] = score.get(uid, 0.0) + stake * w
    return [uid for uid, s in sorted(score.items(), key=lambda kv: -kv[1]) if s > 0][:n]


def revisit_slice(uids: Iterable[int], now: float, period_s: float = constants.REVISIT_PERIOD_S,
                  slices: int = 16) -> set[int]:
    """A wall-clock slot -> a slice of uids, so all validators revisit the same uids together."""
    slot = int(now // (period_s / slices)) % slices
    return {uid for uid in uids if uid % slices == slot}


def choose_visits(
    entries: dict[str, Entry],
    pools: dict[str, list[str]],
    evaluated: dict[str, str],
    competitions: dict[str, Competition],
    top_uids: list[int],
    revisit: set[int],
    waiting: set[str] = frozenset(),
) -> set[str]:
    """Hotkeys whose models are evaluated this step.

    Per competition: the current pool (unchanged commitments), up to `pend_size` pending
    commitments (new or changed, oldest first), plus top miners and the revisit slice.
    `evaluated` maps hotkey -> the commitment text last evaluated; `waiting` are hotkeys whose
    last fetch failed and whose retry time has not come (they take no pending slot)."""
    visit: set[str] = set()
    for cid, comp in competitions.items():
        mine = {hk: e for hk, e in entries.items() if e.competition == cid}
        pool = [hk for hk in pools.get(cid, []) if hk in mine and evaluated.get(hk) == mine[hk].commitment]
        visit.update(pool)
        pending = sorted((e for hk, e in mine.items() if evaluated.get(hk) != e.commitment and hk not in waiting),
                         key=lambda e: (e.block, e.uid))
        visit.update(e.hotkey for e in pending[: comp.pend_size])
        visit.update(hk for hk, e in mine.items() if e.uid in top_uids or e.uid in revisit)
    return visit


def next_pool(old: list[str], rates: dict[str, float], size: int, unscored: set[str]) -> list[str]:
    """The `size` best by win rate, plus members of the old pool that were not scored this
    step (`unscored`: skipped, or a transient download failure): a member keeps its slot
    until it is scored and loses it, so a restart or a slow hub never drops a leader."""
    pool = ranking.select_pool(rates, size).pool
    return pool + [hk for hk in old if hk in unscored and hk not in rates and hk not in pool]


def _keeps_pool_slot(e: "Entry", record: "FetchRecord | None") -> bool:
    if e.status in ("skipped", "pending"):  # never reached this step (time budget, hub down)
        return True
    transient = e.path is None and record is not None and record.reason is not None and record.retry_at is not None
    return e.status == "failed" and transient


# --- stage 3: models on disk ----------------------------------------------------------------


@dataclass
class FetchRecord:
    """What happened the last time a hotkey's commitment was fetched (persisted)."""

    commitment: str
    reason: str | None = None  # a hub FailureReason value, "copy", or None when fine
    detail: str = ""
    attempts: int = 0
    retry_at: float | None = 0.0  # None: permanent, wait for a new commitment
    path: str | None = None
    content_hash: str | None = None


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
) -> None:
    """Ensure each entry's model is on disk and verified; sets entry.path / status in place.

    A failure is recorded per hotkey: transient ones are retried after a backoff, permanent
    ones wait for a new commitment. Content first seen under another hotkey is a copy.
    After a few network failures in a row the hub is taken as down for the rest of the
    step: each further try would cost its full timeout and retries."""
    network_failures = 0
    for e in entries:
        rec = records.get(e.hotkey)
        if rec is None or rec.commitment != e.commitment:
            rec = records[e.hotkey] = FetchRecord(commitment=e.commitment)
        if rec.reason is not None and (rec.retry_at is None or now < rec.retry_at):
            e.status, e.reason = "failed", f"{rec.reason}: {rec.detail}"
            continue
        if time.monotonic() > deadline:
            e.status, e.reason = "skipped", "download time budget of this step used up"
            continue
        if network_failures >= constants.HUB_MAX_NETWORK_FAILURES_IN_A_ROW:
            e.status, e.reason = "skipped", f"hub unreachable: {network_failures} network failures in a row"
            continue
        try:
            path, content = fetch(e.model_id, e.hotkey, competitions[e.competition])
        except Exception as exc:  # noqa: BLE001 - one bad model never stops the loop
            reason = getattr(getattr(exc, "reason", None), "value", None) or "network"
            network_failures = network_failures + 1 if reason == "network" else 0
            rec.attempts += 1
            wait = retry_after(reason, rec.attempts)
            rec.reason, rec.detail = reason, str(getattr(exc, "detail", "") or exc)[:300]
            rec.retry_at = None if wait is None else now + wait
            e.status, e.reason = "failed", f"{reason}: {rec.detail}"
            log.warning("uid %s: %s", e.uid, e.reason)
            if on_progress:
                on_progress(e)
            continue
        network_failures = 0
        original = first_seen(content, e.hotkey, e.block)
        rec.path, rec.content_hash = str(path), content
        if original != e.hotkey:
            rec.reason, rec.detail, rec.retry_at = "copy", f"same content as {original[:8]}, seen first", None
            e.status, e.reason = "failed", f"copy: {rec.detail}"
        else:
            rec.reason, rec.detail, rec.attempts = None, "", 0
            e.path, e.content_hash = path, content
        if on_progress:
            on_progress(e)


def _fingerprint(directory: Path) -> tuple:
    """What a file listing says about a directory's content: a change of any file's size or
    mtime changes it (a candidate being rewritten gets hashed again)."""
    return tuple(sorted((str(p.relative_to(directory)), st.st_size, st.st_mtime_ns)
                        for p in directory.rglob("*") if p.is_file() for st in [p.stat()]))


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
        return [], [str(e)]
    problems = [f"benchmark entry {k!r}: {v}" for k, v in errors.items()]
    out = []
    for bid, b in parsed.items():
        if b.competition not in competitions:
            problems.append(f"benchmark entry {bid!r}: unknown competition {b.competition!r}")
            continue
        try:
            fp = _fingerprint(b.path)
            if b.path not in hashes or hashes[b.path][0] != fp:
                hashes[b.path] = (fp, dir_hash(b.path))
            content = hashes[b.path][1]
        except OSError as e:
            problems.append(f"benchmark entry {bid!r}: cannot read {b.path}: {e}")
            continue
        out.append(Entry(key=f"bench:{bid}", competition=b.competition, label=b.label or bid, block=b.block,
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

    `on_scored(entry, n)` runs after each model, so the caller can save the cache: a kill
    between two models loses at most the model being scored."""
    forwards = 0
    step_samples = list(zip(sample_ids, cache.db.texts(sample_ids)))
    for e in entries:
        if e.path is None or should_stop():
            continue
        if not sample_ids:  # the text source failed with an empty database: nothing evaluated
            e.status, e.reason = "skipped", "no evaluation samples this step (see problems)"
            continue
        missing = cache.losses.missing(e.cache_key, sample_ids)
        missing_set = set(missing)
        rechecks = pick_rechecks(cache.losses, e.cache_key, [s for s in sample_ids if s not in missing_set], seed)
        todo = list(missing) + list(rechecks)
        if not todo:
            e.status = "cached"
            on_scored(e, 0)
            continue

        def run(ids: list[str]) -> dict | None:
            nonlocal forwards
            forwards += len(ids)
            res = score(e.path, list(zip(ids, cache.db.texts(ids))), comp, step_samples=step_samples)
            if res.get("failure"):
                e.status, e.reason = "failed", res["failure"]
                return None
            return res

        result, keep = run(todo), list(missing)  # a passing re-check keeps the cached value
        if result is not None and rechecks and not verify_rechecks(
                cache.losses, e.cache_key, {s: result["losses"][s] for s in rechecks}):
            # the cached row was wrong (nondeterminism or tampering) and has been reset
            e.reason = "re-check mismatch: cached losses reset"
            result, keep = run(sample_ids), list(sample_ids)
        if result is not None:
            cache.losses.put(e.cache_key, {s: result["losses"][s] for s in keep},
                             {s: result["n_tokens"][s] for s in keep})
            e.status = "scored" if missing else "cached"
        on_scored(e, len(todo))
    return forwards


# --- stage 6: ranking and weights ---------------------------------------------------------------


def rank_competition(entries: list[Entry], comp: Competition, cache: "EvalCache", sample_ids: list[str],
                     block_now: int, seed: int) -> dict:
    """The competition's table: per model stats, win rates and the head-to-head matrix.

    `win_rate` ranks every entry, benchmark candidates included; `chain_win_rate` is the
    same rule over chain models only, so a candidate never takes weight from a uid."""
    ok = [e for e in entries if e.status in ("scored", "cached")]
    blocks = np.array([np.nan if e.block is None else float(e.block) for e in ok])
    adv = ranking.advantages(blocks, block_now, comp.advantage_initial, comp.advantage_decay)
    on_chain = np.array([e.uid is not None for e in ok], dtype=bool)
    matrix: dict = {"labels": [e.label for e in ok]}
    table = []
    if ok and sample_ids:
        losses = cache.losses.get_matrix([e.cache_key for e in ok], sample_ids)
        ntok = cache.losses.get_ntokens([e.cache_key for e in ok], sample_ids)
        grouped = ranking.group_samples(losses, comp.group_samples, seed)
        n = grouped.shape[1]
        rule = (block_now, comp.advantage_initial, comp.advantage_decay)
        win_rate = ranking.win_rates(ranking.compute_wins(grouped, blocks, *rule), n)
        chain_rate = np.zeros(len(ok))
        if on_chain.any():
            chain_rate[on_chain] = ranking.win_rates(
                ranking.compute_wins(grouped[on_chain], blocks[on_chain], *rule), n)
        abs_rate = ranking.absolute_win_rates(grouped)
        wm = ranking.win_matrix(grouped, blocks, *rule)
        # strict JSON (the step report): a pair with no sample finite for both has mean_delta NaN -> null
        matrix.update({k: np.where(np.isfinite(v), v, None).tolist() if np.asarray(v).dtype.kind == "f"
                       else np.asarray(v).tolist() for k, v in wm.items()})
        with np.errstate(divide="ignore", invalid="ignore"):
            per_tok = losses / np.where(ntok > 0, ntok, np.nan)
        for i, e in enumerate(ok):
            finite_tok = per_tok[i][np.isfinite(per_tok[i])]
            finite = losses[i][np.isfinite(losses[i])]
            n_nan = int(np.isnan(losses[i]).sum())
            if n_nan and not e.reason:  # NaN weights give NaN losses: say why the model wins nothing
                e.reason = f"{n_nan} of {len(sample_ids)} losses are NaN (non-finite model outputs); NaN never wins"
            elif not finite.size and not e.reason:
                e.reason = f"no finite loss on any of {len(sample_ids)} samples"
            table.append({
                **_entry_row(e, block_now), "advantage": float(adv[i]),
                "win_rate": float(win_rate[i]), "chain_win_rate": float(chain_rate[i]) if on_chain[i] else None,
                "abs_win_rate": float(abs_rate[i]),
                "loss_per_token": float(finite_tok.mean()) if finite_tok.size else None,
                "loss_per_token_std": float(finite_tok.std()) if finite_tok.size else None,
                "loss_per_sample": float(finite.mean()) if finite.size else None,
                # per sample, for the plots of `coldint-validator leaderboard --out`
                "losses_per_token": [float(x) if np.isfinite(x) else None for x in per_tok[i]],
            })
    # ties in win rate (often 0 for all but the leader) are ordered by loss per token
    table.sort(key=lambda r: (-r["win_rate"], math.inf if r["loss_per_token"] is None else r["loss_per_token"]))
    table += [_entry_row(e, block_now) for e in entries if e not in ok]
    return {"models": table, "win_matrix": matrix, "n_samples": len(sample_ids),
            "group_samples": comp.group_samples, "block": block_now}


def _entry_row(e: Entry, block_now: int) -> dict:
    return {"key": e.key, "label": e.label, "uid": e.uid, "hotkey": e.hotkey, "block": e.block,
            "age_blocks": None if e.block is None else block_now - e.block, "status": e.status,
            "reason": e.reason, "content_hash": e.content_hash, "commitment": e.commitment,
            "win_rate": None, "weight": None}


def competition_weights(table: dict, comp: Competition) -> dict[int, float]:
    """uid -> normalised weight inside one competition; benchmark entries get none."""
    scored = [m for m in table["models"] if m.get("chain_win_rate") is not None]
    if not scored:
        return {}
    w = ranking.weights_from_win_rates(np.array([m["chain_win_rate"] for m in scored]), comp.weight_skew_factor)
    for m, wi in zip(scored, w):
        m["weight"] = float(wi)
    return {m["uid"]: float(wi) for m, wi in zip(scored, w) if wi > 0}


def step_weights(per_comp: dict[str, dict[int, float]], competitions: dict[str, Competition], n_uids: int,
                 hof: dict, hotkey_to_uid: dict[str, int], block_now: int,
                 prev: np.ndarray | None) -> np.ndarray:
    """Competitions mixed by reward, hall-of-fame shares added, EMA with the previous step."""
    mixed = ranking.mix_competitions(
        {cid: (np.array(list(w.keys()), dtype=int), np.array(list(w.values()))) for cid, w in per_comp.items() if w},
        {cid: c.reward for cid, c in competitions.items()}, n_uids)
    if hof:
        shares = ranking.hall_of_fame_weights(hof, hotkey_to_uid, block_now)
        mixed = ranking.apply_hall_of_fame(mixed, shares)
    if prev is not None and prev.shape == mixed.shape and prev.sum() > 0:
        mixed = ranking.ema(prev, mixed)
    return mixed


# --- the Validator --------------------------------------------------------------------------


@dataclass
class Settings:
    state_dir: Path
    offline: bool = False  # no weight setting (and no network chain; the cli picks the chain)
    dont_set_weights: bool = False
    benchmark_path: Path | None = None
    hall_of_fame_path: Path | None = None
    eval_samples: int = constants.EVAL_SAMPLES
    download_budget_s: float = constants.TTL_DOWNLOADS_S
    weights_interval_blocks: int = constants.MIN_WEIGHT_SET_INTERVAL_BLOCKS
    version_key: int = constants.WEIGHTS_VERSION_KEY
    save_step_json: Path | None = None
    step_interval_s: float = constants.STEP_MIN_INTERVAL_S


@dataclass
class ValidatorState:
    """What survives a restart, besides the eval caches."""

    step: int = 0
    ema: list[float] = field(default_factory=list)
    last_weights_block: int | None = None
    pools: dict[str, list[str]] = field(default_factory=dict)  # competition -> hotkeys
    evaluated: dict[str, str] = field(default_factory=dict)  # hotkey -> commitment text last evaluated
    records: dict[str, dict] = field(default_factory=dict)  # hotkey -> FetchRecord fields

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
            if "pools" in dropped or "evaluated" in dropped:
                # coupled: a model marked evaluated but in no pool would not be visited again
                kept.pop("pools", None)
                kept.pop("evaluated", None)
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
    if name == "ema":
        ok = isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                         and np.isfinite(x) and x >= 0 for x in v)
        return [float(x) for x in v] if ok else _BAD
    if name == "pools":
        ok = isinstance(v, dict) and all(isinstance(k, str) and isinstance(hs, list)
                                         and all(isinstance(h, str) for h in hs) for k, hs in v.items())
        return v if ok else _BAD
    if name == "evaluated":
        return v if isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) else _BAD
    if name == "records":
        if not isinstance(v, dict):
            return _BAD
        return {hk: r for hk, r in v.items()
                if isinstance(r, dict) and "commitment" in r and set(r) <= set(_RECORD_TYPES)
                and all(isinstance(x, _RECORD_TYPES[k]) and not isinstance(x, bool) for k, x in r.items())}
    return _BAD


class Validator:
    def __init__(self, chain: Chain, competitions: Callable[[], dict[str, Competition]], fetch: FetchFn,
                 score: ScoreFn, source_for: Callable[[str], Any], settings: Settings,
                 hotkey: str | None = None, retry_after: Callable[[str, int], float | None] | None = None,
                 cleanup: Callable[[set[Path]], Any] | None = None, progress: Any = None):
        self.chain, self.competitions, self.fetch, self.score = chain, competitions, fetch, score
        self.source_for, self.settings, self.hotkey, self.cleanup = source_for, settings, hotkey, cleanup
        self.retry_after = retry_after or (lambda reason, attempts: constants.DOWNLOAD_RETRY_BACKOFF_S[0])
        self.progress = progress
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        # temporary files of a save the last process was killed in (never part of the state)
        for sub in ("", "evalcache", "tokenizers"):
            remove_stale_temps(settings.state_dir / sub)
        self.state_path = settings.state_dir / "validator_state.json"
        self.state = ValidatorState.load(self.state_path)
        self.caches: dict[str, EvalCache] = {}
        self.load_problems: list[str] = []  # reported with the next step
        self.last_sync: tuple[Metagraph, dict[str, Commitment]] | None = None
        self.bench_hashes: dict[Path, tuple[tuple, str]] = {}  # benchmark candidates, see benchmark_entries
        self.stopping = False

    def note_problem(self, msg: str) -> None:
        """A problem found outside the step's stages (a port, a damaged file): in the next report."""
        self.load_problems.append(msg)

    # -- persistence --------------------------------------------------------------------------

    def cache_for(self, dataset: str) -> "EvalCache":
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
                self.state.evaluated.clear()  # those evaluations are gone: visit the models again
        return self.caches[dataset]

    def _cache_path(self, dataset: str) -> Path:
        return cache_file(self.settings.state_dir, dataset)

    def save(self) -> None:
        for dataset, cache in self.caches.items():
            cache.save(self._cache_path(dataset))
        self.state.save(self.state_path)

    def _try_save(self, problems: list[str], what: str = "state") -> None:
        """save(), but a failure (disk full, read-only disk) is reported, not raised: the state
        stays in memory and the next save writes it."""
        try:
            self.save()
        except OSError as e:
            msg = f"{what} save failed ({e}); kept in memory, saved again at the next save"
            log.error(msg)
            problems.append(msg)

    def request_stop(self, *_: Any) -> None:
        self.stopping = True

    # -- one step ---------------------------------------------------------------------------------

    def step(self) -> dict:
        t0 = time.monotonic()
        stages: dict[str, float] = {}
        problems: list[str] = []

        def stage(name: str, t: float) -> float:
            stages[name] = time.monotonic() - t
            return time.monotonic()

        t = time.monotonic()
        competitions = self.competitions()
        meta, commitments, err = sync_chain(self.chain, self.last_sync)
        if err:
            problems.append(err)
        if meta is None:
            return self._finish({"step": self.state.step, "block": None, "competitions": {}, "weights": {},
                                 "problems": problems, "weights_set": "not set: no metagraph"}, t0, stages)
        self.last_sync = (meta, commitments)
        block_now = meta.block
        now = time.time()
        t = stage("sync", t)

        entries, bad = parse_commitments(meta, commitments, competitions)
        problems += list(bad.values())
        records = {hk: FetchRecord(**r) for hk, r in self.state.records.items()}
        waiting = {hk for hk, r in records.items() if hk in entries and r.commitment == entries[hk].commitment
                   and r.reason is not None and (r.retry_at is None or now < r.retry_at)}
        visit = choose_visits(entries, self.state.pools, self.state.evaluated, competitions,
                              other_validators_top(meta, self.hotkey, constants.TOP_MINERS_TO_VISIT),
                              revisit_slice(meta.uids, now), waiting)
        chosen = sorted((entries[hk] for hk in visit), key=lambda e: (e.block, e.uid))
        cache_of = {cid: self.cache_for(c.dataset) for cid, c in competitions.items()}
        problems += self.load_problems  # noted outside the stages: damaged cache files, a failed competitions reload
        self.load_problems = []

        def first_seen(content: str, hotkey: str, block: int) -> str:
            cache = cache_of[entries[hotkey].competition]
            return cache.first_seen.observe(content, hotkey, block)

        deadline = time.monotonic() + self.settings.download_budget_s
        if self.progress:
            self.progress.start("download", len(chosen))
        fetch_models(chosen, self.fetch, competitions, records, first_seen, now, deadline, self.retry_after,
                     on_progress=(lambda e: self.progress.advance("download", e.label)) if self.progress else None)
        self.state.records = {hk: asdict(r) for hk, r in records.items() if hk in entries}
        bench, bench_problems = benchmark_entries(self.settings.benchmark_path, competitions, self.bench_hashes)
        problems += bench_problems
        t = stage("fetch", t)

        # samples: seeded by the hash of the last epoch boundary, so validators agree
        seed_block = block_now - block_now % constants.BLOCKS_PER_EPOCH
        try:
            seed = seed_from_block_hash(self.chain.block_hash(seed_block))
        except (ChainError, OSError) as e:
            seed = seed_block
            problems.append(f"block hash of {seed_block} unavailable ({e}); seeding with the block number")
        in_play: dict[str, list[Entry]] = {cid: [] for cid in competitions}
        for e in chosen + bench:
            in_play[e.competition].append(e)
        sample_ids: dict[str, list[str]] = {}
        for cid, comp in competitions.items():
            cache = cache_of[cid]
            try:
                cache.refresh(self.source_for(comp.dataset), seed, now)
            except Exception as e:  # noqa: BLE001 - a dead text source must not stop the step
                problems.append(f"competition {cid}: sample source {comp.dataset!r} failed: {e}")
            keys = [e.cache_key for e in in_play[cid] if e.path is not None]
            sample_ids[cid] = pick_eval_samples(cache.db, cache.losses, keys, self.settings.eval_samples, seed)
        t = stage("samples", t)

        n_models = sum(1 for es in in_play.values() for e in es if e.path is not None)
        if self.progress:
            self.progress.start("score", n_models)
        forwards = 0
        for cid, comp in competitions.items():
            def scored(e: Entry, n: int, cid: str = cid) -> None:
                # save after every model: a kill mid-step loses at most the model in flight
                try:
                    cache_of[cid].save(self._cache_path(competitions[cid].dataset))
                except OSError as exc:
                    msg = f"evaluation cache save failed ({exc}); kept in memory"
                    if msg not in problems:
                        log.error(msg)
                        problems.append(msg)
                if self.progress:
                    self.progress.advance("score", f"{e.label}: {e.status}")
            forwards += score_entries(in_play[cid], comp, cache_of[cid], sample_ids[cid], self.score, seed,
                                      lambda: self.stopping, scored)
        t = stage("score", t)

        tables, per_comp = {}, {}
        by_hotkey = {e.hotkey: e for e in chosen}
        for cid, comp in competitions.items():
            tables[cid] = rank_competition(in_play[cid], comp, cache_of[cid], sample_ids[cid], block_now, seed)
            per_comp[cid] = competition_weights(tables[cid], comp)
            if self.stopping:
                continue  # a partial step keeps the pools it started with
            # chain-only win rates: a benchmark candidate neither takes nor frees a pool slot.
            # Table order (win rate, then loss per token); select_pool's sort is stable on ties.
            rates = {m["hotkey"]: m["chain_win_rate"] for m in tables[cid]["models"]
                     if m.get("chain_win_rate") is not None}
            unscored = {hk for hk in self.state.pools.get(cid, [])
                        if hk in by_hotkey and _keeps_pool_slot(by_hotkey[hk], records.get(hk))}
            self.state.pools[cid] = next_pool(self.state.pools.get(cid, []), rates, comp.pool_size, unscored)
        for e in chosen:
            # failed ones too: a model that breaks its worker is not re-run every step (the
            # revisit slice and a new commitment bring it back). A transient download failure
            # and a skip stay pending: retried once the backoff has passed.
            transient = e.path is None and records[e.hotkey].retry_at is not None
            if e.status in ("scored", "cached") or (e.status == "failed" and not transient):
                self.state.evaluated[e.hotkey] = e.commitment
        self._forget_dead_models(cache_of, entries, records, in_play)
        n_uids = max(meta.uids, default=-1) + 1
        prev = np.array(self.state.ema) if self.state.ema else None
        weights = step_weights(per_comp, competitions, n_uids, self._hall_of_fame(problems),
                               {hk: meta.uid_of(hk) for hk in meta.hotkeys}, block_now, prev)
        t = stage("rank", t)

        if self.stopping:
            weights_set = "not set: shutting down mid-step"
        elif err:
            weights_set = "not set: the chain sync failed, the metagraph is stale"
        elif not any(per_comp.values()):
            # no model scored this step (all failed): the EMA alone would re-set old weights
            weights_set = "not set: no model has weight this step"
        else:
            weights_set = self._set_weights(weights, block_now)
        if weights.sum() > 0 and any(per_comp.values()) and not self.stopping:
            self.state.ema = weights.tolist()  # a partial step must not move the average
        if self.cleanup:
            try:
                self.cleanup({e.path for es in in_play.values() for e in es if e.path is not None})
            except OSError as e:
                problems.append(f"model store cleanup failed: {e}")
        self.state.step += 1
        self._try_save(problems)
        stage("save", t)
        report = {"step": self.state.step, "block": block_now, "seed": seed, "forward_samples": forwards,
                  "competitions": tables, "problems": problems, "weights_set": weights_set,
                  "weights": {str(u): float(w) for u, w in enumerate(weights) if w > 0},
                  "hotkeys": {str(u): hk for u, hk in zip(meta.uids, meta.hotkeys)}}
        return self._finish(report, t0, stages)

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
        for path in (self.settings.state_dir / "last_step.json", self.settings.save_step_json):
            if path is None:
                continue
            try:
                atomic_write_json(path, report)
            except OSError as e:  # the step's work is done and saved; only its report is not on disk
                log.error("cannot write the step report %s: %s", path, e)
                report["problems"].append(f"step report {path} not written: {e}")
        return report

    def _hall_of_fame(self, problems: list[str]) -> dict:
        path = self.settings.hall_of_fame_path
        if path is None or not Path(path).exists():
            return {}
        try:
            return ranking.parse_hall_of_fame(read_json(path))
        except (ValueError, StateError) as e:
            problems.append(f"hall of fame {path} ignored: {e}")
            return {}

    def _set_weights(self, weights: np.ndarray, block_now: int) -> str:
        if self.settings.offline or self.settings.dont_set_weights:
            return "not set: " + ("--offline" if self.settings.offline else "--dont-set-weights")
        if not np.isfinite(weights).all() or weights.sum() <= 0:
            return "not set: no model has weight this step"
        last = self.state.last_weights_block
        if last is not None and block_now - last < self.settings.weights_interval_blocks:
            return f"not set: last set at block {last}, interval {self.settings.weights_interval_blocks} blocks"
        uids = [int(u) for u in np.nonzero(weights)[0]]
        try:
            final = ranking.finalize_weights(weights[uids])
            self.chain.set_weights(uids, final.tolist(), self.settings.version_key)
        except (ChainError, OSError, ValueError) as e:
            return f"not set: {e} (retried next step)"
        self.state.last_weights_block = block_now
        return f"set at block {block_now} for {len(uids)} uids"

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
