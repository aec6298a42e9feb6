"""One validator step's scoring of a field of tiny models through the real isolated workers:
today's cold worker per model (warm=False) against the warm pool (a spare per device that has
imported torch and transformers before its job), side by side in one run.

Two steps per path, as the loop runs them on one scorer: "cold" (every model scores all
--samples: a new field) then, after --gap seconds (the loop's wait between steps, in which a
spare finishes its imports), "incremental" (each model scores only --new new samples: most
losses are cached). Where the time goes: the same jobs scored in this process (isolate=False)
are the work itself; a worker that only imports what a job needs (cold, run_isolated) is the
start-up a fresh worker pays; a step's time minus the work is what isolation costs. Each path also
reports the jobs' own phases summed over the models (tokenize, load, score = forward + loss; in
process the loss is timed apart) and, on one lane, the time outside the jobs (worker start-up,
imports, hand-over).

    python benchmarks/bench_step.py     # 6 models: today's path, spawned spares, forked spares, forked on 2 lanes

Target (issue 18): on 2 CPU cores the incremental step at most 0.5 x today's time.
Appends a JSON line to benchmarks/results/step.jsonl (unless --no-record).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "step.jsonl"
# warm=False; spawned warm spares (fork=False) on one device; spares forked from the fork server on one
# device, and on two "cpu" lanes (score_many)
PATHS = ("today", "warm", "fork", "fork2")


def import_job() -> float:
    """Run in a worker: import what a scoring job imports (validator.scoring.dispatch.PRELOAD); seconds taken."""
    import importlib

    from validator.scoring.dispatch import PRELOAD

    t = time.perf_counter()
    for name in PRELOAD:
        importlib.import_module(name)
    return time.perf_counter() - t


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=6)
    p.add_argument("--samples", type=int, default=24, help="samples each model scores in the cold step")
    p.add_argument("--new", type=int, default=3, help="new samples each model scores in the incremental step")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--gap", type=float, default=8.0, help="seconds between the two steps (not timed)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma list of {', '.join(PATHS)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    args.paths = [s for s in args.paths.split(",") if s]
    bad = [s for s in args.paths if s not in PATHS]
    if bad:
        p.error(f"--paths: unknown {bad}; choose from {PATHS}")
    if args.models < 1 or args.samples < 1 or not 0 < args.new <= args.samples:
        p.error("--models and --samples must be >= 1 and 0 < --new <= --samples")
    return args


def make_field(root: Path, args: argparse.Namespace):
    from tests.factories import make_model, make_texts, make_tokenizer
    from validator.core.competitions import Competition

    tok = root / "tok"
    make_tokenizer(tok)
    models = [make_model(root / f"m{i}", "llama", seed=i, tokenizer_dir=tok, hidden=args.hidden)
              for i in range(args.models)]
    comp = Competition(id="c00", reward=0.5, model_types=["LlamaForCausalLM"], parameters=10**9,
                       model_size=10**10, dataset="bench", tokenizer=str(tok),
                       max_sequence_len=4096, cap_sample_len=20480, max_tokenize_fails=3)
    texts = make_texts(args.samples + args.new, seed=7)
    samples = [(f"s{i}", t) for i, t in enumerate(texts)]
    return models, comp, samples


def steps(models, comp, samples, args) -> dict[str, list]:
    """The jobs of each step: (model, samples to score, comp, the step's samples)."""
    cold = samples[: args.samples]
    step2 = samples[args.new:]  # the window moves on: --new samples leave, --new arrive
    new = samples[args.samples:]
    return {"cold": [(m, cold, comp, cold) for m in models],
            "incremental": [(m, new, comp, step2) for m in models]}


def _timed_loss(acc: dict):
    """In this process only: time the engine's loss (chunked_ce_sums) apart from the forward pass."""
    from validator.scoring import engine

    inner = engine.chunked_ce_sums

    def timed(*a, **kw):
        t = time.perf_counter()
        out = inner(*a, **kw)
        acc["loss"] = acc.get("loss", 0.0) + time.perf_counter() - t
        return out

    engine.chunked_ce_sums = timed
    return lambda: setattr(engine, "chunked_ce_sums", inner)


def run_path(path: str, jobs: dict[str, list], cache: Path, gap_s: float) -> dict:
    from validator.scoring.dispatch import make_score_fn

    if path == "in_process":
        scorer = make_score_fn("cpu", cache, isolate=False)
    else:
        scorer = make_score_fn("cpu", cache, warm=path != "today", timeout_s=600,
                               devices=["cpu", "cpu"] if path == "fork2" else None,
                               fork=path.startswith("fork"))
    out, losses, phases = {}, {}, {}
    loss_time: dict = {}
    restore = _timed_loss(loss_time) if path == "in_process" else (lambda: None)
    try:
        for i, (step, js) in enumerate(jobs.items()):
            if i:
                time.sleep(gap_s)
            loss_time.clear()
            t = time.perf_counter()
            if path == "fork2":
                res = scorer.score_many(js)
            else:
                res = [scorer(m, s, c, step_samples=ss) for m, s, c, ss in js]
            out[step] = round(time.perf_counter() - t, 3)
            failed = [r.failure for r in res if r.failure]
            if failed:
                raise SystemExit(f"{path} {step}: a model failed: {failed[0]}")
            losses[step] = [r.losses for r in res]
            # where the time went, summed over the models (the job's own clock: validator.scoring.job)
            ph = {k: round(sum(r.phases.get(k, 0.0) for r in res), 3) for k in ("tokenize", "load", "score")}
            if "loss" in loss_time:
                ph["loss"] = round(loss_time["loss"], 3)
                ph["forward"] = round(ph["score"] - ph["loss"], 3)
            phases[step] = ph
    finally:
        restore()
        scorer.close()
    return {"seconds": out, "losses": losses, "phases": phases}


def startup_seconds(n: int = 2) -> dict:
    """A fresh worker's start: interpreter + the scoring job's imports, seen by the parent."""
    from validator.scoring.worker import run_isolated

    total, imports = [], []
    for _ in range(n):
        res = run_isolated("bench_step:import_job", {}, timeout_s=120)
        if not res.ok:
            raise SystemExit(f"startup probe failed: {res.describe()}")
        total.append(res.seconds)
        imports.append(res.value)
    return {"worker_start_s": round(statistics.median(total), 3), "imports_s": round(statistics.median(imports), 3)}


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))  # workers import bench_step:import_job
    import torch
    import transformers

    t0 = time.perf_counter()
    load_before = os.getloadavg()  # the cores are shared: a loaded machine slows every path, unevenly
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        root = Path(tmp)
        models, comp, samples = make_field(root / "field", args)
        jobs = steps(models, comp, samples, args)
        figures = {"startup": startup_seconds()}
        for path in ["in_process"] + args.paths:
            cache = root / f"cache-{path}"
            shutil.rmtree(cache, ignore_errors=True)
            figures[path] = run_path(path, jobs, cache, args.gap)
            print(f"{path:>10}: " + ", ".join(f"{k} {v:.2f}s" for k, v in figures[path]["seconds"].items()),
                  flush=True)
    ref = figures["in_process"]["losses"]
    equal = {p: all(a == b for s in ref for a, b in zip(ref[s], figures[p]["losses"][s])) for p in args.paths}
    summary: dict = {"startup": figures["startup"], "equal_to_in_process": equal}
    for step in ("cold", "incremental"):
        work = figures["in_process"]["seconds"][step]
        row = {"in_process_s": work, "in_process_phases_s": figures["in_process"]["phases"][step]}
        for p in args.paths:
            s = figures[p]["seconds"][step]
            row[f"{p}_s"] = s
            row[f"{p}_isolation_s"] = round(s - work, 3)  # start-up, imports, JSON, process teardown
            ph = figures[p]["phases"][step]
            # the step minus the jobs' own work (on one lane): starting workers, imports, hand-over
            row[f"{p}_phases_s"] = {**ph, "outside_jobs": round(s - sum(ph.values()), 3)} if p != "fork2" else ph
        if "today" in args.paths:
            for p in args.paths:
                if p != "today":
                    row[f"{p}_ratio"] = round(row[f"{p}_s"] / row["today_s"], 3)
        summary[step] = row
    record = {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": _commit(),
        "device": f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "flags": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                  if k not in ("out", "no_record")},
        "figures": summary, "wall_s": round(time.perf_counter() - t0, 1),
        "load_avg_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(record, indent=1))
    if not args.no_record:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
