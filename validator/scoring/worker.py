"""Run one job ("package.module:function"(**kwargs)) in a fresh, isolated child process.

Why a process per job: scoring a miner's model can segfault, hang, exhaust memory or
poison the CUDA context; none of that may take the validator down. A job is minutes of
work, so the ~0.1 s (plus imports) of starting a fresh interpreter is negligible.

Protocol: the parent starts `python -m validator.scoring.worker` in a new session (its own process
group, so a timeout kills grandchildren too) and writes two JSON texts on its stdin: a setup
line (parent pid, sys.path, log level, modules to preload) and then the job, after which it
closes stdin; it reads the result as JSON from a file in a private temp dir. Nothing is ever
unpickled. run_isolated sends both at once; validator.scoring.workerpool sends the setup at once and
the job later, so a "spare" has imported torch and transformers before its job arrives.
The child's stdout and stderr (its logging included) go to a log file whose tail is kept
in `WorkerResult.detail`.

The child gets a scrubbed environment (validator.scoring.worker_limits.child_environment): only
what Python, torch, the tokenizers and the accelerator read; tokens, wallet and other secrets
never reach a job, which runs a miner's model. It runs offline (HF_HUB_OFFLINE=1): a job never
reaches the network. The child's side of the protocol is validator.scoring.worker_child.

Reasons a job fails (`WorkerResult.reason`):
  "timeout"  ran past timeout_s; the whole process group was killed
  "crashed"  died from a signal (segfault, SIGKILL, abort) or exited without a result
  "oom"      MemoryError, torch.OutOfMemoryError / "out of memory", memory_limit_bytes hit, or the
             job's resident memory over rss_limit_bytes (the parent's watchdog killed it)
  "cuda"     a CUDA error (device-side assert, illegal memory access, ...)
  "error"    any other exception, including a return value that is not JSON
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from validator.scoring.worker_limits import child_environment, group_rss_bytes

logger = logging.getLogger(__name__)

REASONS = ("timeout", "crashed", "oom", "cuda", "error")
DETAIL_TAIL_CHARS = 4000  # the last characters of the child's output kept in `detail`
_RESULT_FILE = "result.json"
_LOG_FILE = "output.log"
_READY_FILE = "ready"  # written by a worker with preloads once they are imported
READY_POLL_S = 0.05
# The most a job waits for its worker's preloads (our libraries, not the model: not its time)
READY_LIMIT_S = 300.0
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])  # the dir holding validator/
RSS_POLL_S = 0.5  # how often the parent reads the job's resident memory (rss_limit_bytes)


@dataclass
class WorkerResult:
    ok: bool
    value: Any  # the job's return value after a JSON round trip (None when not ok)
    reason: str | None  # one of REASONS when not ok
    seconds: float  # wall clock seen by the parent, interpreter start-up included
    detail: str = ""  # exception / signal description, traceback tail, child output tail

    def describe(self) -> str:
        """One line for logs and the leaderboard, e.g. "error: ValueError: bad vocab"."""
        if self.ok:
            return f"ok in {self.seconds:.1f}s"
        first = self.detail.strip().splitlines()[0] if self.detail.strip() else ""
        return f"{self.reason}: {first}" if first else str(self.reason)


# --- the parent side ---------------------------------------------------------------------


def _check_fn_path(fn_path: str) -> None:
    module, sep, func = fn_path.partition(":") if isinstance(fn_path, str) else ("", "", "")
    if not sep or not module or not func or ":" in func:
        raise ValueError(f"fn_path {fn_path!r}: expected 'package.module:function'")


def _tail(path: Path, limit: int = DETAIL_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return ("..." + text) if size > limit else text


def _kill_group(pgid: int) -> None:
    # The child leads its own session, so its pid is the process group id of everything
    # it started; SIGKILL leaves no handler a hung job could block in.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return  # the group is already gone: nothing left to kill


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Spawned:
    """A started worker process waiting on its stdin for one job (see `spawn_worker`).

    It owns a private temp dir (its output log and the result file); `discard` kills it and
    removes the dir. Used once: `run_spawned` hands it a job and discards it afterwards."""

    def __init__(self, proc: subprocess.Popen, tmp: tempfile.TemporaryDirectory, preloads: bool = False) -> None:
        self.proc = proc
        self.preloads = preloads  # the job's clock starts once the worker has imported them
        self.forked = False  # forked from validator.scoring.forkserver (its imports were done before)
        self._tmp = tmp
        self.dir = Path(tmp.name)
        self.log_path = self.dir / _LOG_FILE
        self.result_path = self.dir / _RESULT_FILE
        self.ready_path = self.dir / _READY_FILE

    def alive(self) -> bool:
        return self.proc.poll() is None

    def discard(self) -> None:
        """Kill the process group (grandchildren included), reap it, remove the temp dir."""
        _kill_group(self.proc.pid)
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                logger.debug("worker %d: stdin already broken", self.proc.pid)
        self.proc.wait()
        self._tmp.cleanup()


def spawn_worker(preload: tuple[str, ...] = (), *, module: str = "validator.scoring.worker",
                 pass_fd: int | None = None) -> Spawned:
    """Start `python -m validator.scoring.worker` (own session, scrubbed environment) and send it its
    setup: the parent's pid (it dies with us), sys.path, the log level, and `preload`, modules it
    imports before it waits for its job (a warm spare: torch, transformers, ...). Importing
    touches no device; the job alone does. Raises OSError when the process cannot start.
    module/pass_fd: the fork server (validator.scoring.forkserver) starts the same way, with its socket."""
    tmp = tempfile.TemporaryDirectory(prefix="coldint-worker-")
    log_path = Path(tmp.name) / _LOG_FILE
    env = child_environment(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PROJECT_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, close_fds=True, pass_fds=() if pass_fd is None else (pass_fd,),
            )
    except OSError:
        tmp.cleanup()
        raise
    spawned = Spawned(proc, tmp, preloads=bool(preload))
    send_setup(spawned, os.getpid(), preload, fd=pass_fd)
    return spawned


def send_setup(spawned: Spawned, parent_pid: int, preload: tuple[str, ...] = (), **extra) -> None:
    """Write a worker's setup line (validator.scoring.worker_child reads it): the pid it dies with,
    sys.path, the log level, its preloads and where it says they are imported."""
    setup = {
        # the child imports like the parent does (as multiprocessing's spawn would)
        "sys_path": [p for p in sys.path if isinstance(p, str)],
        "parent_pid": parent_pid,
        "log_level": logging.getLogger().getEffectiveLevel(),
        "preload": list(preload),
        "ready_path": str(spawned.ready_path) if preload else None,
        **extra,
    }
    proc = spawned.proc
    assert proc.stdin is not None
    try:
        proc.stdin.write((json.dumps(setup) + "\n").encode())
        proc.stdin.flush()
    except BrokenPipeError:
        logger.debug("worker %d exited before reading its setup", proc.pid)  # dead: run_spawned says why


def check_job(fn_path: str, kwargs: dict, timeout_s: float, memory_limit_bytes: int | None = None,
              rss_limit_bytes: int | None = None) -> str:
    """Validate a job's arguments (ValueError naming the bad one); returns kwargs as JSON."""
    _check_fn_path(fn_path)
    if isinstance(timeout_s, bool) or not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s {timeout_s!r}: must be a positive number of seconds")
    if memory_limit_bytes is not None and (isinstance(memory_limit_bytes, bool) or not (
            isinstance(memory_limit_bytes, int) and memory_limit_bytes > 0)):
        raise ValueError(f"memory_limit_bytes {memory_limit_bytes!r}: must be a positive int or None")
    if rss_limit_bytes is not None and (isinstance(rss_limit_bytes, bool) or not (
            isinstance(rss_limit_bytes, int) and rss_limit_bytes > 0)):
        raise ValueError(f"rss_limit_bytes {rss_limit_bytes!r}: must be a positive int or None")
    if not isinstance(kwargs, dict):
        raise ValueError(f"kwargs for {fn_path}: must be a dict, got {type(kwargs).__name__}")
    try:
        return json.dumps(kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"kwargs for {fn_path}: not JSON-able ({e})") from e


def _start_failure(fn_path: str, e: OSError, start: float) -> WorkerResult:
    # e.g. out of processes or file descriptors: this job fails, we don't
    logger.warning("worker %s could not start: %s", fn_path, e)
    return WorkerResult(False, None, "error", time.monotonic() - start,
                        f"could not start the worker process: {type(e).__name__}: {e}")


def run_isolated(fn_path: str, kwargs: dict, timeout_s: float,
                 memory_limit_bytes: int | None = None, rss_limit_bytes: int | None = None) -> WorkerResult:
    """Run fn_path(**kwargs) in a fresh child process and return what happened.

    kwargs must be JSON-able (ValueError otherwise: that is a bug of the caller, not a job
    failure). memory_limit_bytes caps the child's address space (RLIMIT_AS) once the job's
    module is imported; it counts virtual memory, so leave room for the interpreter and
    libraries (torch reserves several GiB of address space; do not use it with CUDA).
    rss_limit_bytes: the parent reads the job's resident memory (its whole process group) every
    RSS_POLL_S and kills it past the limit ("oom"); works with CUDA, where address-space limits
    break the driver. Never raises because of anything the child does.
    """
    kwargs_json = check_job(fn_path, kwargs, timeout_s, memory_limit_bytes, rss_limit_bytes)
    start = time.monotonic()
    try:
        spawned = spawn_worker()
    except OSError as e:
        return _start_failure(fn_path, e, start)
    return run_spawned(spawned, fn_path, kwargs_json, timeout_s, memory_limit_bytes, rss_limit_bytes, start)


def run_spawned(spawned: Spawned, fn_path: str, kwargs_json: str, timeout_s: float,
                memory_limit_bytes: int | None = None, rss_limit_bytes: int | None = None,
                start: float | None = None) -> WorkerResult:
    """Hand a job (checked by `check_job`) to a spawned worker, wait at most timeout_s from
    `start` (default: now, the hand-over), and discard the worker. A worker with preloads still
    importing them (a spare handed its job early) starts the job's clock when it is done: the
    job's time is its own; a worker not ready within READY_LIMIT_S (or timeout_s if longer) is a
    "timeout" too. Never raises
    because of anything the child does."""
    start = time.monotonic() if start is None else start
    proc = spawned.proc
    job = {"fn": fn_path, "kwargs_json": kwargs_json, "result_path": str(spawned.result_path),
           "memory_limit_bytes": memory_limit_bytes}
    timed_out = False
    over_rss = 0  # the resident bytes seen when the watchdog killed the job
    try:
        _send_job(proc, job)
        deadline = start + timeout_s
        if spawned.preloads:
            ready_by = start + max(timeout_s, READY_LIMIT_S)
            while not spawned.ready_path.exists() and proc.poll() is None and time.monotonic() < ready_by:
                time.sleep(READY_POLL_S)
            if spawned.ready_path.exists():
                deadline = max(start, time.monotonic()) + timeout_s
        timed_out, over_rss = _wait(proc, deadline, rss_limit_bytes)
        seconds = time.monotonic() - start
        output = _tail(spawned.log_path)
        result = _read_result(spawned.result_path) if not (timed_out or over_rss) else None
    finally:
        # Always leave nothing behind: the child on timeout (or if we are interrupted),
        # and any grandchildren it left running after it exited.
        spawned.discard()
    return _outcome(fn_path, proc, timeout_s, rss_limit_bytes, timed_out, over_rss, seconds, output, result)


def _outcome(fn_path: str, proc: subprocess.Popen, timeout_s: float, rss_limit_bytes: int | None,
             timed_out: bool, over_rss: int, seconds: float, output: str, result: dict | None) -> WorkerResult:
    if over_rss:
        res = WorkerResult(False, None, "oom", seconds,
                           f"resident memory {over_rss / 2**30:.2f} GiB over the worker's limit "
                           f"{rss_limit_bytes / 2**30:.2f} GiB ({rss_limit_bytes} bytes): killed\n{output}")
    elif timed_out:
        res = WorkerResult(False, None, "timeout", seconds,
                           f"killed after {timeout_s:g}s (process group {proc.pid})\n{output}")
    elif result is not None:
        if result.get("ok"):
            res = WorkerResult(True, result.get("value"), None, seconds, output)
        else:
            res = WorkerResult(False, None, result.get("reason", "error"), seconds,
                               f"{result.get('detail', '')}\n--- output ---\n{output}")
    elif proc.returncode < 0:
        sig = _signal_name(-proc.returncode)
        hint = " (the kernel's OOM killer sends SIGKILL)" if sig == "SIGKILL" else ""
        res = WorkerResult(False, None, "crashed", seconds, f"killed by {sig}{hint}\n{output}")
    else:
        res = WorkerResult(False, None, "crashed", seconds,
                           f"exited with status {proc.returncode} without a result\n{output}")
    if not res.ok:
        logger.warning("worker %s failed after %.1fs: %s", fn_path, seconds, res.describe())
        logger.debug("worker %s detail:\n%s", fn_path, res.detail)
    return res


def _wait(proc: subprocess.Popen, deadline: float, rss_limit_bytes: int | None) -> tuple[bool, int]:
    """Wait for the child until `deadline` (monotonic); (timed out, resident bytes when it went
    over rss_limit_bytes, else 0). Memory is read first: a warm worker holds its libraries
    already when its job starts, and a short job could end before the first poll."""
    while True:
        if rss_limit_bytes:
            rss = group_rss_bytes(proc.pid)
            if rss > rss_limit_bytes:
                return False, rss
        left = deadline - time.monotonic()
        if left <= 0:
            return True, 0
        try:
            proc.wait(timeout=min(left, RSS_POLL_S) if rss_limit_bytes else left)
            return False, 0
        except subprocess.TimeoutExpired:
            pass


def _send_job(proc: subprocess.Popen, job: dict) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps(job).encode())
        proc.stdin.close()
    except BrokenPipeError:
        # The child died before reading its job; its exit status tells the caller why.
        logger.debug("worker %d exited before reading its job", proc.pid)


def _read_result(path: Path) -> dict | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None  # a half-written file: the child died while writing it
    return data if isinstance(data, dict) else None


if __name__ == "__main__":
    from validator.scoring.worker_child import child_main

    child_main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a job's threads or CUDA context must not hang or crash the
    # exit once the result is safely on disk.
    os._exit(0)
