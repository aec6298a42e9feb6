"""The warm worker pool (issue 18): a spare per device, still one fresh process per job.

The pool must change nothing but the start-up time: the same results as fresh workers, a
crash or a timeout costs its own job only, no spare outlives the pool or the parent, and two
devices score two models at once with the sequential results.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.factories import gone_or_zombie
from validator.scoring.workerpool import Job, WorkerPool

JOBS = "tests.worker_jobs"


def _wait_gone(pid: int, within_s: float = 10) -> bool:
    deadline = time.monotonic() + within_s  # SIGKILL is asynchronous: give the kernel a moment
    while not gone_or_zombie(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone_or_zombie(pid)


def job(fn: str, timeout_s: float = 60, **kwargs) -> "callable":
    return lambda device: Job(f"{JOBS}:{fn}", kwargs, timeout_s)


@pytest.fixture
def pool():
    p = WorkerPool(["cpu"], preload=(JOBS,))
    yield p
    p.close()


def test_each_job_runs_on_the_spare_started_while_the_previous_ran(pool):
    first = pool.run(job("add", a=1, b=2))
    assert first.ok and first.value["sum"] == 3, first.detail
    (spare,) = pool.spare_pids()  # started at the hand-over, waiting for the next job
    assert spare != first.value["pid"] and spare != os.getpid()
    second = pool.run(job("add", a=2, b=3))
    assert second.ok and second.value["sum"] == 5
    assert second.value["pid"] == spare  # the spare took it: used once...
    assert second.value["pgid"] == spare  # ...leading its own process group, as a fresh worker does
    assert _wait_gone(first.value["pid"]) and _wait_gone(spare)  # ...then gone
    assert pool.spare_pids() and pool.spare_pids()[0] not in (first.value["pid"], spare)


def test_two_spares_wait_and_are_used_oldest_first():
    with WorkerPool(["cpu"], preload=(JOBS,), spares=2) as p:
        p.run(job("add", a=0, b=0))
        first, second = p.spare_pids()
        assert p.run(job("add", a=1, b=1)).value["pid"] == first
        assert p.run(job("add", a=1, b=1)).value["pid"] == second
        assert len(p.spare_pids()) == 2 and not set(p.spare_pids()) & {first, second}
    with pytest.raises(ValueError, match="spares"):
        WorkerPool(["cpu"], spares=0)


def test_spare_environment_is_scrubbed_and_offline(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with WorkerPool(["cpu"]) as p:  # the spare is started with the secret in our environment
        p.run(lambda d: Job("os:getenv", {"key": "PATH"}, 60))
        token = p.run(lambda d: Job("os:getenv", {"key": "HF_TOKEN"}, 60))
        offline = p.run(lambda d: Job("os:getenv", {"key": "HF_HUB_OFFLINE"}, 60))
    assert token.ok and token.value is None, token.detail
    assert offline.ok and offline.value == "1"


def test_a_segfault_fails_alone_and_the_next_job_runs_on_a_fresh_spare(pool):
    pool.run(job("add", a=0, b=0))
    (spare,) = pool.spare_pids()
    crashed = pool.run(job("segfault"))
    assert crashed.reason == "crashed" and "SIGSEGV" in crashed.detail
    (fresh,) = pool.spare_pids()
    assert fresh != spare
    nxt = pool.run(job("add", a=2, b=3))
    assert nxt.ok and nxt.value["sum"] == 5 and nxt.value["pid"] == fresh


def test_a_timeout_kills_its_job_and_grandchild_only(pool, tmp_path):
    pool.run(job("add", a=0, b=0))
    pid_file = tmp_path / "grandchild.pid"
    res = pool.run(job("sleep_with_grandchild", timeout_s=3, seconds=600, pid_file=str(pid_file)))
    assert res.reason == "timeout" and res.seconds >= 3
    assert _wait_gone(int(pid_file.read_text())), "the job's grandchild outlived the timeout"
    (spare,) = pool.spare_pids()
    assert not gone_or_zombie(spare)  # the next job's spare is untouched
    nxt = pool.run(job("add", a=1, b=1))
    assert nxt.ok and nxt.value["pid"] == spare


def test_failure_reasons_are_those_of_a_fresh_worker(pool):
    from validator.scoring.worker import run_isolated

    for fn, kwargs in (("raise_value_error", {"message": "bad vocab"}), ("exit_silently", {"code": 3}),
                       ("raise_cuda_error", {}), ("return_non_json", {})):
        warm, cold = pool.run(job(fn, **kwargs)), run_isolated(f"{JOBS}:{fn}", kwargs, timeout_s=60)
        assert (warm.ok, warm.reason, warm.describe()) == (cold.ok, cold.reason, cold.describe())


def test_a_dead_spare_is_replaced_not_blamed(pool):
    pool.run(job("add", a=0, b=0))
    (spare,) = pool.spare_pids()
    os.kill(spare, signal.SIGKILL)
    assert _wait_gone(spare)
    res = pool.run(job("add", a=4, b=4))
    assert res.ok and res.value["sum"] == 8 and res.value["pid"] != spare


def test_bad_job_is_rejected_by_name(pool):
    with pytest.raises(ValueError, match="timeout_s"):
        pool.run(lambda d: Job(f"{JOBS}:add", {"a": 1, "b": 2}, 0))
    with pytest.raises(ValueError, match="devices"):
        WorkerPool([])
    assert pool.run(job("add", a=1, b=2)).ok  # the lane goes on


def test_no_spare_remains_after_close():
    p = WorkerPool(["cpu", "cpu"], preload=(JOBS,))
    p.run_many([job("add", a=1, b=1), job("add", a=2, b=2)])
    spares = p.spare_pids()
    assert len(spares) == 2
    p.close()
    assert all(_wait_gone(s) for s in spares)
    assert p.spare_pids() == []
    with pytest.raises(RuntimeError, match="closed"):
        p.submit(job("add", a=1, b=1))


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_no_spare_outlives_its_parent(tmp_path, how):
    # the parent runs one job (so a spare waits), prints the spare's pid, then dies
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from validator.scoring.workerpool import Job, WorkerPool
        p = WorkerPool(["cpu"], preload=("tests.worker_jobs",))
        assert p.run(lambda d: Job("tests.worker_jobs:add", {{"a": 1, "b": 1}}, 60)).ok
        print(p.spare_pids()[0], flush=True)
        {"os.kill(os.getpid(), signal.SIGKILL)" if how == "sigkill" else "sys.exit(0)"}
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    spare = int(out.stdout.strip())
    assert _wait_gone(spare), f"spare {spare} outlived its parent ({how})"


def test_two_cpu_devices_run_two_jobs_at_once(tmp_path):
    with WorkerPool(["cpu", "cpu"], preload=(JOBS,)) as p:
        p.run_many([job("add", a=0, b=0), job("add", a=0, b=0)])  # both spares up
        start = time.monotonic()
        res = p.run_many([job("sleep_with_grandchild", seconds=2, pid_file=str(tmp_path / f"{i}.pid"))
                          for i in range(2)])
        took = time.monotonic() - start
    assert all(r.ok for r in res)
    assert took < 3.5, f"two 2 s jobs on two lanes took {took:.1f}s: not concurrent"


# --- the scorer on the pool ------------------------------------------------------------------

@pytest.fixture(scope="module")
def field(tmp_path_factory):
    from tests.factories import make_model, make_texts, make_tokenizer
    from validator.core.competitions import Competition

    root = tmp_path_factory.mktemp("pool")
    tok = root / "tok"
    make_tokenizer(tok)
    models = [make_model(root / f"m{i}", "llama", seed=i, tokenizer_dir=tok, hidden=32 + 16 * i) for i in range(3)]
    comp = Competition(id="c00", reward=0.5, model_types=["LlamaForCausalLM"], parameters=10**9,
                       model_size=10**10, dataset="x", tokenizer=str(tok),
                       max_sequence_len=4096, cap_sample_len=20480, max_tokenize_fails=3)
    samples = [(f"s{i}", t) for i, t in enumerate(make_texts(6, seed=5))]
    return {"root": root, "models": models, "comp": comp, "samples": samples}


def test_scorer_on_two_cpu_devices_equals_scoring_in_process(field, tmp_path):
    from validator.scoring.dispatch import job_cost, make_score_fn

    comp, samples, models = field["comp"], field["samples"], field["models"]
    jobs = [(m, samples[: 2 + i], comp, samples) for i, m in enumerate(models)]
    assert job_cost(models[2], 4) > job_cost(models[0], 2) > 0  # bigger weights x more samples
    direct = make_score_fn("cpu", tmp_path / "tok1", isolate=False)
    expected = [direct(*j[:3], step_samples=j[3]) for j in jobs]
    scorer = make_score_fn("cpu", tmp_path / "tok2", devices=["cpu", "cpu"], timeout_s=300)
    try:
        got = scorer.score_many(jobs)
        again = scorer(*jobs[0][:3], step_samples=jobs[0][3])  # one at a time, on a warm spare
    finally:
        scorer.close()
    assert [sorted(g.losses) for g in got] == [sorted(s for s, _ in j[1]) for j in jobs]  # job order
    for g, e in zip(got + [again], expected + expected[:1]):
        assert g.failure is None, g.failure
        assert g.losses == pytest.approx(e.losses, rel=1e-6)
        assert g.n_tokens == e.n_tokens
    # an independent check that the losses are real: a random init predicts about uniformly, so the
    # summed loss per token is near ln(vocab size 300)
    per_token = [g.losses[s] / g.n_tokens[s] for g in got for s in g.losses]
    assert all(0.8 * math.log(300) < v < 1.2 * math.log(300) for v in per_token), per_token


def test_scorer_cold_path_is_unchanged(field, tmp_path):
    from validator.scoring.dispatch import make_score_fn

    comp, samples, model = field["comp"], field["samples"][:2], field["models"][0]
    cold = make_score_fn("cpu", tmp_path / "tok1", warm=False, timeout_s=300)
    assert cold._pool is None  # today's path: run_isolated per model
    direct = make_score_fn("cpu", tmp_path / "tok2", isolate=False)(model, samples, comp)
    res = cold(model, samples, comp)
    assert res.failure is None and res.losses == pytest.approx(direct.losses, rel=1e-6)
    with pytest.raises(ValueError, match="devices"):
        make_score_fn("cpu", tmp_path, devices="cpu")


def test_run_many_reports_each_job_as_it_ends_and_stops_starting_new_ones(pool):
    seen = []
    jobs = [job("add", a=i, b=0) for i in range(4)]
    res = pool.run_many(jobs, on_done=lambda i, r: seen.append((i, r.value["sum"])), should_stop=lambda: bool(seen))
    assert res[0].ok and res[0].value["sum"] == 0
    assert res[-1] is None  # never started: the stop came first (one lane: job 1 at most was under way)
    assert seen == [(i, i) for i, r in enumerate(res) if r is not None]  # each reported once, with its own result


def test_two_lanes_keep_every_token_id_either_tokenized(field, tmp_path):
    # both jobs start from the same (empty) token cache at once; before one writer, the later save won
    from validator.scoring.dispatch import make_score_fn
    from validator.scoring.token_cache import TokenCache

    comp, samples, models = field["comp"], field["samples"], field["models"]
    scorer = make_score_fn("cpu", tmp_path / "cache", devices=["cpu", "cpu"], timeout_s=300)
    try:
        got = scorer.score_many([(models[0], samples[:3], comp, None), (models[1], samples[3:], comp, None)])
    finally:
        scorer.close()
    assert all(g.failure is None for g in got), [g.failure for g in got]
    cached = TokenCache.load(tmp_path / "cache" / "tokens.npz")
    assert {k.rsplit("|", 1)[1] for k in cached._entries} == {s for s, _ in samples}
    assert not list((tmp_path / "cache").glob("tokens-new-*"))


def test_two_lanes_tokenize_the_step_once_before_dispatch(field, tmp_path):
    from tests.factories import make_model
    from validator.scoring.dispatch import make_score_fn

    comp, samples = field["comp"], field["samples"]
    # models without a tokenizer of their own: every one is scored with the competition's
    models = [make_model(tmp_path / f"bare{i}", "llama", seed=i, hidden=32) for i in range(3)]
    jobs = [(m, samples[i: i + 2], comp, samples) for i, m in enumerate(models)]
    expected = make_score_fn("cpu", tmp_path / "ref", isolate=False)
    want = [expected(*j[:3], step_samples=j[3]) for j in jobs]
    scorer = make_score_fn("cpu", tmp_path / "cache", devices=["cpu", "cpu"], timeout_s=300)
    written = []  # for each delta merged: did its job add anything?
    merge = scorer.token_cache.merge
    scorer.token_cache.merge = lambda d: (written.append(Path(d).exists()), merge(d))[1]
    try:
        got = scorer.score_many(jobs)
        shipped = scorer.pretokenize(jobs)  # a second time: nothing left to add
    finally:
        scorer.close()
    assert [g.tokenizer for g in got] == ["competition"] * 3, [g.tokenizer_reason for g in got]
    assert written == [True, False, False, False, False]  # the step's tokenize job, then three models, then again
    assert shipped == []
    for g, w in zip(got, want):
        assert g.failure is None and g.losses == pytest.approx(w.losses, rel=1e-6) and g.n_tokens == w.n_tokens
