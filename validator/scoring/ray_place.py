"""Where the next job of a Ray step goes (pure): longest job first, a node that already holds
the model when one is free, a model's later jobs on the GPU type that scored it first, and a
model too large for its share of the step split by samples.

The driver (validator.scoring.ray_scorer) asks `pick` each time an actor is free and hands the
free actors over least-loaded node first (`free_order`); `shard` decides the splits once per step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class JobInfo:
    """One job of the step as placement sees it."""

    key: int  # the driver's job id
    content_hash: str | None  # the model's content; None: not on the hub (scored on the driver)
    cost: float  # ~ parameters x tokens (dispatch.job_cost)
    gpu_type: str | None = None  # the type that scored this model before; None: any


@dataclass(frozen=True)
class ActorInfo:
    """One scoring actor (one GPU) as placement sees it."""

    name: str
    node: str
    gpu_type: str


def free_order(free: list[ActorInfo], running_per_node: dict[str, int]) -> list[ActorInfo]:
    """The free actors, least-loaded node first (ties: the given order)."""
    return [a for _, a in sorted(enumerate(free), key=lambda it: (running_per_node.get(it[1].node, 0), it[0]))]


def pick(pending: list[JobInfo], actor: ActorInfo, held: set[str], types_present: set[str]) -> int | None:
    """The index in `pending` (longest first) of the job `actor` runs next, or None.

    A job whose model was scored on a GPU type runs only on that type while an actor of it is
    in the cluster (bf16 losses differ between types); among the jobs the actor may run, one
    whose model its node holds goes first, else the longest."""
    allowed = [i for i, j in enumerate(pending)
               if j.gpu_type is None or j.gpu_type == actor.gpu_type or j.gpu_type not in types_present]
    if not allowed:
        return None
    for i in allowed:
        if pending[i].content_hash is not None and pending[i].content_hash in held:
            return i
    return allowed[0]


def shard(costs: list[float], n_samples: list[int], workers: int) -> list[int]:
    """How many sample shards each job becomes: a job costing more than its share of the step
    (the sum over `workers`) is split into as many shards as shares it costs, at most one per
    worker and one per sample; the others stay whole (1)."""
    if workers <= 1 or not costs:
        return [1] * len(costs)
    share = sum(costs) / workers
    out = []
    for c, n in zip(costs, n_samples):
        k = math.ceil(c / share) if share > 0 and c > share else 1
        out.append(max(1, min(k, workers, n)))
    return out


def split_samples(samples: list, k: int) -> list[list]:
    """`samples` in `k` contiguous shards of nearly equal size (order kept)."""
    k = max(1, min(k, len(samples))) if samples else 1
    size, extra = divmod(len(samples), k)
    out, start = [], 0
    for i in range(k):
        end = start + size + (1 if i < extra else 0)
        out.append(samples[start:end])
        start = end
    return out


def makespan_bound(costs: list[float], workers: int) -> float:
    """The best any placement can do: max(sum of jobs / workers, longest job)."""
    return max(sum(costs) / max(workers, 1), max(costs, default=0.0))
