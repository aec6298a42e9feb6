"""A fork server for the warm worker pool: one clean process that has imported torch and
transformers once, and forks each job's fresh worker from itself in ~10 ms.

Why: on a small box a spawned spare spends ~3-5 s of CPU importing its libraries, and that CPU is
taken from the model being scored (on 2 cores, importing is most of an incremental step).
A forked worker shares those pages copy-on-write instead.

Isolation is a spawned worker's: the server is started like one (validator.scoring.worker.spawn_worker:
scrubbed environment, offline, its own session, dies with the validator) and only ever imports
libraries: it never runs a job, never touches a device (importing torch initialises no CUDA), and
holds no secret, so what a child inherits is what a fresh worker would import. Each child leads its
own session (a timeout kills its group), dies with the server, gets its own stdin and log, and runs
the same child side (validator.scoring.worker_child) as a spawned worker: one process per job, used once.

Protocol (an AF_UNIX SOCK_SEQPACKET pair; JSON messages, never pickle):
  parent -> server  {"req": n} with two file descriptors: the child's stdin (read end of a pipe
                    whose write end the parent keeps) and its log file
  server -> parent  {"req": n, "pid": p} once forked, or {"req": n, "error": "..."}
                    {"exited": p, "status": s} when child p ended (waitpid's raw status)
The parent sees a child through `ForkedProcess`, which answers what run_spawned asks of a Popen.
"""
from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path

logger = logging.getLogger(__name__)

FORK_REPLY_S = 600.0  # the most a fork request waits: the server may still be importing its preloads
_MSG_BYTES = 4096
REAP_POLL_S = 0.05  # how often the server reaps its children between requests
EXIT_REPORT_S = 2.0  # the most poll() waits for the server to report a child it sees dead


def _ended(pid: int) -> bool:
    """Whether process `pid` has ended (gone, or a zombie its server has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def supported() -> bool:
    """Forking needs Linux (fork, SCM_RIGHTS, PR_SET_PDEATHSIG)."""
    return sys.platform.startswith("linux") and hasattr(socket, "send_fds")


class ForkedProcess:
    """A forked worker as run_spawned sees it: pid, stdin, poll(), wait(timeout), returncode
    (negative: killed by that signal, as Popen says). Its exit comes from the server."""

    def __init__(self, pid: int, stdin) -> None:
        self.pid = pid
        self.stdin = stdin
        self.returncode: int | None = None
        self._ended = threading.Event()

    def _exited(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
        self._ended.set()

    def poll(self) -> int | None:
        if not self._ended.is_set() and _ended(self.pid):
            self._ended.wait(EXIT_REPORT_S)  # dead, not yet reaped: the server reports it within REAP_POLL_S
        return self.returncode if self._ended.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout)
        return self.returncode  # type: ignore[return-value]


class ForkServer:
    """The parent's side: `fork()` gives a Spawned worker (validator.scoring.worker) waiting for its setup
    and job on stdin. Start it from a thread that lives as long as the server (PR_SET_PDEATHSIG follows
    the starting thread): the pool's lanes do. `close()` ends the server and with it every child."""

    def __init__(self, preload: tuple[str, ...]) -> None:
        from validator.scoring.worker import spawn_worker

        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:  # started as a spare is, running this module's serve() instead of waiting for a job
            self._server = spawn_worker(preload, module="validator.scoring.forkserver", pass_fd=theirs.fileno())
        finally:
            theirs.close()
        self.proc = self._server.proc
        self._lock = threading.Lock()
        self._next_req = 0
        self._replies: dict[int, Future] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._dead = False
        self._reader = threading.Thread(target=self._read, name=f"forkserver-{self.proc.pid}", daemon=True)
        self._reader.start()

    def alive(self) -> bool:
        return not self._dead and self.proc.poll() is None

    def fork(self):
        """A fresh worker (a validator.scoring.worker.Spawned), forked from the server; OSError when
        the server cannot fork it (dead, out of processes): the caller spawns one instead."""
        from validator.scoring.worker import _LOG_FILE, Spawned, send_setup

        if not self.alive():
            raise OSError("the fork server is not running")
        tmp = tempfile.TemporaryDirectory(prefix="coldint-worker-")
        r = w = -1
        try:
            r, w = os.pipe()
            with open(Path(tmp.name) / _LOG_FILE, "wb") as log:
                fut: Future = Future()
                with self._lock:
                    req = self._next_req
                    self._next_req += 1
                    self._replies[req] = fut
                    socket.send_fds(self._sock, [json.dumps({"req": req}).encode()], [r, log.fileno()])
            os.close(r)
            r = -1
            proc = fut.result(timeout=FORK_REPLY_S)  # a ForkedProcess, or the server's OSError
        except BaseException as e:
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)
            tmp.cleanup()
            if isinstance(e, (OSError, TimeoutError)):
                raise OSError(f"fork server: {e}") from e
            raise
        proc.stdin = os.fdopen(w, "wb")
        spawned = Spawned(proc, tmp)
        spawned.forked = True
        send_setup(spawned, parent_pid=self.proc.pid, preload=())
        return spawned

    def _read(self) -> None:
        try:
            while True:
                try:
                    data = self._sock.recv(_MSG_BYTES)
                except OSError:
                    data = b""
                if not data:
                    break
                msg = json.loads(data)
                with self._lock:
                    if "exited" in msg:
                        child = self._children.pop(msg["exited"], None)
                        if child is not None:
                            child._exited(os.waitstatus_to_exitcode(msg["status"]))
                        continue
                    fut = self._replies.pop(msg["req"], None)
                    child = None
                    if "pid" in msg:  # registered before its exit can be reported (one ordered socket)
                        child = self._children[msg["pid"]] = ForkedProcess(msg["pid"], None)
                if fut is None:
                    continue
                if child is not None:
                    fut.set_result(child)
                else:
                    fut.set_exception(OSError(msg.get("error", "fork failed")))
        finally:
            self._server_gone()

    def _server_gone(self) -> None:
        # The server is dead: its children died with it (PR_SET_PDEATHSIG), unreaped by it. Say so.
        from validator.scoring.worker import _kill_group

        with self._lock:
            self._dead = True
            children, self._children = list(self._children.values()), {}
            replies, self._replies = list(self._replies.values()), {}
        for child in children:
            _kill_group(child.pid)
            child._exited(-9)
        for fut in replies:
            if not fut.done():
                fut.set_exception(OSError("the fork server exited"))

    def close(self) -> None:
        """End the server (its children die with it) and wait for it."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            logger.debug("fork server socket already shut")
        self._server.discard()
        self._reader.join(timeout=10)
        self._sock.close()


# --- the server's side --------------------------------------------------------------------


def _child(sock: socket.socket, stdin_fd: int, log_fd: int) -> None:
    """In the forked child: a fresh session, its own stdin and log, then the worker's child side."""
    try:
        sock.close()
        os.setsid()
        os.dup2(stdin_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(stdin_fd)
        os.close(log_fd)
        # fresh streams over the new descriptors (the server's may hold buffered bytes)
        sys.stdin = os.fdopen(0, "r", closefd=False)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler):
                h.setStream(sys.stderr)
        from validator.scoring.worker_child import child_main

        child_main()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - the child must never return into the server's loop
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(json.dumps({"exited": pid, "status": status}).encode())


def serve(sock: socket.socket) -> None:
    """Fork a child per request until the parent closes its end."""
    while True:
        readable, _, _ = select.select([sock], [], [], REAP_POLL_S)
        _reap(sock)
        if not readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MSG_BYTES, 2)
        except OSError:
            return
        if not data:
            return  # the parent is gone or closed us
        req = json.loads(data)["req"]
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps({"req": req, "error": f"expected 2 descriptors, got {len(fds)}"}).encode())
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as e:
            sock.send(json.dumps({"req": req, "error": f"fork: {e}"}).encode())
            pid = -1
        if pid == 0:
            _child(sock, *fds)
        for fd in fds:
            os.close(fd)
        if pid > 0:
            sock.send(json.dumps({"req": req, "pid": pid}).encode())


if __name__ == "__main__":
    from validator.scoring.worker_child import server_setup

    fd = server_setup()
    serve(socket.socket(fileno=fd))
    os._exit(0)
