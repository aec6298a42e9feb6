"""`coldint-validator benchmark`: would my candidate win against the field?

A plugin of `coldint-validator` (the `coldint_validator.commands` entry point in setup.py):
validator/ never imports this package. The field is what a candidate would have to beat:

- online (default): the top ``--top`` uids per competition by incentive on the chain
  (``--network``), downloaded at their committed revision and verified through the hub
  code, exactly as the validator does (validator.step.fetch.fetch_models over the model
  source validator.app wires);
- ``--offline``: no network at all (validator.app.check_offline). Without ``--network`` no
  chain is read; ``--network local`` reads the field's uids from a LocalChain file and their
  models from a local mirror (``--hf-endpoint local:DIR``); any other network is refused.

In both modes a benchmark.json entry WITH a ``block`` is an incumbent (it joins the field
and takes weight as if it had been committed at that block) and an entry WITHOUT a block is
a candidate, judged alone against the field (benchmark.field). Before any scoring every
entry passes the checks a validator applies to a download (benchmark.refusals).

Exit status (EXIT_*): 0 a candidate beats its leader, 1 candidates were judged and none
beats its leader, 2 nothing could be judged (every candidate refused or failed, no field,
no complete group, bad input, no chain).

Every model is scored on the same seeded samples (``--samples``, ``--seed``) with the
validator's scoring engine; losses go into an EvalCache under ``--state-dir``, keyed by
model content and sample id, so a rerun with the same seed only re-checks a few losses.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

import constants
from benchmark import intervals
from benchmark import stats as bstats
from benchmark.field import EXIT_NOT_JUDGED, CompetitionField, ScoredModel, compare_field, exit_status
from benchmark.refusals import entry_kind, refused_entries
from benchmark.render import print_report
from validator import app
from validator.adapters.htmlreport import write_report
from validator.adapters.leaderboard import make_console
from validator.core.failures import retry_after

if TYPE_CHECKING:  # imported lazily at run time, like the rest of the scoring side
    from validator.adapters.evalcache import EvalCache

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path(constants.STATE_DIR_DEFAULT) / "benchmark"
DEFAULT_BENCHMARK = Path("benchmark.json")
# --network local without --chain-db: the chain the validator's `run` uses by default
DEFAULT_LOCAL_CHAIN = Path(constants.CHAIN_DB_DEFAULT)

EXIT_HELP = ("exit status: 0 a candidate beats the leader; 1 candidates were judged and none beats the "
             "leader (or it is too close to call); 2 no candidate could be judged (would be refused, "
             "failed, no field, bad input)")


def top_by_incentive(meta: Any, entries: list, competition: str, n: int) -> list:
    """The competition's n chain entries with the most incentive (ties: older block, lower uid)."""
    inc = dict(zip(meta.uids, meta.incentive))
    mine = [e for e in entries if e.competition == competition]
    mine.sort(key=lambda e: (-inc.get(e.uid, 0.0), e.block, e.uid))
    return mine[:max(n, 0)]


def _chain_field(args, parts: app.BenchmarkParts, competitions: dict, wanted: set[str], caches: dict,
                 progress, problems: list[str]) -> tuple[int, list]:
    """(block_now, fetched chain entries) of the competitions in `wanted`."""
    from validator.step.fetch import fetch_models
    from validator.step.select import parse_commitments

    meta, commitments = parts.chain.sync()
    entries, bad = parse_commitments(meta, commitments, competitions)
    if bad:  # the live chain carries many stale or broken commitments: a count, details in the log
        problems.append(f"{len(bad)} commitments skipped (invalid, unknown competition or a copy)")
        for v in bad.values():
            log.info("commitment skipped: %s", v)
    picked = [e for cid in sorted(wanted) for e in top_by_incentive(meta, list(entries.values()), cid, args.top)]
    for e in picked:  # "uid 7 org/name": the uid for the verdicts, the repo for a person
        e.label = f"uid {e.uid} {e.model_id.repo_id}"

    def first_seen(content: str, hotkey: str, block: int) -> str:
        comp = competitions[entries[hotkey].competition]
        return caches[comp.dataset].first_seen.observe(content, hotkey, block)

    progress.start("download", len(picked))
    fetch_models(picked, parts.fetch, competitions, {}, first_seen, time.time(),
                 time.monotonic() + constants.TTL_DOWNLOADS_S, retry_after, on_progress=lambda e: progress.advance("download", e.label))
    return meta.block, picked


def _store_samples(cache: EvalCache, samples: list) -> list[str]:
    """Put this run's samples in the evaluation cache's db; their ids, in order, once each
    (a source's garbage rows left out). The add keeps every one of them, even at the cap."""
    rows = cache.db.usable_rows(samples)
    cache.losses.drop_samples(cache.db.add(rows.items(), time.time()).dropped)
    return list(rows)


def run_benchmark(args: argparse.Namespace, console: Console | None = None) -> int:
    """The `benchmark` command; returns its exit status (EXIT_BEATS, EXIT_DOES_NOT, EXIT_NOT_JUDGED)."""
    from validator.adapters.candidates import benchmark_entries
    from validator.core.candidates import BenchmarkError
    from validator.adapters.competitions_source import load_competitions
    from validator.core.competitions import CompetitionsError
    from validator.cli.hub import EndpointError, open_endpoint
    from validator.preflight import SetupError

    console = console or make_console()

    def fail(msg: str, code: int) -> int:
        console.print(f"[red]error:[/red] {msg}", highlight=False)
        return code

    if args.bootstrap < intervals.BOOTSTRAP_MIN_RESAMPLES:
        return fail(f"--bootstrap {args.bootstrap}: at least {intervals.BOOTSTRAP_MIN_RESAMPLES} resamples", 2)
    if args.samples < 1 or args.top < 0:
        return fail(f"--samples must be >= 1 and --top >= 0 (got {args.samples}, {args.top})", 2)
    if args.samples > constants.DB_MAX_SAMPLES:  # the sample db could not hold them all at once
        return fail(f"--samples {args.samples}: at most {constants.DB_MAX_SAMPLES} (the sample database's cap)", 2)
    if not Path(args.benchmark).is_file():
        return fail(f"{args.benchmark}: no such benchmark.json (see benchmark_example.json)", 2)
    config = config_from_args(args)
    try:
        app.check_offline(config, chain_needed=False)  # before anything is read: offline reads no URL either
    except SetupError as e:
        return fail(str(e), 2)
    try:
        competitions = load_competitions(app.benchmark_competitions_location(config))
    except (CompetitionsError, OSError) as e:
        return fail(f"competitions: {e}", 2)
    try:
        bench, problems = benchmark_entries(Path(args.benchmark), competitions)
    except BenchmarkError as e:
        return fail(str(e), 2)
    refused = refused_entries(Path(args.benchmark), competitions, bench, problems)
    if problems and not args.skip_bad_entries:  # a typo must not silently shrink the field or drop a candidate
        for p in problems:
            console.print(f"[red]error:[/red] {p}", highlight=False)
        return fail(f"{args.benchmark}: {len(problems)} unusable entr{'y' if len(problems) == 1 else 'ies'} "
                    "(fix them, or pass --skip-bad-entries to run without them)", 2)
    if not refused and not any(e.block is None for e in bench):
        return fail(f"{args.benchmark}: no candidate (an entry without a \"block\"); entries with a block are "
                    "incumbents" + (f"; skipped: {'; '.join(problems)}" if problems else ""), 2)
    refused_keys = {x["key"] for x in refused}
    candidates = [e for e in bench if e.block is None and e.key not in refused_keys]
    incumbents = [e for e in bench if e.block is not None and e.key not in refused_keys]
    for x in refused:
        console.print(f"[red]{x['label']}[/red] ({x['kind']}, {x['competition']}): {x['reason']}", highlight=False)
        if x["kind"] != "candidate":
            problems.append(f"incumbent {x['label']}: {x['reason']}")
    if not candidates:
        return fail("no candidate can be judged: every candidate would be refused (see above)", EXIT_NOT_JUDGED)
    wanted = {e.competition for e in candidates}
    try:
        endpoint, close_endpoint = open_endpoint(config.hub_endpoint)
    except EndpointError as e:
        return fail(f"--hf-endpoint: {e}", 2)
    hub_offline = os.environ.get("HF_HUB_OFFLINE")
    try:
        config = dataclasses.replace(config, endpoint=endpoint)
        app.hub_offline(config)  # offline without a mirror: tokenizers and models only from disk
        try:
            parts = app.build_benchmark(config)
        except SetupError as e:
            return fail(str(e), EXIT_NOT_JUDGED)
        return _run_judged(args, parts, console, fail, competitions, candidates, incumbents, refused, wanted,
                           problems)
    finally:
        close_endpoint()
        if hub_offline is None:  # this process may go on (tests, a caller): the switch was for this run
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = hub_offline


def _run_judged(args: argparse.Namespace, parts: app.BenchmarkParts, console: Console, fail, competitions: dict,
                candidates: list, incumbents: list, refused: list[dict], wanted: set[str], problems: list[str]) -> int:
    """run_benchmark once the entries are checked and its parts (validator.app.build_benchmark) are wired."""
    from validator.adapters.evalcache import EvalCache, cache_file
    from validator.adapters.files import StateError
    from validator.adapters.leaderboard import StepProgress
    from validator.core.chain import ChainError
    from validator.step.evaluate import score_entries

    warnings: list[str] = []
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    caches: dict[str, EvalCache] = {}
    for cid in wanted:
        ds = competitions[cid].dataset
        if ds not in caches:
            try:
                caches[ds] = EvalCache.load(cache_file(state_dir, ds))
            except StateError as e:
                log.warning("%s; starting with an empty loss cache", e)
                caches[ds] = EvalCache()
    progress = StepProgress(Console(stderr=True))
    try:
        if parts.chain is None:
            chain_entries: list = []
            blocks = [e.block for e in incumbents if e.competition in wanted]
            block_now = args.block if args.block is not None else max(blocks, default=0)
        else:
            try:
                block_now, chain_entries = _chain_field(args, parts, competitions, wanted, caches, progress,
                                                        problems)
            except (ChainError, OSError) as e:
                return fail(f"chain {args.network}: {e} (use --offline for local entries only)", EXIT_NOT_JUDGED)
            if args.block is not None:
                problems.append(f"--block {args.block} ignored: the chain says block {block_now}")
        score = parts.score
        inputs: dict[str, CompetitionField] = {}
        forwards = 0
        for cid in sorted(wanted):
            comp = competitions[cid]
            cache = caches[comp.dataset]
            field = [e for e in chain_entries + incumbents if e.competition == cid]
            cands = [e for e in candidates if e.competition == cid]
            try:
                samples = parts.samples(comp.dataset).sample(args.seed, args.samples)
            except Exception as e:  # noqa: BLE001 - a dead text source skips its competition only
                problems.append(f"competition {cid}: no samples from {comp.dataset!r}: {e}")
                continue
            ids = _store_samples(cache, samples)
            if not ids:
                problems.append(f"competition {cid}: {comp.dataset!r} gave no usable samples")
                continue
            comp_warnings = []
            if len(ids) < args.samples:
                comp_warnings.append(f"{len(ids)} samples of the {args.samples} requested ({comp.dataset!r} has no "
                                     "more usable ones): the intervals are wider than planned")
            if len(ids) < comp.group_samples:
                problems.append(f"competition {cid}: {len(ids)} samples, fewer than one group of "
                                f"{comp.group_samples}: nothing to judge")
                warnings += [f"competition {cid}: {w}" for w in comp_warnings]
                continue
            if len(ids) % comp.group_samples:
                comp_warnings.append(f"{len(ids) % comp.group_samples} samples dropped: groups of "
                                     f"{comp.group_samples}, as live")
            warnings += [f"competition {cid}: {w}" for w in comp_warnings]
            todo = [e for e in field + cands if e.path is not None]
            progress.start("score", len(todo))

            def scored(e, n, path=cache_file(state_dir, comp.dataset), cache=cache):
                cache.save(path)  # after every model: an interrupted run keeps what it scored
                progress.advance("score", f"{e.label}: {e.status}")

            forwards += score_entries(todo, comp, cache, ids, score, args.seed, lambda: False, scored)
            ok_ids = {id(e) for e in field + cands if e.status in ("scored", "cached")}

            def model(e, kind: str) -> ScoredModel:
                return ScoredModel(label=e.label, losses=cache.losses.get_matrix([e.cache_key], ids)[0],
                                   n_tokens=cache.losses.get_ntokens([e.cache_key], ids)[0], uid=e.uid,
                                   block=e.block, kind=kind, hotkey=e.hotkey, path=str(e.path) if e.path else None,
                                   content_hash=e.content_hash)

            failed = [{"label": e.label, "uid": e.uid, "reason": e.reason or e.status, "kind": entry_kind(e)}
                      for e in field + cands if id(e) not in ok_ids]
            failed += [{"label": x["label"], "uid": None, "reason": x["reason"], "kind": x["kind"], "refused": True}
                       for x in refused if x["competition"] == cid]
            problems += [f"competition {cid}: {x['label']} failed: {x['reason']}" for x in failed]
            inputs[cid] = CompetitionField(
                field=[model(e, entry_kind(e)) for e in field if id(e) in ok_ids],
                candidates=[model(e, "candidate") for e in cands if id(e) in ok_ids], sample_ids=ids,
                params=bstats.WinParams.from_competition(comp), group_samples=comp.group_samples, failed=failed,
                warnings=comp_warnings)
    finally:
        progress.stop()
    report = compare_field(inputs, block_now, seed=args.seed, n_boot=args.bootstrap, extra={
        "mode": "offline" if parts.chain is None else "chain", "offline": bool(args.offline),
        "network": None if parts.chain is None else args.network, "top": None if parts.chain is None else args.top, "samples_requested": args.samples,
        "forward_samples": forwards, "problems": problems, "warnings": warnings})
    print_report(report, console)
    if args.out:
        written = write_report(report, Path(args.out))
        console.print(f"report: {written['html']} (and report.json, {len(written) - 2} PNG plots) "
                      f"in {Path(args.out)}", highlight=False)
    status = exit_status(report)
    if status == EXIT_NOT_JUDGED:
        return fail("no candidate could be judged (see the problems above)", status)
    return status


# --- the subcommand: flags -> RunConfig ----------------------------------------------------------------------------


class _NetworkFlag(argparse.Action):
    """--network, remembering that it was given: `--offline` alone reads no chain, while
    `--offline --network finney` names a network offline cannot reach (refused)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.network_given = True


def config_from_args(args: argparse.Namespace) -> app.RunConfig:
    """The benchmark's flags as a RunConfig (the field's chain, hub, devices, storage)."""
    offline_default = args.offline and not getattr(args, "network_given", False)
    return app.RunConfig(
        network=None if offline_default else args.network, netuid=args.netuid,
        chain_db=Path(args.chain_db) if args.chain_db else DEFAULT_LOCAL_CHAIN, state_dir=Path(args.state_dir),
        model_dir=args.model_dir, endpoint=args.hf_endpoint, device=args.device,
        max_device_memory_gb=args.max_device_memory, isolate=not args.no_isolation, ray=args.ray,
        competitions=args.competitions, benchmark=Path(args.benchmark), offline=args.offline)


def register_benchmark_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `benchmark` to a `coldint-validator` subparsers object; returns its parser."""
    from validator.cli.scoring_flags import add_scoring_flags

    p = subparsers.add_parser(
        "benchmark", help="would my candidate win? candidates of benchmark.json vs the field",
        description="Score the candidates of benchmark.json (entries without a block) against the field: "
                    "the top --top models per competition by incentive on the chain (with --offline only a "
                    "LocalChain file: --network local), plus the benchmark.json entries that have a block "
                    "(incumbents, committed at that block). "
                    "Prints win rates, the weight each candidate would get and the paired loss delta against "
                    "the leader, with 95 % bootstrap (and, for win rates, Wilson) intervals, and a verdict per "
                    "candidate. Every entry first passes the checks a validator applies before scoring "
                    "(size, parameters, model type, safetensors only, download set, tokenizer); one that "
                    "fails is shown as 'would be refused: <reason>'.",
        epilog=EXIT_HELP)
    p.add_argument("benchmark", nargs="?", type=Path, default=DEFAULT_BENCHMARK,
                   help="benchmark.json: {id: {competition, path, label, block?}} (default: ./benchmark.json)")
    p.add_argument("--skip-bad-entries", action="store_true",
                   help="run without the benchmark.json entries that cannot be used (bad path, unknown key or "
                        "competition) instead of stopping with exit status 2")
    g = p.add_argument_group("field")
    g.add_argument("--network", default="finney", action=_NetworkFlag,
                   help="finney | test | ws://host:port | local (a LocalChain file, see --chain-db); "
                        "with --offline: no chain unless local")
    g.add_argument("--netuid", type=int, default=constants.NETUID, help=f"subnet (default: {constants.NETUID})")
    g.add_argument("--chain-db", type=Path, default=None,
                   help=f"--network local: the LocalChain file (default: {DEFAULT_LOCAL_CHAIN})")
    g.add_argument("--top", type=int, default=constants.BENCH_TOP_MODELS,
                   help="field size: the top N uids per competition by incentive")
    g.add_argument("--offline", action="store_true",
                   help="no network at all: the field is the benchmark.json entries that have a block, plus the "
                        "top uids of a LocalChain file with --network local (models from a local mirror: "
                        "--hf-endpoint local:DIR); another --network is refused before work, competitions.json "
                        "is a file (default: the copy shipped in constants/), never a URL")
    g.add_argument("--block", type=int, default=None,
                   help="without a chain (--offline): the current block (default: the newest incumbent's block)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--samples", type=int, default=constants.EVAL_SAMPLES, help="samples per competition")
    g.add_argument("--seed", type=int, default=constants.BENCH_SEED,
                   help="seed of the samples and the bootstrap: same seed, same numbers (change it for fresh text)")
    g.add_argument("--bootstrap", type=int, default=intervals.BOOTSTRAP_RESAMPLES,
                   help=f"bootstrap resamples (>= {intervals.BOOTSTRAP_MIN_RESAMPLES})")
    add_scoring_flags(g)
    g.add_argument("--competitions", default=None,
                   help=f"competitions.json: a file or an https URL (default: {constants.COMPETITIONS_URL})")
    g = p.add_argument_group("storage and output")
    g.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                   help="loss cache, tokenizers and (default) downloaded models; reruns reuse the losses")
    g.add_argument("--model-dir", type=Path, default=None, help="model store (default: <state-dir>/models)")
    g.add_argument("--out", type=Path, default=None, help="write report.json, PNG plots and report.html here")
    g.add_argument("--log-level", default="WARNING", help="DEBUG | INFO | WARNING | ERROR (default: WARNING)")
    p.set_defaults(func=run_benchmark, network_given=False)
    return p
