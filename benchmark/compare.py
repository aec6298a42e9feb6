"""`coldint-validator benchmark`: would my candidate win against the field?

The field is what a candidate would have to beat:

- online (default): the top ``--top`` uids per competition by incentive on the chain
  (``--network``), downloaded at their committed revision and verified through the hub
  code, exactly as the validator does (validator.step.loop.fetch_models + hub.ensure_model);
- ``--offline``: no chain and no hub at all. The field is the benchmark.json entries that
  have a ``block`` (treated as incumbents committed at that block, with its advantage).

In both modes a benchmark.json entry WITH a ``block`` is an incumbent (it joins the field
and takes weight as if it had been committed at that block) and an entry WITHOUT a block
is a candidate. Each candidate is judged alone against the field, as if committed at the
current block (no advantage for it; incumbents keep theirs): win rate against the field
under the validator's win rule, the weight it would receive, the paired per-sample loss
delta against the field's leader, and the loss ratio it needs per sample to take one from
the leader. 95 % intervals are percentile bootstraps over samples, and win rates also get a
Wilson score interval (benchmark.stats). Win rates and weights are the live step's
(validator.core.ranking.competition_step), after live's grouping (a remainder that does not
fill a group is dropped).

Before any scoring, every benchmark.json entry passes the checks a validator applies to a
downloaded model (validator.adapters.hub.check_model_constraints: repo size, download set,
safetensors only, model type, parameters; and the tokenizer rule of validator.scoring.tokens): an
entry that fails is reported as "would be refused: <reason>" instead of a verdict.

Exit status (EXIT_*): 0 a candidate beats its leader, 1 candidates were judged and none
beats its leader, 2 nothing could be judged (every candidate refused or failed, no field,
no complete group, bad input, no chain).

Every model is scored on the same seeded samples (``--samples``, ``--seed``) with the
validator's scoring engine; losses go into an EvalCache under ``--state-dir``, keyed by
model content and sample id, so a rerun with the same seed only re-checks a few losses.

Layers: `compare_field` is pure (loss matrices + metadata -> the report dict that
benchmark.report writes), `render` / `print_report` draw it with rich, and
`run_benchmark` does the I/O (chain, hub, samples, scoring).
"""
from __future__ import annotations

import argparse
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field as dc_field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from validator.core.failures import FetchError, retry_after
import constants
from benchmark import report as breport
from benchmark import stats as bstats
from validator.core import ranking
from validator.adapters.leaderboard import make_console

if TYPE_CHECKING:  # imported lazily at run time, like the rest of the scoring side
    from validator.adapters.evalcache import EvalCache

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path(constants.STATE_DIR_DEFAULT) / "benchmark"
DEFAULT_BENCHMARK = Path("benchmark.json")
# --network local without --chain-db: the chain the validator's `run` uses by default
DEFAULT_LOCAL_CHAIN = Path(constants.CHAIN_DB_DEFAULT)

EXIT_BEATS = 0  # at least one candidate beats the leader of its competition
EXIT_DOES_NOT = 1  # candidates were judged; none beats its leader (or it is too close to call)
EXIT_NOT_JUDGED = 2  # no candidate could be judged: refused, failed, no field, bad input
EXIT_HELP = ("exit status: 0 a candidate beats the leader; 1 candidates were judged and none beats the "
             "leader (or it is too close to call); 2 no candidate could be judged (would be refused, "
             "failed, no field, bad input)")

OUTCOME_STYLE = {"beats the leader": "bold green", "does not beat the leader": "red",
                 "too close to call": "yellow", "no field": "cyan", "failed": "red", "would be refused": "red"}


# --- inputs of the pure part -------------------------------------------------------------------


@dataclass
class ScoredModel:
    """One model's losses on the competition's samples (aligned with the sample ids)."""

    label: str
    losses: Sequence[float]  # summed cross-entropy per sample; inf = the sample failed
    n_tokens: Sequence[int]
    uid: int | None = None
    block: int | None = None  # commitment block; None for candidates
    kind: str = "chain"  # chain | benchmark (a local incumbent) | candidate
    hotkey: str | None = None
    path: str | None = None
    content_hash: str | None = None  # dir_hash: a candidate with a field model's content is a copy


@dataclass
class CompetitionField:
    """What `compare_field` needs of one competition."""

    field: list[ScoredModel]
    candidates: list[ScoredModel]
    sample_ids: list[str]
    params: bstats.WinParams = dc_field(default_factory=bstats.WinParams)
    group_samples: int = 1
    failed: list[dict] = dc_field(default_factory=list)  # {"label", "kind", "uid", "reason", "refused"?}
    warnings: list[str] = dc_field(default_factory=list)  # said beside every verdict of the competition


# --- the pure part ---------------------------------------------------------------------------


def _matrix(models: list[ScoredModel], attr: str, s: int) -> np.ndarray:
    rows = [np.asarray(getattr(m, attr), dtype=np.float64).reshape(-1) for m in models]
    for m, r in zip(models, rows):
        if r.shape[0] != s:
            raise ValueError(f"model {m.label!r}: {attr} has {r.shape[0]} entries, expected {s} (one per sample)")
    return np.vstack(rows) if rows else np.zeros((0, s))


def outcome(candidate: dict) -> str:
    """The short call of a candidate dict (CandidateStats.to_dict): same rule as its verdict."""
    if candidate.get("leader_index") is None:
        return "no field"
    return bstats.call(candidate.get("head_to_head"), candidate.get("head_to_head_wilson"))


def exit_status(report: dict) -> int:
    """EXIT_BEATS when a candidate beats its leader, EXIT_DOES_NOT when candidates were judged
    and none does, EXIT_NOT_JUDGED when none could be judged (refused, failed, no field)."""
    outcomes = [d.get("outcome") for sec in report.get("competitions", {}).values()
                for d in sec.get("candidates") or []]
    if "beats the leader" in outcomes:
        return EXIT_BEATS
    if any(o in ("does not beat the leader", "too close to call") for o in outcomes):
        return EXIT_DOES_NOT
    return EXIT_NOT_JUDGED


def live_grouping(matrices: list[np.ndarray], group: int, seed: int) -> list[np.ndarray]:
    """Each [rows, S] matrix grouped as the live step groups it (validator.core.ranking.group_losses
    over one seeded permutation, the remainder dropped); group 1 leaves them as they are."""
    if group == 1:
        return [np.asarray(m, dtype=np.float64) for m in matrices]
    n = matrices[0].shape[1] if matrices else 0
    perm = ranking.grouping_permutation(n, group, seed)
    return [ranking.group_losses(m, group, perm) if m.shape[0] else np.zeros((0, len(perm) // group))
            for m in matrices]


def compare_competition(cf: CompetitionField, block_now: int, *, seed: int = constants.BENCH_SEED,
                        n_boot: int = bstats.BOOTSTRAP_RESAMPLES) -> dict:
    """One competition's report section (benchmark.report format, plus candidate details).

    Every field model can take weight (chain uids and local incumbents alike); candidates
    walk last, as if committed now. Samples are grouped like the live validator groups them
    (competition.group_samples; the remainder dropped) before any statistic. Fewer samples
    than one group: ValueError (live computes nothing then).
    """
    s = len(cf.sample_ids)
    if cf.group_samples < 1 or s < cf.group_samples:
        raise ValueError(f"{s} samples in groups of {cf.group_samples}: no complete group, nothing to judge")
    f, c = len(cf.field), len(cf.candidates)
    fl, ft = _matrix(cf.field, "losses", s), _matrix(cf.field, "n_tokens", s)
    cl, ct = _matrix(cf.candidates, "losses", s), _matrix(cf.candidates, "n_tokens", s)
    # losses of field + candidates together (live's all-inf rule looks at every model), tokens apart
    losses, tokens = live_grouping([np.vstack([fl, cl]), np.vstack([ft, ct])], cf.group_samples, seed)
    fl, cl = losses[:f], losses[f:]
    ft, ct = tokens[:f], tokens[f:]
    n = losses.shape[1]
    ids = list(cf.sample_ids) if cf.group_samples == 1 else [f"group {i}" for i in range(n)]
    fb = np.array([np.nan if m.block is None else float(m.block) for m in cf.field], dtype=np.float64)
    labels = [m.label for m in cf.field]
    uids = [m.uid for m in cf.field]
    clabels = [m.label for m in cf.candidates]
    p = cf.params

    # every incumbent can take weight here (a local incumbent stands for a committed model)
    section = breport.competition_section(
        labels, uids, fb, fl, ft, block_now, p, candidate_labels=clabels, candidate_losses=cl if c else None,
        candidate_tokens=ct if c else None, kinds=[m.kind for m in cf.field], eligible=np.ones(f, dtype=bool),
        include_deltas=True, n_boot=n_boot, seed=seed)
    adv = ranking.advantages(fb, block_now, p.advantage_initial, p.advantage_decay, p.epoch)
    for i, (mm, m) in enumerate(zip(section["models"][:f], cf.field)):
        mm.update(advantage=float(adv[i]), hotkey=m.hotkey, path=m.path)
    candidates = section["candidates"]
    for d, mm, m in zip(candidates, section["models"][f:], cf.candidates):
        d.update(kind=m.kind, path=m.path, mean_loss_per_token=mm["mean_loss_per_token"])
        d["outcome"] = outcome(d)
        lead_i = d.get("leader_index")
        d["leader_weight_now"] = None if lead_i is None else d["field_weights_without"][lead_i]
        d["leader_weight_with"] = None if lead_i is None else d["field_weights_with"][lead_i]
        for w in cf.warnings:
            d["verdict"] += f"; WARNING: {w}"
        twin = next((fm.label for fm in cf.field if m.content_hash and fm.content_hash == m.content_hash), None)
        d["copy_of"] = twin
        if twin is not None:  # on chain, first-seen content keeps it: a copy earns nothing
            d["verdict"] += f" (same content as {twin}: a copy)"
        mm.update(advantage=0.0, hotkey=None, path=m.path)
    section["candidates"] = candidates
    lead = next((d["leader_index"] for d in candidates), None)
    if lead is None and f:
        lead = bstats.field_stats(fl, fb, block_now, p, n_boot=n_boot, seed=seed).leader_index
    leader = None
    if lead is not None:
        mm = section["models"][lead]
        leader = {"index": lead, "label": mm["label"], "uid": mm["uid"], "block": mm["block"],
                  "advantage": float(adv[lead]), "required_ratio": 1.0 - float(adv[lead])}
    section.update(block_now=int(block_now), n_field=f, n_samples=n, group_samples=cf.group_samples,
                   sample_ids=ids, leader=leader, failed=list(cf.failed), warnings=list(cf.warnings))
    return breport.to_jsonable(section)


def compare_field(competitions: dict[str, CompetitionField], block_now: int, *, seed: int = constants.BENCH_SEED,
                  n_boot: int = bstats.BOOTSTRAP_RESAMPLES, title: str | None = None,
                  extra: dict | None = None) -> dict:
    """The whole report dict (benchmark.report's format): one section per competition.

    Pure: the same inputs and seed give the same dict (but for "generated")."""
    if n_boot < bstats.BOOTSTRAP_MIN_RESAMPLES:
        raise ValueError(f"bootstrap resamples: at least {bstats.BOOTSTRAP_MIN_RESAMPLES}, got {n_boot}")
    report = {"title": title or "coldint benchmark: candidates against the field", "block": int(block_now),
              "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seed": int(seed),
              "bootstrap_resamples": int(n_boot), "confidence": bstats.CONFIDENCE,
              "competitions": {cid: compare_competition(cf, block_now, seed=seed, n_boot=n_boot)
                               for cid, cf in competitions.items()}}
    report.update(extra or {})
    return breport.to_jsonable(report)


# --- rich rendering --------------------------------------------------------------------------


def _f(x: Any, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _ci(iv: dict | None, spec: str = ".4f", scale: float = 1.0) -> str:
    if not iv or iv.get("low") is None or iv.get("high") is None:
        return "-"
    return f"[{format(scale * iv['low'], spec)}, {format(scale * iv['high'], spec)}]"


def _iv(iv: dict | None, spec: str, scale: float = 1.0) -> str:
    return "-" if not iv or iv.get("value") is None else format(scale * iv["value"], spec)


def _cell(iv: dict | None, spec: str, scale: float = 1.0, unit: str = "") -> Text:
    """The estimate over its 95 % interval, stacked: keeps the table narrow enough for a terminal."""
    if not iv or iv.get("value") is None:
        return Text("-")
    return Text.assemble(_iv(iv, spec, scale) + unit, "\n", (_ci(iv, spec, scale), "dim"))


def _failed_text(x: dict) -> str:
    return x["reason"] if x.get("refused") else f"failed: {x['reason']}"


def _leader_weights(d: dict) -> str:
    now, with_it = d.get("leader_weight_now"), d.get("leader_weight_with")
    return "-" if now is None or with_it is None else f"{now:.3f} → {with_it:.3f}"


def candidate_table(cid: str, sec: dict) -> Table:
    """Candidate rows, each estimate over its 95 % interval, and the call; every number is in the section."""
    lead = sec.get("leader")
    who = "no field" if lead is None else (f"leader {lead['label']}, advantage {100 * lead['advantage']:.3f} %")
    t = Table(title=f"{cid}: candidates vs a field of {sec.get('n_field', 0)} on {sec.get('n_samples', 0)} samples "
                    f"at block {sec.get('block_now', '-')} ({who})", title_justify="left", header_style="bold",
              caption="value over [95 % bootstrap CI]; Δ and ratio: candidate vs the leader on paired samples; "
                      "needs <: loss ratio per sample that takes it from the leader; weight: the candidate's "
                      "if committed now; leader weight: now (without the candidate) → if it were committed",
              caption_justify="left")
    for col in ("candidate", "loss/tok", "win rate\nvs field", "win rate\nvs leader", "Δ loss\nper sample",
                "loss ratio", "needs <", "weight if\ncommitted now", "leader weight\nnow → with", "call"):
        t.add_column(col, justify="left" if col in ("candidate", "call") else "right")
    for d in sec.get("candidates") or []:
        t.add_row(Text(d["label"], style="bold"), _f(d.get("mean_loss_per_token"), ".4f"),
                  _cell(d["win_rate"], ".1f", 100, " %"), _cell(d.get("head_to_head"), ".1f", 100, " %"),
                  _cell(d.get("mean_delta"), ".3f"), _cell(d.get("loss_ratio"), ".4f"),
                  _f(d.get("required_ratio") if lead else None, ".4f"), _f(d.get("weight"), ".3f"),
                  _leader_weights(d), Text(d["outcome"], style=OUTCOME_STYLE.get(d["outcome"], "")))
    for x in sec.get("failed") or []:
        if x.get("kind") == "candidate":
            t.add_row(Text(x["label"], style="bold"), *["-"] * 8, Text(_failed_text(x)[:60], style="red"))
    return t


def candidate_columns_table(cid: str, sec: dict) -> Table:
    """The candidate table turned: one column per candidate, for a terminal too narrow for rows."""
    lead = sec.get("leader")
    t = Table(title=f"{cid}: candidates vs a field of {sec.get('n_field', 0)} on {sec.get('n_samples', 0)} samples "
                    f"at block {sec.get('block_now', '-')}"
                    + ("" if lead is None else f" (leader {lead['label']}, advantage {100 * lead['advantage']:.3f} %)"),
              title_justify="left", header_style="bold")
    cands = sec.get("candidates") or []
    t.add_column("")
    for d in cands:
        t.add_column(d["label"], justify="right")
    rows = [("loss/tok", lambda d: _f(d.get("mean_loss_per_token"), ".4f")),
            ("win rate vs field", lambda d: _cell(d["win_rate"], ".1f", 100, " %")),
            ("win rate vs leader", lambda d: _cell(d.get("head_to_head"), ".1f", 100, " %")),
            ("Δ loss per sample", lambda d: _cell(d.get("mean_delta"), ".3f")),
            ("loss ratio", lambda d: _cell(d.get("loss_ratio"), ".4f")),
            ("needs <", lambda d: _f(d.get("required_ratio") if lead else None, ".4f")),
            ("weight if committed now", lambda d: _f(d.get("weight"), ".3f")),
            ("leader weight now → with", _leader_weights),
            ("call", lambda d: Text(d["outcome"], style=OUTCOME_STYLE.get(d["outcome"], "")))]
    for name, get in rows:
        t.add_row(Text(name, style="bold"), *[get(d) for d in cands])
    return t


def field_table(cid: str, sec: dict) -> Table:
    """The field as the validator ranks it now (without any candidate)."""
    t = Table(title=f"{cid}: the field (win rates without the candidates)", title_justify="left",
              header_style="bold", caption="★ the leader: highest win rate", caption_justify="left")
    for col in ("model", "kind", "uid", "block", "adv %", "loss/tok", "win rate", "weight now"):
        t.add_column(col, justify="left" if col in ("model", "kind") else "right")
    lead = (sec.get("leader") or {}).get("index")
    n_field = sec.get("n_field", 0)
    for i, m in enumerate(sec["models"][:n_field]):
        label = Text(m["label"] + (" ★" if i == lead else ""), style="bold" if i == lead else "")
        ci = m.get("win_rate_ci") or [None, None]
        t.add_row(label, m.get("kind", "chain"), _f(m.get("uid"), "d"), _f(m.get("block"), "d"),
                  _f(None if m.get("advantage") is None else 100 * m["advantage"], ".3f"),
                  _f(m.get("mean_loss_per_token"), ".4f"),
                  _cell({"value": m.get("win_rate"), "low": ci[0], "high": ci[1]}, ".1f", 100, " %"),
                  _f(m.get("weight"), ".3f"))
    for x in sec.get("failed") or []:
        if x.get("kind") != "candidate":
            t.add_row(Text(x["label"], style="red"), x.get("kind", "chain"), _f(x.get("uid"), "d"),
                      *["-"] * 4, Text(_failed_text(x)[:60], style="red"))
    return t


def render(report: dict, width: int | None = None) -> Group:
    """Field and candidate tables per competition, then one verdict line per candidate.

    With a `width` too narrow for a row per candidate, the candidate table is turned."""
    parts: list[Any] = []
    measure = Console(width=10_000, file=io.StringIO())
    warnings = list(report.get("warnings") or [])
    for w in warnings:
        parts.append(Text(f"WARNING: {w}", style="bold yellow"))
    for cid, sec in report["competitions"].items():
        table = candidate_table(cid, sec)
        if width is not None and sec.get("candidates") and measure.measure(table).maximum > width:
            table = candidate_columns_table(cid, sec)
        parts += [field_table(cid, sec), table]
        for d in sec.get("candidates") or []:
            parts.append(Text(f"  ▸ {d['verdict']}", style=OUTCOME_STYLE.get(d["outcome"], "")))
        for x in sec.get("failed") or []:
            if x.get("kind") == "candidate":
                parts.append(Text(f"  ▸ {x['label']}: {_failed_text(x)}", style="red"))
        parts.append(Text(""))
    for p in report.get("problems") or []:
        parts.append(Text(f"problem: {p}", style="yellow"))
    for w in warnings:  # again at the end, where the eye lands after the tables
        parts.append(Text(f"WARNING: {w}", style="bold yellow"))
    return Group(*parts)


def print_report(report: dict, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(render(report, console.width))


# --- I/O: chain, hub, samples, scoring ------------------------------------------------------------


def tokenizer_refusal(path: Path, competition: Any) -> str | None:
    """Why a validator could not tokenize for this model dir, or None (validator.scoring.tokens C1-C4):
    with a competition tokenizer there is always one to use; without, the dir's own
    tokenizer.json must load under the 4.44 rules."""
    from validator.scoring import tokens

    if getattr(competition, "tokenizer", None):
        return None
    if not (Path(path) / "tokenizer.json").is_file():
        return (f"tokenizer: competition {competition.id} has no tokenizer and {path} holds no tokenizer.json: "
                "a validator does not evaluate it")
    try:
        tokens.plan_tokenizer(path, role="model")
    except tokens.TokenizerLoadError as e:
        return f"tokenizer: {e} (competition {competition.id} has no tokenizer to fall back on)"
    return None


def validator_refusal(path: Path, competition: Any) -> str | None:
    """Why a validator would refuse this model dir for the competition before scoring it, or
    None: repo size, download set, safetensors only, model type, parameters (the checks of
    validator.adapters.hub on a download) and the tokenizer rule."""
    from validator.adapters import hub

    try:
        hub.check_model_constraints(path, competition)
    except FetchError as e:
        return str(e)
    return tokenizer_refusal(Path(path), competition)



def _open_chain(args: argparse.Namespace):
    if args.network == "local":
        from validator.adapters.chain.local import LocalChain

        db = args.chain_db or DEFAULT_LOCAL_CHAIN
        if not Path(db).is_file():  # LocalChain would create an empty chain: an empty field
            raise FileNotFoundError(f"--network local: no chain at {db} (pass --chain-db)")
        return LocalChain(db, netuid=args.netuid)
    from validator.adapters.chain.subtensor import SubtensorChain

    return SubtensorChain(args.network, netuid=args.netuid, wallet=None)  # read only: no wallet


def top_by_incentive(meta: Any, entries: list, competition: str, n: int) -> list:
    """The competition's n chain entries with the most incentive (ties: older block, lower uid)."""
    inc = dict(zip(meta.uids, meta.incentive))
    mine = [e for e in entries if e.competition == competition]
    mine.sort(key=lambda e: (-inc.get(e.uid, 0.0), e.block, e.uid))
    return mine[:max(n, 0)]


def _chain_field(args, competitions: dict, wanted: set[str], caches: dict, model_dir: Path, endpoint: str | None,
                 progress, problems: list[str]) -> tuple[int, list]:
    """(block_now, fetched chain entries) of the competitions in `wanted`."""
    from validator.adapters import hub
    from validator.step import loop

    chain = _open_chain(args)
    meta, commitments = chain.sync()
    entries, bad = loop.parse_commitments(meta, commitments, competitions)
    if bad:  # the live chain carries many stale or broken commitments: a count, details in the log
        problems.append(f"{len(bad)} commitments skipped (invalid, unknown competition or a copy)")
        for v in bad.values():
            log.info("commitment skipped: %s", v)
    picked = [e for cid in sorted(wanted) for e in top_by_incentive(meta, list(entries.values()), cid, args.top)]
    for e in picked:  # "uid 7 org/name": the uid for the verdicts, the repo for a person
        e.label = f"uid {e.uid} {e.model_id.repo_id}"

    def fetch(model_id, hotkey, competition, deadline=None):  # loop.FetchFn: (snapshot, content hash)
        path = hub.ensure_model(model_id, hotkey, competition, model_dir, endpoint=endpoint, progress=False,
                                deadline=deadline)
        return path, hub.verified_dir_hash(path) or hub.model_dir_hash(path)

    def first_seen(content: str, hotkey: str, block: int) -> str:
        comp = competitions[entries[hotkey].competition]
        return caches[comp.dataset].first_seen.observe(content, hotkey, block)

    progress.start("download", len(picked))
    loop.fetch_models(picked, fetch, competitions, {}, first_seen, time.time(),
                      time.monotonic() + constants.TTL_DOWNLOADS_S, retry_after,
                      on_progress=lambda e: progress.advance("download", e.label))
    return meta.block, picked


def _store_samples(cache: EvalCache, samples: list) -> list[str]:
    """Put this run's samples in the evaluation cache's db; their ids, in order, once each
    (a source's garbage rows left out). The add keeps every one of them, even at the cap."""
    rows = cache.db.usable_rows(samples)
    cache.losses.drop_samples(cache.db.add(rows.items(), time.time()).dropped)
    return list(rows)


def _kind(e: Any) -> str:
    """A loop.Entry's role here: a chain uid, a local incumbent (has a block) or a candidate."""
    return "chain" if e.uid is not None else ("benchmark" if e.block is not None else "candidate")


def refused_entries(path: Path, competitions: dict, bench: list, problems: list[str]) -> list[dict]:
    """The benchmark.json entries a validator would refuse before scoring, each
    {"key", "label", "kind", "competition", "reason": "would be refused: ..."}: those
    `loop.benchmark_entries` let through (`bench`) that fail `validator_refusal`, and those
    it skipped because their files break the hub's rules (their problem line is taken out of
    `problems`: a refusal is a verdict, not a typo)."""
    from benchmark.config import load_benchmark

    out = []
    for e in bench:
        reason = validator_refusal(e.path, competitions[e.competition])
        if reason is not None:
            e.status, e.reason = "refused", f"would be refused: {reason}"
            out.append({"key": e.key, "label": e.label, "kind": _kind(e), "competition": e.competition,
                        "reason": e.reason})
    parsed, _errors = load_benchmark(path)
    kept = {e.key for e in bench}
    for bid, b in parsed.items():
        if f"bench:{bid}" in kept or b.competition not in competitions or not Path(b.path).is_dir():
            continue
        reason = validator_refusal(b.path, competitions[b.competition])
        if reason is None:
            continue
        prefix = f"benchmark entry {bid!r}:"
        problems[:] = [p for p in problems if not p.startswith(prefix)]
        out.append({"key": f"bench:{bid}", "label": b.label or bid, "competition": b.competition,
                    "kind": "candidate" if b.block is None else "benchmark", "reason": f"would be refused: {reason}"})
    return out


def run_benchmark(args: argparse.Namespace, console: Console | None = None) -> int:
    """The `benchmark` command; returns its exit status (EXIT_BEATS, EXIT_DOES_NOT, EXIT_NOT_JUDGED)."""
    from benchmark.config import BenchmarkError
    from validator.step import loop
    from validator.core.competitions import CompetitionsError, load_competitions
    from validator.cli.hub import EndpointError, open_endpoint

    console = console or make_console()

    def fail(msg: str, code: int) -> int:
        console.print(f"[red]error:[/red] {msg}", highlight=False)
        return code

    if args.bootstrap < bstats.BOOTSTRAP_MIN_RESAMPLES:
        return fail(f"--bootstrap {args.bootstrap}: at least {bstats.BOOTSTRAP_MIN_RESAMPLES} resamples", 2)
    if args.samples < 1 or args.top < 0:
        return fail(f"--samples must be >= 1 and --top >= 0 (got {args.samples}, {args.top})", 2)
    if args.samples > constants.DB_MAX_SAMPLES:  # the sample db could not hold them all at once
        return fail(f"--samples {args.samples}: at most {constants.DB_MAX_SAMPLES} (the sample database's cap)", 2)
    if not Path(args.benchmark).is_file():
        return fail(f"{args.benchmark}: no such benchmark.json (see benchmark_example.json)", 2)
    try:
        competitions = load_competitions(args.competitions or constants.COMPETITIONS_URL)
    except (CompetitionsError, OSError) as e:
        return fail(f"competitions: {e}", 2)
    try:
        bench, problems = loop.benchmark_entries(Path(args.benchmark), competitions)
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
        endpoint, close_endpoint = open_endpoint(args.hf_endpoint or os.environ.get("HF_ENDPOINT"))
    except EndpointError as e:
        return fail(f"--hf-endpoint: {e}", 2)
    try:
        return _run_judged(args, console, fail, competitions, candidates, incumbents, refused, wanted, endpoint,
                           problems)
    finally:
        close_endpoint()


def _run_judged(args: argparse.Namespace, console: Console, fail, competitions: dict, candidates: list,
                incumbents: list, refused: list[dict], wanted: set[str], endpoint: str | None,
                problems: list[str]) -> int:
    """run_benchmark once the entries are checked and the hub endpoint is open."""
    from validator.adapters import data
    from validator.step import loop
    from validator.core.chain import ChainError
    from validator.cli.preflight import default_device, device_memory_bytes
    from validator.adapters.evalcache import EvalCache, cache_file
    from validator.adapters.leaderboard import StepProgress
    from validator.scoring.dispatch import make_score_fn
    from validator.adapters.files import StateError

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
        if args.offline:
            chain_entries: list = []
            blocks = [e.block for e in incumbents if e.competition in wanted]
            block_now = args.block if args.block is not None else max(blocks, default=0)
        else:
            try:
                block_now, chain_entries = _chain_field(args, competitions, wanted, caches,
                                                        Path(args.model_dir or state_dir / "models"), endpoint,
                                                        progress, problems)
            except (ChainError, OSError) as e:
                return fail(f"chain {args.network}: {e} (use --offline for local entries only)", EXIT_NOT_JUDGED)
            if args.block is not None:
                problems.append(f"--block {args.block} ignored: the chain says block {block_now}")
        score = make_score_fn(device=args.device or default_device(), cache_dir=state_dir / "tokenizers",
                              endpoint=endpoint, isolate=not args.no_isolation,
                              max_device_bytes=device_memory_bytes(args.max_device_memory))
        inputs: dict[str, CompetitionField] = {}
        forwards = 0
        for cid in sorted(wanted):
            comp = competitions[cid]
            cache = caches[comp.dataset]
            field = [e for e in chain_entries + incumbents if e.competition == cid]
            cands = [e for e in candidates if e.competition == cid]
            try:
                samples = data.source_for(comp.dataset, endpoint=endpoint).sample(args.seed, args.samples)
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

            forwards += loop.score_entries(todo, comp, cache, ids, score, args.seed, lambda: False, scored)
            ok_ids = {id(e) for e in field + cands if e.status in ("scored", "cached")}

            def model(e, kind: str) -> ScoredModel:
                return ScoredModel(label=e.label, losses=cache.losses.get_matrix([e.cache_key], ids)[0],
                                   n_tokens=cache.losses.get_ntokens([e.cache_key], ids)[0], uid=e.uid,
                                   block=e.block, kind=kind, hotkey=e.hotkey, path=str(e.path) if e.path else None,
                                   content_hash=e.content_hash)

            failed = [{"label": e.label, "uid": e.uid, "reason": e.reason or e.status, "kind": _kind(e)}
                      for e in field + cands if id(e) not in ok_ids]
            failed += [{"label": x["label"], "uid": None, "reason": x["reason"], "kind": x["kind"], "refused": True}
                       for x in refused if x["competition"] == cid]
            problems += [f"competition {cid}: {x['label']} failed: {x['reason']}" for x in failed]
            inputs[cid] = CompetitionField(
                field=[model(e, _kind(e)) for e in field if id(e) in ok_ids],
                candidates=[model(e, "candidate") for e in cands if id(e) in ok_ids], sample_ids=ids,
                params=bstats.WinParams.from_competition(comp), group_samples=comp.group_samples, failed=failed,
                warnings=comp_warnings)
    finally:
        progress.stop()
    report = compare_field(inputs, block_now, seed=args.seed, n_boot=args.bootstrap, extra={
        "mode": "offline" if args.offline else "chain", "network": None if args.offline else args.network,
        "top": None if args.offline else args.top, "samples_requested": args.samples,
        "forward_samples": forwards, "problems": problems, "warnings": warnings})
    print_report(report, console)
    if args.out:
        written = breport.write_report(report, Path(args.out))
        console.print(f"report: {written['html']} (and report.json, {len(written) - 2} PNG plots) "
                      f"in {Path(args.out)}", highlight=False)
    status = exit_status(report)
    if status == EXIT_NOT_JUDGED:
        return fail("no candidate could be judged (see the problems above)", status)
    return status


# --- the subcommand ----------------------------------------------------------------------------


def register_benchmark_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `benchmark` to a `coldint-validator` subparsers object; returns its parser."""
    from validator.cli.preflight import non_negative_float

    p = subparsers.add_parser(
        "benchmark", help="would my candidate win? candidates of benchmark.json vs the field",
        description="Score the candidates of benchmark.json (entries without a block) against the field: "
                    "the top --top models per competition by incentive on the chain, or with --offline "
                    "only the benchmark.json entries that have a block (incumbents, committed at that block). "
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
    g.add_argument("--network", default="finney",
                   help="finney | test | ws://host:port | local (a LocalChain file, see --chain-db)")
    g.add_argument("--netuid", type=int, default=constants.NETUID, help=f"subnet (default: {constants.NETUID})")
    g.add_argument("--chain-db", type=Path, default=None,
                   help=f"--network local: the LocalChain file (default: {DEFAULT_LOCAL_CHAIN})")
    g.add_argument("--top", type=int, default=constants.BENCH_TOP_MODELS,
                   help="field size: the top N uids per competition by incentive")
    g.add_argument("--offline", action="store_true",
                   help="no chain, no hub: the field is the benchmark.json entries that have a block")
    g.add_argument("--block", type=int, default=None,
                   help="--offline: the current block (default: the newest incumbent's block)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--samples", type=int, default=constants.EVAL_SAMPLES, help="samples per competition")
    g.add_argument("--seed", type=int, default=constants.BENCH_SEED,
                   help="seed of the samples and the bootstrap: same seed, same numbers (change it for fresh text)")
    g.add_argument("--bootstrap", type=int, default=bstats.BOOTSTRAP_RESAMPLES,
                   help=f"bootstrap resamples (>= {bstats.BOOTSTRAP_MIN_RESAMPLES})")
    g.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda when available)")
    g.add_argument("--max-device-memory", type=non_negative_float, default=None, metavar="GB",
                   help="a model whose weights exceed this is scored layer by layer (same losses; default: "
                        "streamed only when it exceeds the free CUDA memory)")
    g.add_argument("--competitions", default=None,
                   help=f"competitions.json: a file or an https URL (default: {constants.COMPETITIONS_URL})")
    g.add_argument("--hf-endpoint", default=None,
                   help="hub endpoint URL, or local:DIR to serve a git mirror dir (olah on 127.0.0.1) for this run "
                        "(default: $HF_ENDPOINT or huggingface.co)")
    g.add_argument("--no-isolation", action="store_true",
                   help="score in this process instead of a worker per model (faster start, no time limit)")
    g = p.add_argument_group("storage and output")
    g.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                   help="loss cache, tokenizers and (default) downloaded models; reruns reuse the losses")
    g.add_argument("--model-dir", type=Path, default=None, help="model store (default: <state-dir>/models)")
    g.add_argument("--out", type=Path, default=None, help="write report.json, PNG plots and report.html here")
    g.add_argument("--log-level", default="WARNING", help="DEBUG | INFO | WARNING | ERROR (default: WARNING)")
    p.set_defaults(func=run_benchmark)
    return p
