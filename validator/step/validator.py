"""The Validator: one step = sync -> select -> fetch -> score -> rank -> weigh -> save -> report.

`Validator.step` only sequences the stages (validator/step/*.py); each stage is a function of
its inputs. The validator depends on ports only (validator.ports): a Chain, a ModelSource, a
Scorer, sample sources, a CompetitionsSource and a CandidateSource, plugged in by the caller.
"""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import constants
from validator.core.seeding import seed_from_block_hash
from validator.adapters.evalcache import EvalCache, cache_file
from validator.adapters.files import keep_bad_copy, remove_stale_temps
from validator.core.chain import ChainError, Commitment, Metagraph
from validator.core.competitions import Competition, CompetitionsFile, ValidatorDefaults, effective
from validator.core.consensus import ConsensusWatch, consensus_report
from validator.core.entries import Entry
from validator.core.rechecks import pick_eval_samples
from validator.core.selection import CompetitionState, SelectionState, finish_step, pick_step
from validator.core.visits import chain_update_due
from validator.ports import CandidateSource, Chain, CompetitionsSource, ModelSource, SampleSource, Scorer
from validator.step import report as reports
from validator.step.context import StageTimer, StepContext
from validator.step.evaluate import score_entries
from validator.step.fetch import fetch_models
from validator.step.persist import Saver, note_once, save_problem
from validator.step.rank import rank_competition
from validator.step.select import chain_entries, chain_update, hotkey_changes, parse_commitments, sync_chain
from validator.step.state import ValidatorState
from validator.step.weigh import hall_of_fame_rewards, not_set_reason, set_weights, step_vector

log = logging.getLogger(__name__)


@dataclass
class Settings:
    state_dir: Path
    offline: bool = False  # no weight setting (and no network chain; the cli picks the chain)
    dont_set_weights: bool = False
    hall_of_fame_path: Path | None = None  # a file; `hall_of_fame=` of the Validator takes a source
    eval_samples: int | None = None  # None: competitions.json's eval_samples (live), else this
    download_budget_s: float = constants.TTL_DOWNLOADS_S
    weights_interval_s: float = constants.MIN_WEIGHT_SET_INTERVAL_S
    version_key: int = constants.WEIGHTS_VERSION_KEY
    save_step_json: Path | None = None
    step_interval_s: float = constants.STEP_MIN_INTERVAL_S


def _no_candidates(competitions: dict[str, Competition]) -> tuple[list[Entry], list[str]]:
    return [], []


class Validator:
    """The validator: its ports, settings and state; `step()` runs one step, `run()` the loop."""

    def __init__(self, chain: Chain, competitions: CompetitionsSource, fetch: ModelSource,
                 score: Scorer, source_for: Callable[..., SampleSource], settings: Settings,
                 hotkey: str | None = None, retry_after: Callable[[str, int], float | None] | None = None,
                 cleanup: Callable[[set[Path]], Any] | None = None, progress: Any = None,
                 hall_of_fame: Any = None, overrides: dict[str, Any] | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] | None = None,
                 saver: Saver | None = None, candidates: CandidateSource | None = None):
        self.chain, self.competitions, self.fetch, self.score = chain, competitions, fetch, score
        self.source_for, self.settings, self.hotkey, self.cleanup = source_for, settings, hotkey, cleanup
        self.retry_after = retry_after or (lambda reason, attempts: constants.DOWNLOAD_RETRY_BACKOFF_S[0])
        self.progress = progress
        self.hall_of_fame = hall_of_fame  # a source with .hall_of_fame / .maybe_reload() / .problems(); or None
        self.overrides = {"eval_samples": settings.eval_samples, **(overrides or {})}
        self.clock = clock  # wall clock: persisted times (visits, retries, weight sets), the revisit slice
        self._monotonic = monotonic  # see monotonic()
        self.saver = saver or Saver()
        self.candidates = candidates or _no_candidates  # benchmark.json: adapters.candidates.BenchmarkCandidates
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

    def cache_for(self, dataset: str, defaults: ValidatorDefaults | None = None) -> EvalCache:
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
        timer, problems = StageTimer(), []
        competitions, defaults, paused = self._config(problems)
        meta, commitments, err = sync_chain(self.chain, self.last_sync)
        if err:
            problems.append(err)
        if meta is None:
            return self._finish(reports.no_metagraph_report(self.state.step, problems), timer)
        self.last_sync = (meta, commitments)
        ctx = self._begin(timer, problems, competitions, defaults, paused, meta, commitments, stale=bool(err))
        if chain_update_due(self.last_chain_update, self.monotonic()):
            self._chain_update(ctx)
        ctx.saved_sel = ctx.sel
        timer.lap("fetch")
        self._select_field(ctx)
        self._pick_samples(ctx)
        timer.lap("samples")
        self._score(ctx)
        timer.lap("score")
        self._rank(ctx)
        vector = step_vector(ctx.sel, competitions, self._hall_of_fame(ctx), self.state.ema)
        timer.lap("rank")
        weights_set, set_at = self._weights(ctx, vector)
        self._cleanup(ctx)
        self.state = self.state.advance(
            records={hk: r for hk, r in ctx.records.items() if hk in ctx.entries},
            selection=ctx.saved_sel if self.stopping else ctx.sel,
            ema=None if vector is None or self.stopping else [float(x) for x in vector], weights_set_at=set_at)
        self._try_save(problems)
        timer.lap("save")
        report = reports.step_report(step=self.state.step, meta=meta, seed=ctx.seed, forwards=ctx.forwards,
                                     tables=ctx.tables, problems=problems, weights_set=weights_set,
                                     paused=paused, ema=self.state.ema)
        self._consensus(meta, report, problems)
        return self._finish(report, timer)

    # -- the stages -------------------------------------------------------------------------------

    def _begin(self, timer: StageTimer, problems: list[str], competitions: dict[str, Competition],
               defaults: ValidatorDefaults, paused: bool, meta: Metagraph, commitments: dict[str, Commitment],
               stale: bool) -> StepContext:
        """The step's context: its seed, the chain entries, fetch records, caches and selection."""
        now, seed = self.clock(), self._seed(meta.block, problems)
        timer.lap("sync")
        entries, bad = parse_commitments(meta, commitments, competitions)
        problems += list(bad.values())
        cache_of = {cid: self.cache_for(c.dataset, defaults) for cid, c in competitions.items()}
        problems += self.load_problems  # noted outside the stages: damaged cache files (loaded just now), a port
        self.load_problems = []
        changed, ema, uid_hotkeys = hotkey_changes(self.state.uid_hotkeys, self.state.ema, meta)
        self.state = self.state.with_hotkeys(ema, uid_hotkeys)
        sel = SelectionState.from_json(self.state.selection) if self.state.selection else SelectionState()
        return StepContext(timer=timer, problems=problems, competitions=competitions, defaults=defaults,
                           paused=paused, meta=meta, stale=stale, now=now, seed=seed, entries=entries,
                           records=self.state.fetch_records(), cache_of=cache_of, sel=sel,
                           deadline=time.monotonic() + self.settings.download_budget_s, changed=changed)

    def _fetch(self, ctx: StepContext, entries: list[Entry]) -> None:
        fetch_models(entries, self.fetch, ctx.competitions, ctx.records, ctx.first_seen, ctx.now, ctx.deadline,
                     self.retry_after, health=ctx.health)

    def _fetch_stopped(self, ctx: StepContext) -> bool:
        return self.stopping or time.monotonic() > ctx.deadline

    def _chain_update(self, ctx: StepContext) -> None:
        """The live chain update; a complete one is not due again for its interval."""
        ctx.sel, ctx.visited = chain_update(ctx.sel, ctx.meta, ctx.entries, ctx.competitions,
                                            partial(self._fetch, ctx), ctx.records, ctx.seed, ctx.now,
                                            ctx.changed, partial(self._fetch_stopped, ctx))
        if not self._fetch_stopped(ctx):
            self.last_chain_update = self.monotonic()

    def _select_field(self, ctx: StepContext) -> None:
        """Each competition's evaluated chain entries (fetched) and benchmark candidates."""
        bench, bench_problems = self.candidates(ctx.competitions)
        ctx.problems += bench_problems
        for cid, comp in ctx.competitions.items():
            cs = ctx.sel.competitions.get(cid) or CompetitionState()
            ctx.picks[cid] = pick_step(cs, pool_size=comp.pool_size, pend_size=comp.pend_size)
            ctx.chain_in_play[cid] = chain_entries(cid, ctx.picks[cid].evaluated, ctx.sel, ctx.meta,
                                                   ctx.competitions, ctx.visited)
            self._fetch(ctx, [e for e in ctx.chain_in_play[cid] if e.model_id is not None and e.path is None])
            ctx.in_play[cid] = ctx.chain_in_play[cid] + [b for b in bench if b.competition == cid]
        evaluated = {e.uid for es in ctx.chain_in_play.values() for e in es}
        ctx.not_evaluated = reports.unevaluated_entries(ctx.entries, ctx.records, evaluated)

    def _pick_samples(self, ctx: StepContext) -> None:
        """Refresh each competition's sample database and pick the step's evaluation samples."""
        for cid, comp in ctx.competitions.items():
            cache = ctx.cache_of[cid]
            try:
                cache.refresh(self.source_for(comp.dataset, rows_per_page=ctx.defaults.rows_per_page), ctx.seed,
                              ctx.now)
            except Exception as e:  # noqa: BLE001 - a dead text source must not stop the step
                ctx.problems.append(f"competition {cid}: sample source {comp.dataset!r} failed: {e}")
            keys = [e.cache_key for e in ctx.in_play[cid] if e.path is not None]
            ctx.sample_ids[cid] = pick_eval_samples(cache.db, cache.losses, keys, ctx.defaults.eval_samples,
                                                    ctx.seed)

    def _scored(self, ctx: StepContext, cid: str, e: Entry, n: int) -> None:
        # save after every model: a kill mid-step loses at most the model in flight
        try:
            self.saver.cache(ctx.cache_of[cid], self._cache_path(ctx.competitions[cid].dataset))
        except OSError as exc:  # the losses stay in memory: ranked this step, written later
            note_once(ctx.problems, save_problem(exc, "evaluation cache"))
        if self.progress:
            self.progress.advance("score", f"{e.label}: {e.status}")

    def _stop_requested(self) -> bool:
        return self.stopping

    def _score(self, ctx: StepContext) -> None:
        if self.progress:
            self.progress.start("score", sum(1 for e in ctx.in_play_entries() if e.path is not None))
        for cid, comp in ctx.competitions.items():
            ctx.forwards += score_entries(ctx.in_play[cid], comp, ctx.cache_of[cid], ctx.sample_ids[cid],
                                          self.score, ctx.seed, self._stop_requested, partial(self._scored, ctx, cid))
        for e in ctx.in_play_entries():
            for note in e.notes:  # the operator's problem (e.g. the token cache not saved), never the model's
                if note not in ctx.problems:
                    ctx.problems.append(f"{e.label}: {note}")

    def _rank(self, ctx: StepContext) -> None:
        """Each competition's ranking: its table, and (unless stopping: a partial step keeps the
        pools it started with) the selection's next pool and weights, from the typed ranking."""
        for cid, comp in ctx.competitions.items():
            shown = ctx.in_play[cid] + [e for e in ctx.not_evaluated if e.competition == cid]
            ranked = rank_competition(shown, comp, ctx.cache_of[cid], ctx.sample_ids[cid], ctx.block, ctx.seed,
                                      chain_entries=ctx.chain_in_play[cid],
                                      discard_winrate=ctx.defaults.discard_winrate)
            if ranked.error:
                ctx.problems.append(f"competition {cid}: {ranked.error}")
            ctx.tables[cid] = reports.competition_table(shown, ranked)
            if not self.stopping:
                ctx.sel = finish_step(ctx.sel, cid, ctx.picks[cid], ranked.chain).state
        self._forget_dead_models(ctx)

    def _hall_of_fame(self, ctx: StepContext):
        return hall_of_fame_rewards(self.hall_of_fame, self.settings.hall_of_fame_path, ctx.meta, ctx.block,
                                    ctx.problems)

    def _weights(self, ctx: StepContext, vector) -> tuple[str, tuple[int, float] | None]:
        """What happened to this step's weights, and the (block, wall clock) of a set."""
        reason = not_set_reason(vector, stopping=self.stopping, stale=ctx.stale)
        if reason is not None:
            return reason, None
        s = self.settings
        text, ok = set_weights(self.chain, vector, ctx.meta, ctx.now, ctx.paused, last_set_at=self.state.last_weights_at,
                               offline=s.offline, dont_set_weights=s.dont_set_weights,
                               interval_s=s.weights_interval_s, version_key=s.version_key)
        return text, (ctx.block, ctx.now) if ok else None

    def _cleanup(self, ctx: StepContext) -> None:
        if not self.cleanup:
            return
        try:
            held = {e.path for e in ctx.in_play_entries() if e.path is not None}
            self.cleanup(held | {Path(r.path) for r in ctx.records.values() if r.path})
        except OSError as e:
            ctx.problems.append(f"model store cleanup failed: {e}")

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
    def _forget_dead_models(ctx: StepContext) -> None:
        """Drop loss rows of content no hotkey commits any more and of benchmark candidates
        no longer listed: without it the cache grows by a row per model ever scored, and is
        rewritten whole after every model. Models committed but out of the pool keep theirs
        (the revisit slice brings them back)."""
        entries = ctx.entries
        live = {replace(entries[hk], content_hash=r.content_hash).cache_key for hk, r in ctx.records.items()
                if hk in entries and r.commitment == entries[hk].commitment and r.content_hash}
        live |= {e.cache_key for e in ctx.in_play_entries() if e.content_hash}
        for cache in {id(c): c for c in ctx.cache_of.values()}.values():
            dropped = cache.losses.keep_models(live)
            if dropped:
                log.info("evaluation cache: forgot %d model(s) no longer committed or listed", len(dropped))

    def _finish(self, report: dict, timer: StageTimer) -> dict:
        report = reports.finished(report, timer.total(), timer.stages)
        for path in (self.settings.state_dir / "last_step.json", self.settings.save_step_json):
            if path is None:
                continue
            try:
                self.saver.report(report, path)
            except OSError as e:  # the step's work is done and saved; only its report is not on disk
                note_once(report["problems"], save_problem(e, f"step report {path}"))
        return report

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
