"""The fork server (issue 18): warm workers forked from one process that imported the libraries once.

A forked worker must be as isolated as a spawned one (its own session, the scrubbed environment, one
job then gone, dies with its server and the validator; benchmarks/bench_step.py measures its start),
and a dead server must cost no job: the pool starts another or spawns.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.factories import gone_or_zombie
from validator.scoring import forkserver
from validator.scoring.workerpool import Job, WorkerPool

JOBS = "tests.worker_jobs"
pytestmark = pytest.mark.skipif(not forkserver.supported(), reason="the fork server needs Linux")


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _wait_gone(pid: int, within_s: float = 10) -> bool:
    deadline = time.monotonic() + within_s
    while not gone_or_zombie(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone_or_zombie(pid)


def add(a: int, b: int):
    return lambda device: Job(f"{JOBS}:add", {"a": a, "b": b}, 60)


def test_spares_are_forked_from_one_server_and_each_leads_its_own_session():
    with WorkerPool(["cpu", "cpu"], preload=(JOBS,)) as p:
        first = p.run_many([add(1, 1), add(2, 2)])
        server = p._server.proc.pid
        assert server != os.getpid() and _ppid(server) == os.getpid()
        spares = p.spare_pids()
        assert len(spares) == 2 and all(_ppid(s) == server for s in spares)  # forked, not spawned
        res = p.run_many([add(3, 3), add(4, 4)])
        assert [r.value["sum"] for r in res] == [6, 8]
        assert {r.value["pid"] for r in res} == set(spares)
        assert all(r.value["pgid"] == r.value["pid"] for r in res + first)  # a timeout kills only its group
        assert all(_wait_gone(s) for s in spares)  # used once


def test_fork_false_spawns_every_spare():
    with WorkerPool(["cpu"], preload=(JOBS,), fork=False) as p:
        p.run(add(0, 0))
        (spare,) = p.spare_pids()
        assert _ppid(spare) == os.getpid() and p._server is None


def test_a_killed_server_costs_no_job_and_is_replaced():
    with WorkerPool(["cpu"], preload=(JOBS,)) as p:
        p.run(add(0, 0))
        old = p._server.proc.pid
        (spare,) = p.spare_pids()
        os.kill(old, signal.SIGKILL)
        assert _wait_gone(old) and _wait_gone(spare)  # its forked spare died with it
        res = p.run(add(5, 5))
        assert res.ok and res.value["sum"] == 10, res.detail
        nxt = p.run(add(1, 2))
        assert nxt.ok and nxt.value["sum"] == 3
        assert p._server is not None and p._server.proc.pid != old
        assert all(_ppid(s) == p._server.proc.pid for s in p.spare_pids())


def test_close_ends_the_server_and_its_spares():
    p = WorkerPool(["cpu"], preload=(JOBS,))
    p.run(add(0, 0))
    server, spares = p._server.proc.pid, p.spare_pids()
    p.close()
    assert _wait_gone(server) and all(_wait_gone(s) for s in spares)


def test_a_forked_job_sees_the_scrubbed_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("WALLET_PASSWORD", "pw")
    with WorkerPool(["cpu"]) as p:
        got = {k: p.run(lambda d, k=k: Job("os:getenv", {"key": k}, 60)) for k in ("HF_TOKEN", "WALLET_PASSWORD",
                                                                                     "HF_HUB_OFFLINE")}
        assert p._server is not None
    assert all(r.ok for r in got.values())
    assert got["HF_TOKEN"].value is None and got["WALLET_PASSWORD"].value is None
    assert got["HF_HUB_OFFLINE"].value == "1"
