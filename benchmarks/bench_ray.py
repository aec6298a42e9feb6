"""Makespan of one step's scoring on a local Ray cluster of 1, 2 and 4 scoring nodes
(ray.cluster_utils.Cluster on this machine, CPU only), beside the bound any placement has:
max(sum of jobs / workers, longest job), with the job times measured on the 1-node run.

    python benchmarks/bench_ray.py --models 6 --nodes 1,2,4

Each node has one stand-in GPU resource (one actor). Models are tiny llamas served by olah on
loopback; every run starts from empty node stores (downloads included, as in a first step).
On a 2-core machine more nodes cannot beat 2 cores: the figures show the scheduling overhead
and the bound, not a speed-up. Appends a JSON line to benchmarks/results/ray.jsonl.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "ray.jsonl"
RES = "bench_gpu"


def build_field(root: Path, n: int, mirror: Path, endpoint: str):
    from tests.factories import make_model, make_tokenizer
    from tests.olah_fixture import publish
    from validator.adapters import hub
    from validator.core.competitions import parse_competitions
    from validator.core.identity import ModelId, secure_hash

    tok = root / "tokenizer"
    make_tokenizer(tok)
    comp = parse_competitions({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 10**9,
                                       "model_size": 10**9, "dataset": "x", "tokenizer": str(tok)}})["c00"]
    paths = []
    for i in range(n):
        hk = f"5BenchRay{i}"
        model = make_model(root / f"m{i}", "llama", seed=i, layers=1 + i % 3, hidden=64)
        mid = ModelId("bench", f"m{i}", publish(mirror, "bench", f"m{i}", model),
                      secure_hash(hub.model_dir_hash(model), hk), "c00")
        paths.append(hub.ensure_model(mid, hk, comp, root / "driver", endpoint=endpoint, progress=False).path)
    return comp, paths


def run(n_nodes: int, comp, paths, samples, endpoint: str, work: Path) -> tuple[float, list[float]]:
    import ray
    from ray.cluster_utils import Cluster

    from validator.scoring.dispatch import make_score_fn
    from validator.scoring.ray_scorer import RayScorer

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(n_nodes):
        c.add_node(num_cpus=1, resources={RES: 1})
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        local = make_score_fn("cpu", work / "tok", endpoint=endpoint, warm=False)
        scorer = RayScorer("auto", local, work / "nodes", work / "cache", endpoint, resource=RES)
        t0 = time.perf_counter()
        results = scorer.score_many([(p, samples, comp, samples) for p in paths])
        makespan = time.perf_counter() - t0
        assert all(r is not None and r.failure is None for r in results), results
        scorer.close()
        return makespan, [r.seconds for r in results]
    finally:
        ray.shutdown()
        c.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--nodes", default="1,2,4")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from tests.factories import make_texts
    from validator.adapters.hub.localhub import LocalHub
    from validator.scoring.ray_place import makespan_bound

    samples = [(f"s{i}", t) for i, t in enumerate(make_texts(args.samples, seed=3))]
    figures, started = {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        mirror = root / "mirror"
        (mirror / "models").mkdir(parents=True)
        with LocalHub(mirror) as hub_server:
            comp, paths = build_field(root, args.models, mirror, hub_server.endpoint)
            jobs = None
            for n in [int(x) for x in args.nodes.split(",")]:
                makespan, seconds = run(n, comp, paths, samples, hub_server.endpoint, root / f"run{n}")
                jobs = jobs or seconds  # job times of the first (fewest nodes) run
                figures[str(n)] = {"makespan_s": round(makespan, 2), "bound_s": round(makespan_bound(jobs, n), 2),
                                   "ratio": round(makespan / max(makespan_bound(jobs, n), 1e-9), 2)}
                print(f"{n} node(s): makespan {makespan:.1f} s, bound {makespan_bound(jobs, n):.1f} s", flush=True)
    line = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "device": f"{platform.machine()} ({os.cpu_count()} CPUs)", "flags": vars(args),
            "job_seconds": [round(s, 2) for s in jobs or []], "figures": figures,
            "wall_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(line))
    if not args.no_record:
        with OUT.open("a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
