"""Job functions for tests/test_worker.py, run in a child by validator.scoring.worker.run_isolated.

Each one misbehaves in exactly one way, so a test can check the reason it is given.
Only the standard library is imported at module level: the child starts in ~0.1 s.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time


def add(a: float, b: float) -> dict:
    """A well-behaved job: returns a JSON-able value (inf included, as losses may be)."""
    return {"sum": a + b, "pid": os.getpid(), "pgid": os.getpgid(0), "inf": float("inf")}


def chatty(n_lines: int) -> str:
    """Writes to stdout, stderr and the logging module, then succeeds."""
    for i in range(n_lines):
        print(f"stdout line {i}")
    print("stderr line", file=sys.stderr)
    logging.getLogger("tests.worker_jobs").warning("a log record from the child")
    return "done"


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def raise_cuda_error() -> None:
    # What torch raises after a device-side assert (no GPU needed to raise it).
    raise RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA")


def raise_torch_oom() -> None:
    import torch

    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def sleep_with_grandchild(seconds: float, pid_file: str) -> None:
    """Starts a grandchild that would outlive us, records its pid, then hangs."""
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pid_file, "w") as f:
        f.write(str(grandchild.pid))
    time.sleep(seconds)


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(60)  # never reached: SIGSEGV's default action ends the process


def exit_silently(code: int) -> None:
    os._exit(code)


def allocate(n_bytes: int) -> int:
    buf = bytearray(n_bytes)  # zero-filled, so the pages are really requested
    return len(buf)


def return_non_json() -> object:
    return {"a set": {1, 2, 3}}


def cuda_out_of_bounds_index() -> None:
    """A real device-side assert (needs a GPU)."""
    import torch

    x = torch.zeros(4, device="cuda")
    idx = torch.tensor([1_000_000], device="cuda")
    x[idx] = 1.0
    torch.cuda.synchronize()


def cuda_allocate_too_much() -> None:
    """A real CUDA out-of-memory (needs a GPU): ask for 64 TiB."""
    import torch

    torch.empty(64 * 1024**4, dtype=torch.uint8, device="cuda")
