"""The child side of a scoring worker (validator.scoring.worker starts it as
`python -m validator.scoring.worker`): read the setup and the job from stdin, preload, run the
job under its memory limit, and write the result (or the failure, classified) as JSON.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback

TRACEBACK_TAIL_LINES = 12  # of a failed job's traceback, kept in its detail


# --- classification (pure) ---------------------------------------------------------------

_CUDA_MARKERS = ("cuda error", "cublas_status", "cudnn_status", "cudnn error", "nccl error",
                 "device-side assert", "illegal memory access", "cuda driver", "no cuda gpus")
_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory",
                "defaultcpuallocator: not enough memory")


def classify_exception(exc: BaseException) -> str:
    """Map an exception raised by a job to "oom", "cuda" or "error".

    Matches on class names and messages rather than importing torch, so the child never
    pays for (or depends on) torch just to report a failure.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    message = str(exc).lower()
    if "MemoryError" in names or "OutOfMemoryError" in names:
        return "oom"
    if any(m in message for m in _OOM_MARKERS):
        return "oom"  # e.g. RuntimeError from torch's CPU allocator, or CUDA OOM from older torch
    if "AcceleratorError" in names or "CudaError" in names or any(m in message for m in _CUDA_MARKERS):
        return "cuda"
    return "error"


def _format_exception(exc: BaseException) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    tail = "".join(lines).rstrip().splitlines()[-TRACEBACK_TAIL_LINES:]
    return f"{type(exc).__name__}: {exc}\n" + "\n".join(tail)


# --- the job ---------------------------------------------------------------------------

def _die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGKILL if the parent dies, so an orphaned job never runs on unseen."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # the parent never sees a half-written result


def _write_result(path: str, payload: dict) -> None:
    _write_text(path, json.dumps(payload))


def _preload(modules: list[str]) -> None:
    """A spare imports what its job will need while it waits for it. A module that fails to
    import is only logged: the job imports it again and reports the failure as its own."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - the job itself reports it, with its traceback
            logging.getLogger(__name__).warning("preload of %s failed: %s: %s", name, type(e).__name__, e)


def _apply_setup() -> dict:
    """Read the setup line and apply it: die with the parent, its sys.path and log level, the preloads."""
    setup = json.loads(sys.stdin.readline())
    _die_with_parent(setup["parent_pid"])
    for p in reversed(setup["sys_path"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    logging.basicConfig(level=setup.get("log_level", logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _preload(setup.get("preload") or [])
    if setup.get("ready_path"):
        _write_text(setup["ready_path"], "ready")
    return setup


def server_setup() -> int:
    """The fork server's start (validator.scoring.forkserver): a spare's setup; returns its socket's fd."""
    return int(_apply_setup()["fd"])


def child_main() -> None:
    _apply_setup()
    text = sys.stdin.read()  # blocks until the parent hands over the job (a spare waits here)
    if not text:
        return  # the parent closed our stdin without a job: a spare no longer needed
    job = json.loads(text)
    result_path = job["result_path"]
    fn_path = job["fn"]
    try:
        import importlib

        module_name, _, func_name = fn_path.partition(":")
        fn = getattr(importlib.import_module(module_name), func_name)
        kwargs = json.loads(job["kwargs_json"])
        if job.get("memory_limit_bytes"):
            import resource

            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            limit = job["memory_limit_bytes"]
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        value = fn(**kwargs)
    except BaseException as e:  # noqa: BLE001 - every failure of the job is reported, typed
        reason = classify_exception(e)
        if reason == "oom" and job.get("memory_limit_bytes"):
            detail = f"{_format_exception(e)}\n(memory limit {job['memory_limit_bytes']} bytes)"
        else:
            detail = _format_exception(e)
        del e  # drop the traceback's frames (and the memory they hold) before writing
        _write_result(result_path, {"ok": False, "reason": reason, "detail": detail})
        return
    try:
        payload = json.dumps({"ok": True, "value": value})
    except (TypeError, ValueError) as e:
        _write_result(result_path, {
            "ok": False, "reason": "error",
            "detail": f"return value of {fn_path} is not JSON-able: {type(value).__name__} ({e})",
        })
        return
    _write_text(result_path, payload)
