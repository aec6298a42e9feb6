"""The placement rule of a Ray step (validator.scoring.ray_place): pure, no cluster needed."""
from __future__ import annotations

from validator.scoring.ray_place import ActorInfo, JobInfo, free_order, makespan_bound, pick, shard, split_samples

A = ActorInfo("actor0", "nodeA", "H100")
B = ActorInfo("actor1", "nodeB", "A100")


def test_longest_job_first_when_no_node_holds_a_model():
    pending = [JobInfo(0, "h0", 9.0), JobInfo(1, "h1", 5.0)]
    assert pick(pending, A, set(), {"H100", "A100"}) == 0


def test_a_node_holding_the_model_takes_it_before_a_longer_one():
    pending = [JobInfo(0, "h0", 9.0), JobInfo(1, "h1", 5.0)]
    assert pick(pending, A, {"h1"}, {"H100", "A100"}) == 1


def test_a_rechecked_model_stays_on_its_gpu_type_while_that_type_is_present():
    pending = [JobInfo(0, "h0", 9.0, gpu_type="A100")]
    assert pick(pending, A, set(), {"H100", "A100"}) is None
    assert pick(pending, B, set(), {"H100", "A100"}) == 0
    assert pick(pending, A, set(), {"H100"}) == 0  # that type left the cluster: any GPU scores it


def test_free_actors_least_loaded_node_first():
    assert free_order([A, B], {"nodeA": 2, "nodeB": 0}) == [B, A]
    assert free_order([A, B], {}) == [A, B]


def test_a_model_above_its_share_is_split_at_most_once_per_worker_and_sample():
    assert shard([10.0, 1.0, 1.0], [100, 100, 100], 4) == [4, 1, 1]
    assert shard([10.0, 1.0], [2, 100], 4) == [2, 1]
    assert shard([1.0, 1.0], [10, 10], 2) == [1, 1]
    assert shard([10.0], [10], 1) == [1]


def test_split_samples_keeps_every_sample_once_in_order():
    parts = split_samples(list(range(7)), 3)
    assert [len(p) for p in parts] == [3, 2, 2] and sum(parts, []) == list(range(7))
    assert split_samples([1, 2], 5) == [[1], [2]]


def test_makespan_bound_is_the_larger_of_mean_load_and_longest_job():
    assert makespan_bound([4.0, 1.0, 1.0], 2) == 4.0
    assert makespan_bound([2.0, 2.0, 2.0, 2.0], 2) == 4.0
