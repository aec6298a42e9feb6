"""The Scorer over a Ray cluster (`--ray ADDRESS`): one actor per GPU, the validator the driver.

The validator process stays the driver: chain, config, eval cache, ranking and weights never
leave it. Each actor holds its node's model store and a Scorer of its own (validator.scoring.
dispatch, warm=False): it ensures the committed model is on its node (the same verified
download and hash check, validator.adapters.hub.ensure_model) and scores it in the same
isolated worker, so isolation, time limits and failure reasons are those of one machine. An
actor imports no torch (its worker does).

Placement (validator.scoring.ray_place): longest job first; a free actor takes a job whose
model its node already holds, else the longest; a model's later jobs (re-checks) run on the GPU
type that scored it first while one is in the cluster; a model costing more than its share of
the step is split by samples across actors and merged. Faults: an actor lost with its node
puts its job back for another actor; a model's own failure is that model's result and never
retried; once `should_stop()` (the step deadline) nothing starts and what runs is cancelled.

A model that is not on the hub (a benchmark.json candidate dir) cannot be fetched by a node:
it is scored on the driver by the local Scorer.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from validator.adapters.hub.store import read_marker
from validator.core.competitions import Competition
from validator.core.scores import ScoreResult, result_from_json, result_to_json
from validator.ports import ScoreJob
from validator.scoring import ray_place
from validator.scoring.dispatch import job_cost

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often the driver asks should_stop() while jobs run
GPU = "GPU"  # the Ray resource of one actor; tests use a custom one


class RaySetupError(RuntimeError):
    """The cluster cannot be used (no address answers, no actor resource in it)."""


class _ScoringActor:
    """One GPU (or one stand-in resource) of the cluster. Runs in a Ray worker process."""

    def __init__(self, model_dir: str, cache_dir: str, endpoint: str | None, device: str, scorer_kw: dict) -> None:
        import ray

        from validator.scoring.dispatch import make_score_fn

        self.node = ray.get_runtime_context().get_node_id()
        self.gpu_type = "cpu"
        for n in ray.nodes():
            if n.get("NodeID") == self.node:
                types = [k.split(":", 1)[1] for k in n.get("Resources", {}) if k.startswith("accelerator_type:")]
                self.gpu_type = types[0] if types else ("gpu" if n.get("Resources", {}).get("GPU") else "cpu")
        where = f"ray-{self.node[:12]}"  # a node's own store, also when nodes share a file system
        self.model_dir, self.endpoint = Path(model_dir) / where, endpoint
        self.device = "cuda" if ray.get_gpu_ids() else device
        # warm: the actor's jobs run in workers forked from its own fork server (the actor imports no torch)
        self.scorer = make_score_fn(self.device, Path(cache_dir) / where, endpoint=endpoint, warm=True, **scorer_kw)
        self.held: set[str] = set()
        self.jobs = 0
        self.tokens_in: dict[str, int] = {}  # shipped token ids merged: object id -> entries

    def info(self) -> dict:
        return {"node": self.node, "gpu_type": self.gpu_type, "held": sorted(self.held), "jobs": self.jobs,
                "tokens_in": sum(self.tokens_in.values())}

    def _take_tokens(self, ref) -> None:
        """Merge a step's token ids (made once on the driver) into this node's token cache, once."""
        import ray

        from validator.scoring.token_cache import TokenCache

        if ref.hex() in self.tokens_in:
            return
        n = 0
        for data in ray.get(ref):
            delta = self.scorer.token_cache.delta_path()
            delta.parent.mkdir(parents=True, exist_ok=True)
            delta.write_bytes(data)
            n += len(TokenCache.load(delta))
            for note in self.scorer.token_cache.merge(delta):
                log.warning("node %s: %s", self.node[:8], note)
        self.tokens_in[ref.hex()] = n

    def imported(self, module: str) -> bool:
        import sys

        return module in sys.modules

    def score(self, model: dict, competition: dict, samples: list, step_samples: list | None,
              tokens: list | None = None) -> dict:
        """tokens: [a ref to the step's token ids as token cache files' bytes] (a list: resolved here, once)."""
        from validator.adapters import hub
        from validator.core.failures import FetchError
        from validator.core.identity import ModelId

        self.jobs += 1
        if tokens:
            self._take_tokens(tokens[0])
        comp = Competition.model_validate(competition)
        mid = ModelId(model["namespace"], model["name"], model["commit"], model["hash"], comp.id)
        reused = hub.snapshot_path(self.model_dir, model["hotkey"], mid).is_dir()
        try:
            snap = hub.ensure_model(mid, model["hotkey"], comp, self.model_dir, endpoint=self.endpoint,
                                    progress=False)
        except FetchError as e:  # the driver verified this model: the node's copy failed (its network, disk)
            return {"node_fetch": f"{e.reason.value}: {e.detail}"[:300]}
        self.held.add(snap.content_hash)
        res = self.scorer(snap.path, [tuple(s) for s in samples], comp,
                          None if step_samples is None else [tuple(s) for s in step_samples])
        out = result_to_json(res)
        out["placement"] = f"{self.node[:8]} {self.gpu_type}"
        out["reused"] = reused
        return out


def connect(address: str) -> None:
    """Join the cluster at `address` ("auto": the one this machine belongs to) as its driver."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RaySetupError(f"--ray {address}: no Ray cluster answers there ({e})") from None


class RayScorer:
    """A validator.ports.BatchScorer on a Ray cluster (see the module docstring)."""

    def __init__(self, address: str, local: Any, model_dir: Path, cache_dir: Path, endpoint: str | None, *,
                 resource: str = GPU, device: str = "cpu", scorer_kw: dict | None = None) -> None:
        import ray

        connect(address)
        self.local = local  # the driver's own Scorer: models that are not on the hub
        n = int(ray.cluster_resources().get(resource, 0))
        if n < 1:
            raise RaySetupError(f"--ray {address}: the cluster has no {resource!r} resource to place an actor on")
        opts = {"num_gpus": 1} if resource == GPU else {"resources": {resource: 1}, "num_cpus": 0}
        cls = ray.remote(max_restarts=-1, max_task_retries=0, **opts)(_ScoringActor)
        self.actors = [cls.remote(str(model_dir), str(cache_dir), endpoint, device, dict(scorer_kw or {}))
                       for _ in range(n)]
        infos = ray.get([a.info.remote() for a in self.actors])
        self.info = {i: ray_place.ActorInfo(f"actor{i}", d["node"], d["gpu_type"]) for i, d in enumerate(infos)}
        self.held: dict[str, set[str]] = {d["node"]: set(d["held"]) for d in infos}
        self.gpu_type_of: dict[str, str] = {}  # content hash -> the GPU type that scored it first
        self.reused: dict[str, bool] = {}  # content hash -> its last job found it on the node already
        self._lock = threading.Lock()

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        if self.local is not None:
            self.local.close()

    def __call__(self, model_path: Path, samples: list[tuple[str, str]], comp: Competition,
                 step_samples: list[tuple[str, str]] | None = None) -> ScoreResult:
        res = self.score_many([(model_path, samples, comp, step_samples)])[0]
        return res if res is not None else ScoreResult({}, {}, "cluster: not scored (no actor left)", 0.0)

    def score_many(self, jobs: list[ScoreJob], on_result: Callable[[int, ScoreResult], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> list[ScoreResult | None]:
        results: list[ScoreResult | None] = [None] * len(jobs)
        remote, local = [], []
        for i, (path, samples, comp, step_samples) in enumerate(jobs):
            marker = read_marker(path) if path is not None else None
            (remote if marker and marker.get("repo_id") and marker.get("hash") else local).append((i, marker))
        with self._lock:  # one step at a time on the cluster
            self._run_remote(jobs, remote, results, on_result, should_stop)
        for i, _ in local:
            if should_stop is not None and should_stop():
                break
            path, samples, comp, step_samples = jobs[i]
            results[i] = self.local(path, samples, comp, step_samples)
            if on_result is not None:
                on_result(i, results[i])
        return results

    def _run_remote(self, jobs: list[ScoreJob], remote: list[tuple[int, dict]], results: list,
                    on_result: Callable | None, should_stop: Callable[[], bool] | None) -> None:
        import ray

        if not remote:
            return
        # the step's ids under each competition tokenizer, made once here and put in the object store once
        shipped = self.local.pretokenize([jobs[i] for i, _ in remote]) if self.local is not None else []
        tokens = [ray.put(shipped)] if shipped else None
        costs = [float(job_cost(jobs[i][0], len(jobs[i][1]))) for i, _ in remote]
        ks = ray_place.shard(costs, [len(jobs[i][1]) for i, _ in remote], len(self.actors))
        step_ref = {}  # one copy of each step sample list in the object store
        pending: list[ray_place.JobInfo] = []
        parts: dict[int, tuple[int, dict, list]] = {}  # job key -> (job index, model ref, samples)
        shards_left: dict[int, list[ScoreResult]] = {}
        for (i, marker), cost, k in zip(remote, costs, ks):
            path, samples, comp, step_samples = jobs[i]
            if step_samples is not None and id(step_samples) not in step_ref:
                step_ref[id(step_samples)] = ray.put([list(s) for s in step_samples])
            namespace, name = marker["repo_id"].split("/", 1)
            model = {"namespace": namespace, "name": name, "commit": marker["commit"], "hash": marker["hash"],
                     "hotkey": marker["hotkey"]}
            shards_left[i] = []
            for part in ray_place.split_samples(list(samples), k):
                key = len(parts)
                parts[key] = (i, model, [list(s) for s in part])
                pending.append(ray_place.JobInfo(key, marker.get("dir_hash"), cost / k,
                                                 self.gpu_type_of.get(marker.get("dir_hash"))))
        expected = {i: k for (i, _), k in zip(remote, ks)}
        pending.sort(key=lambda j: -j.cost)
        alive = dict(self.info)
        free = list(alive)
        running: dict[Any, tuple[int, ray_place.JobInfo]] = {}  # ref -> (actor index, job)

        def finish(i: int, res: ScoreResult) -> None:
            shards_left[i].append(res)
            if len(shards_left[i]) == expected[i]:
                results[i] = _merge(shards_left[i])
                if on_result is not None:
                    on_result(i, results[i])

        while pending or running:
            if should_stop is not None and should_stop():
                for ref in running:
                    ray.cancel(ref)
                return
            per_node: dict[str, int] = {}
            for a, _ in running.values():
                per_node[alive[a].node] = per_node.get(alive[a].node, 0) + 1
            types = {alive[a].gpu_type for a in alive}
            for info in ray_place.free_order([alive[a] for a in free], per_node):
                a = int(info.name[len("actor"):])
                k = ray_place.pick(pending, info, self.held.get(info.node, set()), types)
                if k is None:
                    continue
                job = pending.pop(k)
                i, model, part = parts[job.key]
                comp, step_samples = jobs[i][2], jobs[i][3]
                ref = self.actors[a].score.remote(model, comp.model_dump(mode="json"), part,
                                                  None if step_samples is None else step_ref[id(step_samples)],
                                                  tokens)
                running[ref] = (a, job)
                free.remove(a)
            if not running:
                if pending:
                    log.warning("ray: %d job(s) left and no actor alive to run them", len(pending))
                return
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for ref in ready:
                a, job = running.pop(ref)
                i = parts[job.key][0]
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # our code failed on the node: not the model's fault
                    log.error("ray: job of %s failed on %s: %s", jobs[i][0], alive[a].node[:8], e)
                    finish(i, ScoreResult({}, {}, None, 0.0, notes=[f"not scored on the cluster: {e}"[:300]]))
                    free.append(a)
                    continue
                except ray.exceptions.RayError as e:  # the actor or its node is gone: the job goes back
                    log.warning("ray: %s lost (%s); its job is placed again", alive[a].node[:8], type(e).__name__)
                    alive.pop(a)
                    pending.append(job)
                    pending.sort(key=lambda j: -j.cost)
                    continue
                free.append(a)
                if "node_fetch" in value:
                    log.warning("ray: node %s could not fetch %s: %s", alive[a].node[:8], jobs[i][0],
                                value["node_fetch"])
                    finish(i, ScoreResult({}, {}, None, 0.0, notes=[f"node fetch: {value['node_fetch']}"]))
                    continue
                if job.content_hash is not None:
                    self.reused[job.content_hash] = bool(value.get("reused"))
                    self.held.setdefault(alive[a].node, set()).add(job.content_hash)
                    self.gpu_type_of.setdefault(job.content_hash, alive[a].gpu_type)
                finish(i, result_from_json(value))


def _merge(parts: list[ScoreResult]) -> ScoreResult | None:
    """One model's shards as one result; a shard that failed makes the model fail, one that the
    cluster could not score (no losses, no failure) leaves the model unscored (None)."""
    failed = [p for p in parts if p.failure]
    if failed:
        return failed[0]
    if any(not p.losses for p in parts):
        return None
    first = parts[0]
    merged = ScoreResult({}, {}, None, sum(p.seconds for p in parts), engine=first.engine,
                         tokenizer=first.tokenizer, tokenizer_reason=first.tokenizer_reason,
                         notes=[n for p in parts for n in p.notes],
                         placement=", ".join(sorted({p.placement for p in parts if p.placement})) or None)
    for p in parts:
        merged.losses.update(p.losses)
        merged.n_tokens.update(p.n_tokens)
    return merged
