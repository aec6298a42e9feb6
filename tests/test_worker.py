"""run_isolated: every way a job can fail gives its reason, and the parent carries on."""
from __future__ import annotations

import logging
import os
import resource
import signal
import time

import pytest

from tests.factories import gone_or_zombie
from validator.scoring.worker import WorkerResult, run_isolated
from validator.scoring.worker_child import classify_exception

JOBS = "tests.worker_jobs"
GIB = 1024**3


def _ok_after(result: WorkerResult) -> None:
    """The job after a failure runs normally, in a fresh process of its own."""
    nxt = run_isolated(f"{JOBS}:add", {"a": 2, "b": 3}, timeout_s=60)
    assert nxt.ok, nxt.detail
    assert nxt.value["sum"] == 5


def test_value_crosses_as_json_from_a_separate_process_group():
    res = run_isolated(f"{JOBS}:add", {"a": 1.5, "b": 2}, timeout_s=60)
    assert res.ok and res.reason is None, res.detail
    assert res.value["sum"] == 3.5
    assert res.value["inf"] == float("inf")
    assert res.value["pid"] != os.getpid()
    assert res.value["pgid"] == res.value["pid"]  # leads its own group: a timeout kills all of it
    assert res.seconds > 0


def test_exception_gives_error_with_type_message_and_traceback():
    res = run_isolated(f"{JOBS}:raise_value_error", {"message": "vocab mismatch 300 != 512"}, timeout_s=60)
    assert not res.ok and res.value is None
    assert res.reason == "error"
    assert res.detail.startswith("ValueError: vocab mismatch 300 != 512")
    assert "raise_value_error" in res.detail  # the traceback's last lines name the failing frame
    assert res.describe() == "error: ValueError: vocab mismatch 300 != 512"
    _ok_after(res)


def test_timeout_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    res = run_isolated(f"{JOBS}:sleep_with_grandchild", {"seconds": 600, "pid_file": str(pid_file)},
                       timeout_s=3)
    assert res.reason == "timeout" and not res.ok
    assert res.seconds >= 3
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10  # SIGKILL is asynchronous: give the kernel a moment
    while not gone_or_zombie(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone_or_zombie(grandchild), "the job's grandchild outlived the timeout"
    _ok_after(res)


def test_segfault_is_crashed_and_names_the_signal():
    res = run_isolated(f"{JOBS}:segfault", {}, timeout_s=60)
    assert res.reason == "crashed"
    assert "SIGSEGV" in res.detail
    _ok_after(res)


def test_exit_without_result_is_crashed():
    res = run_isolated(f"{JOBS}:exit_silently", {"code": 3}, timeout_s=60)
    assert res.reason == "crashed"
    assert "status 3" in res.detail
    _ok_after(res)


def test_memory_limit_gives_oom_and_leaves_the_parent_limit_alone():
    before = resource.getrlimit(resource.RLIMIT_AS)
    small = run_isolated(f"{JOBS}:allocate", {"n_bytes": 16 * 1024**2}, timeout_s=60,
                         memory_limit_bytes=GIB)
    assert small.ok and small.value == 16 * 1024**2, small.detail
    res = run_isolated(f"{JOBS}:allocate", {"n_bytes": 4 * GIB}, timeout_s=60, memory_limit_bytes=GIB)
    assert res.reason == "oom"
    assert "MemoryError" in res.detail and str(GIB) in res.detail
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    _ok_after(res)


def test_torch_out_of_memory_is_oom():
    res = run_isolated(f"{JOBS}:raise_torch_oom", {}, timeout_s=120)
    assert res.reason == "oom"
    assert "OutOfMemoryError: CUDA out of memory" in res.detail


def test_cuda_error_is_cuda():
    res = run_isolated(f"{JOBS}:raise_cuda_error", {}, timeout_s=60)
    assert res.reason == "cuda"
    assert "device-side assert" in res.detail
    _ok_after(res)


def test_non_json_return_is_an_error_naming_the_job():
    res = run_isolated(f"{JOBS}:return_non_json", {}, timeout_s=60)
    assert res.reason == "error"
    assert "return value of tests.worker_jobs:return_non_json is not JSON-able" in res.detail
    assert "set" in res.detail


def test_missing_module_or_function_is_an_error():
    res = run_isolated("tests.no_such_module:f", {}, timeout_s=60)
    assert res.reason == "error" and "ModuleNotFoundError" in res.detail
    res = run_isolated(f"{JOBS}:no_such_function", {}, timeout_s=60)
    assert res.reason == "error" and "AttributeError" in res.detail


def test_child_output_is_captured_not_printed(capfd):
    res = run_isolated(f"{JOBS}:chatty", {"n_lines": 3}, timeout_s=60)
    assert res.ok and res.value == "done", res.detail
    for line in ("stdout line 0", "stdout line 2", "stderr line", "a log record from the child"):
        assert line in res.detail
    out, err = capfd.readouterr()
    assert "stdout line" not in out and "stderr line" not in err


def test_output_tail_is_bounded():
    res = run_isolated(f"{JOBS}:chatty", {"n_lines": 20_000}, timeout_s=60)
    assert res.ok
    assert "stdout line 19999" in res.detail and "stdout line 0\n" not in res.detail
    assert len(res.detail) < 10_000


def test_parent_state_survives_failures():
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGSEGV)}
    for fn in ("segfault", "raise_value_error"):
        kwargs = {"message": "x"} if fn == "raise_value_error" else {}
        assert not run_isolated(f"{JOBS}:{fn}", kwargs, timeout_s=60).ok
    assert {s: signal.getsignal(s) for s in handlers} == handlers


@pytest.mark.parametrize("fn_path", ["no_colon", ":f", "mod:", "a:b:c", 3])
def test_bad_fn_path_is_rejected_by_name(fn_path):
    with pytest.raises(ValueError, match="fn_path"):
        run_isolated(fn_path, {}, timeout_s=1)


def test_bad_kwargs_and_limits_are_rejected_by_name():
    with pytest.raises(ValueError, match="kwargs .*not JSON-able"):
        run_isolated(f"{JOBS}:add", {"a": object()}, timeout_s=1)
    with pytest.raises(ValueError, match="kwargs .*must be a dict"):
        run_isolated(f"{JOBS}:add", [1, 2], timeout_s=1)
    with pytest.raises(ValueError, match="timeout_s"):
        run_isolated(f"{JOBS}:add", {}, timeout_s=0)
    with pytest.raises(ValueError, match="memory_limit_bytes"):
        run_isolated(f"{JOBS}:add", {}, timeout_s=1, memory_limit_bytes=-5)
    with pytest.raises(ValueError, match="timeout_s"):
        run_isolated(f"{JOBS}:add", {}, timeout_s=True)


def test_failures_are_logged_by_the_parent(caplog):
    with caplog.at_level(logging.WARNING, logger="validator.scoring.worker"):
        run_isolated(f"{JOBS}:raise_value_error", {"message": "boom"}, timeout_s=60)
    assert any("raise_value_error" in r.getMessage() and "boom" in r.getMessage() for r in caplog.records)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU")
def test_real_cuda_failures_on_a_gpu():
    res = run_isolated(f"{JOBS}:cuda_allocate_too_much", {}, timeout_s=120)
    assert res.reason == "oom", res.detail
    res = run_isolated(f"{JOBS}:cuda_out_of_bounds_index", {}, timeout_s=120)
    assert res.reason == "cuda", res.detail  # torch raises AcceleratorError("CUDA error: ...")
    _ok_after(res)


class _FakeAcceleratorError(RuntimeError):
    pass


_FakeAcceleratorError.__name__ = "AcceleratorError"


@pytest.mark.parametrize("exc, reason", [
    (MemoryError(), "oom"),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), "oom"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), "oom"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "cuda"),
    (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasSgemm"), "cuda"),
    (_FakeAcceleratorError("unspecified launch failure"), "cuda"),
    (RuntimeError("shape mismatch"), "error"),
    (KeyError("x"), "error"),
])
def test_classify_exception(exc, reason):
    assert classify_exception(exc) == reason
