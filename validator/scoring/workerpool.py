"""A warm pool of isolated workers: one lane per device, a spare process ready on each lane.

Still one fresh process per job (validator.scoring.worker): what the pool adds is that while a job
runs, the lane's NEXT worker is already started and has imported `preload` (torch,
transformers, validator.scoring.job: ~5 s on 2 cores); the next job is handed to it over its stdin.
A spare is used once, then exits; a new spare is started at each hand-over. With fork (the default
on Linux) spares are forked from one fork server (validator.scoring.forkserver) that imported `preload`
once: ~10 ms and no CPU taken from the running job, instead of a fresh interpreter's imports (the
spawned path stays as the fallback when the server cannot fork). Isolation, limits and
failure reasons are run_spawned's, exactly as run_isolated's; the time limit counts from the
hand-over. A spare touches no device before its job (importing torch initialises no CUDA).

Spares are started by the lane's own long-lived thread: Linux's PR_SET_PDEATHSIG (a worker dies
with its parent) fires when the *thread* that started the process ends, so a lane thread lives
until `close`. The pool closes itself at interpreter exit; a killed validator takes its spares
with it (SIGKILL from the kernel).
"""
from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Callable, Sequence

from validator.scoring.worker import (Spawned, WorkerResult, _kill_group, _start_failure, check_job, run_spawned,
                                      spawn_worker)

logger = logging.getLogger(__name__)

POLL_S = 0.5  # how often run_many asks should_stop()


@dataclass(frozen=True)
class Job:
    fn_path: str  # "package.module:function"
    kwargs: dict
    timeout_s: float
    memory_limit_bytes: int | None = None
    rss_limit_bytes: int | None = None


# a job is built when a lane takes it: its kwargs may name the lane's device
JobFor = Callable[[str], Job]


@dataclass
class _Lane:
    device: str
    thread: threading.Thread | None = None
    spares: list[Spawned] = field(default_factory=list)  # oldest first: it has imported the most
    running: Spawned | None = None
    spares_started: int = 0
    jobs_run: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


_OPEN_POOLS: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()


@atexit.register
def _close_open_pools() -> None:
    for pool in list(_OPEN_POOLS):
        pool.close(wait=False)


class WorkerPool:
    """Lanes over `devices` (a device may repeat: two lanes on "cpu"); jobs go to the first free
    lane in submission order. spares: how many started workers wait on each lane (more than one
    lets the first jobs of a step skip their imports, at ~0.5 GiB of memory each with torch).
    warm=False: no spares, each job starts a cold worker (today's run_isolated), still one lane
    per device."""

    def __init__(self, devices: Sequence[str] = ("cpu",), preload: Sequence[str] = (), warm: bool = True,
                 spares: int = 1, fork: bool = True) -> None:
        if isinstance(devices, str) or not devices or not all(isinstance(d, str) and d for d in devices):
            raise ValueError(f"devices {devices!r}: expected a non-empty list of device names")
        if isinstance(spares, bool) or not isinstance(spares, int) or spares < 1:
            raise ValueError(f"spares {spares!r}: must be an int >= 1")
        self.spares = spares
        self.preload = tuple(preload)
        self.warm = bool(warm)
        from validator.scoring import forkserver

        self.fork = bool(fork) and self.warm and forkserver.supported()
        self._server = None  # the fork server, started by the first lane thread (it outlives it: see above)
        self._server_lock = threading.Lock()
        self._queue: "queue.Queue[tuple[JobFor, Future] | None]" = queue.Queue()
        self._closed = False
        self._lanes = [_Lane(d) for d in devices]
        for i, lane in enumerate(self._lanes):
            lane.thread = threading.Thread(target=self._serve, args=(lane,), name=f"worker-lane-{i}-{lane.device}",
                                           daemon=True)
            lane.thread.start()
        _OPEN_POOLS.add(self)

    @property
    def devices(self) -> list[str]:
        return [lane.device for lane in self._lanes]

    def spare_pids(self) -> list[int]:
        """The pids of the spares waiting now (for tests and diagnostics)."""
        return [w.proc.pid for lane in self._lanes for w in lane.spares]

    def submit(self, job_for: JobFor) -> Future:
        """Queue a job; its Future gives the WorkerResult (or the ValueError of a bad job)."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        fut: Future = Future()
        self._queue.put((job_for, fut))
        return fut

    def run(self, job_for: JobFor) -> WorkerResult:
        """Submit and wait; interrupted (Ctrl-C), the job's process group is killed, as run_isolated does."""
        res = self.run_many([job_for])[0]
        assert res is not None  # nothing stops a single job but an exception
        return res

    def run_many(self, jobs_for: Sequence[JobFor], on_done: Callable[[int, WorkerResult], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[WorkerResult | None]:
        """Run jobs on every lane at once; results in the order given (the caller orders the
        jobs: the lanes take them first come, first served). on_done(index, result) runs in this
        thread as each job ends (so the caller can save it at once); once should_stop() is true
        (checked every POLL_S) the jobs not yet started are dropped: None in their place."""
        futures = [self.submit(j) for j in jobs_for]
        index = {f: i for i, f in enumerate(futures)}
        results: list[WorkerResult | None] = [None] * len(futures)
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for f in sorted(done, key=index.__getitem__):
                    if f.cancelled():
                        continue
                    results[index[f]] = f.result()  # a bad job's ValueError: the caller's bug, raised here
                    if on_done is not None:
                        on_done(index[f], results[index[f]])
                if pending and should_stop is not None and should_stop():
                    for f in pending:
                        f.cancel()  # only those not started: a running job finishes
        except BaseException:
            for f in futures:
                f.cancel()  # not started yet: never starts
            self._kill_running()
            raise
        return results

    def close(self, wait: bool = True) -> None:
        """Stop the lanes and kill every spare; a running job is left to finish (wait=False:
        killed, e.g. at exit)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._lanes:
            self._queue.put(None)
        for lane in self._lanes:
            with lane.lock:
                spares, lane.spares = lane.spares, []
            for spare in spares:
                spare.discard()
        if not wait:
            self._kill_running()
        for lane in self._lanes:
            if wait and lane.thread is not None and lane.thread is not threading.current_thread():
                lane.thread.join()
        with self._server_lock:
            server, self._server = self._server, None
        if server is not None:
            server.close()  # after the lanes: a running forked job dies with its server
        _OPEN_POOLS.discard(self)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the lanes ----------------------------------------------------------------------

    def _kill_running(self) -> None:
        for lane in self._lanes:
            with lane.lock:
                running = lane.running
            if running is not None:
                _kill_group(running.proc.pid)  # its lane sees it end, reports it, cleans up

    def _serve(self, lane: _Lane) -> None:
        if self.fork:
            self._fork_server()  # its imports start now, long before the first job
        while True:
            item = self._queue.get()
            if item is None:
                return
            job_for, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                job = job_for(lane.device)
                kwargs_json = check_job(job.fn_path, job.kwargs, job.timeout_s, job.memory_limit_bytes,
                                        job.rss_limit_bytes)
            except Exception as e:  # noqa: BLE001 - a bad job is the caller's error, raised by its Future
                fut.set_exception(e)
                continue
            try:
                fut.set_result(self._run_on(lane, job, kwargs_json))
            except BaseException as e:  # noqa: BLE001 - the lane must keep serving; the caller gets it
                logger.exception("worker lane %s: job %s failed in the parent", lane.device, job.fn_path)
                fut.set_exception(e)

    def _fork_server(self):
        """The running fork server, started (from this lane thread) if there is none; None if it cannot be."""
        from validator.scoring.forkserver import ForkServer

        with self._server_lock:
            if self._closed:
                return None
            if self._server is not None and not self._server.alive():
                logger.warning("fork server %d exited (status %s); starting another",
                               self._server.proc.pid, self._server.proc.poll())
                self._server.close()
                self._server = None
            if self._server is None:
                try:
                    self._server = ForkServer(self.preload)
                except OSError as e:
                    logger.warning("could not start the fork server (spares are spawned instead): %s", e)
                    return None
            return self._server

    def _spawn(self, lane: _Lane) -> Spawned:
        spawned = None
        server = self._fork_server() if self.fork else None
        if server is not None:
            try:
                spawned = server.fork()
            except OSError as e:  # a spawned spare instead: slower, the same isolation
                logger.warning("worker lane %s: fork server could not fork: %s", lane.device, e)
        if spawned is None:
            spawned = spawn_worker(self.preload if self.warm else ())
        lane.spares_started += 1
        return spawned

    def _run_on(self, lane: _Lane, job: Job, kwargs_json: str) -> WorkerResult:
        start = time.monotonic()
        worker = None
        while worker is None:
            with lane.lock:
                if not lane.spares:
                    break
                worker = lane.spares.pop(0)
            if not worker.alive():  # died waiting (killed, OOM killer): not this job's fault
                logger.warning("worker lane %s: spare %d had exited (status %s); taking the next",
                               lane.device, worker.proc.pid, worker.proc.returncode)
                worker.discard()
                worker = None
        if worker is None:
            try:
                worker = self._spawn(lane)
            except OSError as e:
                return _start_failure(job.fn_path, e, start)
            if worker.forked:
                start = time.monotonic()  # waiting for the server's imports is ours, not the job's time
        while self.warm and not self._closed and len(lane.spares) < self.spares:
            if not self._start_spare(lane):
                break
        with lane.lock:
            lane.running = worker
        try:
            return run_spawned(worker, job.fn_path, kwargs_json, job.timeout_s, job.memory_limit_bytes,
                               job.rss_limit_bytes, start=start)
        finally:
            with lane.lock:
                lane.running = None
            lane.jobs_run += 1

    def _start_spare(self, lane: _Lane) -> bool:
        try:
            spare = self._spawn(lane)
        except OSError as e:  # the next job starts cold instead
            logger.warning("worker lane %s: could not start a spare: %s", lane.device, e)
            return False
        with lane.lock:
            if not self._closed:
                lane.spares.append(spare)
                return True
        spare.discard()  # closed meanwhile
        return False
