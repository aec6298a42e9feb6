"""Ctrl-C and SIGTERM for the long-running commands.

Outside the validator loop a signal stops the command now, as an exception (`StopNow`), so
every `with` block and `finally` runs: olah is stopped, a scoring worker's process group is
killed (validator.scoring.worker.run_isolated does that when interrupted), the state is saved. The
default SIGTERM action would end the process without any of that.

Inside the loop the first signal asks it to stop after the model in flight and says so;
a second one stops now. The exit status is 128 + the first signal's number (130 for Ctrl-C,
143 for SIGTERM), whichever way the command stopped.
"""
from __future__ import annotations

import signal
import sys
from typing import Any, Callable, TextIO

MESSAGE = "stopping after the model in flight (Ctrl-C again to stop now)"


class StopNow(KeyboardInterrupt):
    """Raised from a signal handler: unwinds like Ctrl-C (no `except Exception` stops it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(signum: int) -> int:
    return 128 + int(signum)


def _raise_now(signum: int, _frame: Any) -> None:
    raise StopNow(signum)


def install_stop_now() -> None:
    """SIGINT and SIGTERM raise StopNow in the main thread (the command's outer handlers)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _raise_now)


class GracefulStop:
    """A signal handler: the first signal calls `request_stop` and prints MESSAGE; the next
    raises StopNow."""

    def __init__(self, request_stop: Callable[[], None], out: TextIO | None = None) -> None:
        self.request_stop = request_stop
        self.out = out
        self.first: int | None = None  # the first signal's number

    def __call__(self, signum: int, _frame: Any = None) -> None:
        if self.first is not None:
            raise StopNow(signum)
        self.first = signum
        out = self.out or sys.stderr
        print(f"\n{MESSAGE}", file=out, flush=True)
        self.request_stop()


def graceful_loop_stop(validator: Any, out: TextIO | None = None) -> GracefulStop:
    """Make `validator.run()` stop gracefully once and at once on a second signal.

    Validator.run installs `validator.request_stop` for SIGINT and SIGTERM while it runs;
    the instance attribute set here is what it installs."""
    stop = GracefulStop(lambda: setattr(validator, "stopping", True), out)
    validator.request_stop = stop
    return stop
