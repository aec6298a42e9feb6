"""The verified model store on disk: where snapshots live, their markers, ensure_model, cleanup.

`ensure_model` is the validator's one entry point (validator.ports.ModelSource): it makes
sure the committed model is on disk at exactly the committed revision, checked
(download.py, checks.py) and verified against the committed hash, or raises FetchError
with a typed FailureReason.

Layout under `model_dir`:

    models/<hotkey>/models--<ns>--<name>/
        snapshots/<commit>/            the verified snapshot: real files, no symlinks
        snapshots/<commit>.verified    marker (JSON: dir hash, ...); its mtime = last use
        snapshots/<commit>.lock        a filelock: one download per model at a time
        snapshots/<commit>.attempt     present while the commit's files are checked; left by a
                                       process that died there, it refuses the commit for good
        .tmp-<commit>-<pid>-<rand>/    a download in progress (never mistaken for a snapshot)

The marker lives beside the snapshot, not in it, so the snapshot's directory hash is the
hash of exactly the files a live validator downloads.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import filelock

import constants
from validator.adapters.files import atomic_write_json
from validator.adapters.hub.checks import (_check_dir, _check_recorded, _local_small_files, local_files,
                                           plan_download)
from validator.adapters.hub.download import Downloader, _fetch_checked, download_files
from validator.adapters.hub.http import _classify, install_timeouts, resolve_endpoint
from validator.core.failures import FailureReason, FetchError
from validator.core.identity import ModelId, NothingToHash, dir_hash, files_hash, secure_hash
from validator.ports import Snapshot

log = logging.getLogger(__name__)

_HOTKEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
GIB = 1024**3


def _check_hotkey(hotkey: str) -> str:
    if not isinstance(hotkey, str) or not _HOTKEY.fullmatch(hotkey):
        raise ValueError(f"hotkey {hotkey!r} is not usable as a directory name ([A-Za-z0-9_-], 1-128 chars)")
    return hotkey


def repo_cache_dir(model_dir: str | os.PathLike, hotkey: str, model_id: ModelId) -> Path:
    return Path(model_dir) / "models" / _check_hotkey(hotkey) / f"models--{model_id.namespace}--{model_id.name}"


def snapshot_path(model_dir: str | os.PathLike, hotkey: str, model_id: ModelId) -> Path:
    """Where ensure_model puts the verified snapshot of `model_id` committed by `hotkey`."""
    return repo_cache_dir(model_dir, hotkey, model_id) / "snapshots" / model_id.commit


def _marker(snapshot: Path) -> Path:
    return snapshot.parent / f"{snapshot.name}.verified"


def _lock(snapshot: Path) -> Path:
    return snapshot.parent / f"{snapshot.name}.lock"


def attempt_marker(snapshot: str | os.PathLike) -> Path:
    """`<commit>.attempt` beside the snapshot: present while this commit's files are checked."""
    snapshot = Path(snapshot)
    return snapshot.parent / f"{snapshot.name}.attempt"


ATTEMPT_MARKER_MAX_BYTES = 4096


def _process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22), None
    where unknown: with the pid it tells a process from a later one given the same pid (a
    container's validator is often pid 1 at every restart)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # fields after "pid (comm)" start at field 3
    except (OSError, IndexError, ValueError):
        return None


def _process_alive(pid: Any, started: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = _process_start(pid)
    return started is None or now is None or now == started


@contextlib.contextmanager
def _checks_attempt(snapshot: Path) -> Iterator[None]:
    """Record that this process is checking the commit's files (parsing the miner's JSON,
    building its config) for as long as it does, so that a crash there is not repeated at
    every restart (_refuse_crashed_attempt)."""
    path = attempt_marker(snapshot)
    pid = os.getpid()
    atomic_write_json(path, {"pid": pid, "process_start": _process_start(pid), "at": time.time()},
                      crash_points=False)  # a download record, not validator state
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _refuse_crashed_attempt(snapshot: Path, what: str) -> None:
    """FetchError(constraint), permanent, when an earlier check of this commit never ended: its
    attempt marker is there and the process that wrote it is gone (killed for memory, a
    crash). Called with the commit's lock held, so no live process is checking it now; a
    marker of a process still alive is a left-over, removed."""
    path = attempt_marker(snapshot)
    try:
        with open(path, "rb") as f:
            raw = f.read(ATTEMPT_MARKER_MAX_BYTES + 1)
    except FileNotFoundError:
        return
    try:
        record = json.loads(raw) if len(raw) <= ATTEMPT_MARKER_MAX_BYTES else None
    except ValueError:
        record = None  # written atomically: unreadable means damaged, still an attempt that never ended
    pid = record.get("pid") if isinstance(record, dict) else None
    if _process_alive(pid, record.get("process_start") if isinstance(record, dict) else None):
        path.unlink(missing_ok=True)
        return
    raise FetchError(FailureReason.constraint,
                   f"{what}: an earlier check of this commit never finished: process {pid} died during it "
                   f"(killed for memory, or crashed); refused so that it cannot take the validator down at every "
                   f"restart (delete {path} to check it again)")


def read_marker(snapshot: str | os.PathLike) -> dict | None:
    """The verification record of a snapshot, or None (absent or unreadable)."""
    try:
        data = json.loads(_marker(Path(snapshot)).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("dir_hash"), str) else None


def verified_dir_hash(snapshot: str | os.PathLike) -> str | None:
    """The directory hash recorded when the snapshot was verified (saves rehashing it)."""
    marker = read_marker(snapshot)
    return marker["dir_hash"] if marker and Path(snapshot).is_dir() else None


def _write_marker(snapshot: Path, model_id: ModelId, hotkey: str, content_hash: str, checked: dict) -> None:
    atomic_write_json(_marker(snapshot), {
        "dir_hash": content_hash, "hotkey": hotkey, "repo_id": model_id.repo_id,
        "commit": model_id.commit, "hash": model_id.hash, "verified_at": time.time(), **checked,
    }, crash_points=False)  # a download record, not validator state: outside the crash test's points


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError as exc:  # a read-only store still serves its models
        log.debug("cannot touch %s: %s", path, exc)


def _tree_size(path: Path) -> int:
    total = 0
    for cur, _dirs, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(cur, f)).st_size
    return total


def model_dir_hash(path: str | os.PathLike) -> str:
    """The directory hash validators will compute for this model dir once it is published:
    over its download set only (a README.md or training leftovers beside it change nothing)."""
    root = Path(path)
    files = local_files(root)
    plan = plan_download(files, _local_small_files(root, files, str(root)), str(root))
    return files_hash(root, plan.files)


def _clean_stale_tmp(repo_dir: Path, commit: str) -> None:
    """Left-overs of an interrupted download of this commit (we hold its lock)."""
    if not repo_dir.is_dir():
        return
    for p in repo_dir.glob(f"{constants.MODEL_STORE_TMP_PREFIX}{commit}-*"):
        shutil.rmtree(p, ignore_errors=True)


def _verify_local(snapshot: Path, model_id: ModelId, hotkey: str) -> str:
    what = f"{model_id.repo_id}@{model_id.commit[:12]}"
    try:
        content = dir_hash(snapshot)
    except NothingToHash as exc:
        raise FetchError(FailureReason.not_found, f"{what}: {exc}") from None
    if secure_hash(content, hotkey) != model_id.hash:
        raise FetchError(FailureReason.hash_mismatch,
                       f"{what}: directory hash {content} with hotkey {hotkey} gives {secure_hash(content, hotkey)}, "
                       f"committed {model_id.hash}")
    return content


def ensure_model(model_id: ModelId, hotkey: str, competition: Any, model_dir: str | os.PathLike, *,
                 endpoint: str | None = None, progress: bool = True, token: str | bool | None = None,
                 lock_timeout_s: float = constants.MODEL_LOCK_TIMEOUT_S, deadline: float | None = None,
                 download: Downloader = download_files) -> Snapshot:
    """The verified Snapshot (dir, directory hash) of `model_id` committed by `hotkey`,
    downloading it with `download` if needed.

    Present and verified: returns at once, no network. Otherwise one process downloads
    (a filelock; others wait up to `lock_timeout_s`, then FetchError(network, "busy ...")).
    Raises FetchError(reason, detail); a failed attempt leaves nothing behind. `deadline`
    (time.monotonic(), None: no limit) is checked between files of the download: past it,
    FetchError(network, "download budget of this step used up")."""
    snapshot = snapshot_path(model_dir, hotkey, model_id)
    what = f"{model_id.repo_id}@{model_id.commit[:12]}"

    def present() -> Snapshot | None:
        marker = read_marker(snapshot)
        if marker is None or "class" not in marker or not snapshot.is_dir():
            return None  # none, or recorded under the old rules (whole repo hashed): re-checked
        if secure_hash(marker["dir_hash"], hotkey) != model_id.hash:
            raise FetchError(FailureReason.hash_mismatch,
                           f"{what}: verified content (directory hash {marker['dir_hash']}) does not give "
                           f"the committed hash {model_id.hash} for hotkey {hotkey}")
        _check_recorded(marker, competition, what)
        _touch(_marker(snapshot))  # last use, for the LRU cleanup
        return Snapshot(snapshot, marker["dir_hash"])

    # Fast path without the lock: the marker is written only after the snapshot is complete.
    if (found := present()) is not None:
        return found
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(_lock(snapshot)), timeout=lock_timeout_s)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise FetchError(FailureReason.network,
                       f"{what}: busy, another process is downloading it (waited {lock_timeout_s:.0f} s)") from None
    try:
        if (found := present()) is not None:  # another process finished it meanwhile
            return found
        _refuse_crashed_attempt(snapshot, what)
        repo_dir = snapshot.parent.parent
        _clean_stale_tmp(repo_dir, model_id.commit)
        if snapshot.exists():  # renamed into place but no (current) marker: verify locally, no network
            try:
                with _checks_attempt(snapshot):
                    checked = _check_dir(snapshot, competition, exact=True)
                content = _verify_local(snapshot, model_id, hotkey)
            except FetchError:
                shutil.rmtree(snapshot, ignore_errors=True)
            else:
                _write_marker(snapshot, model_id, hotkey, content, checked)
                return Snapshot(snapshot, content)
        install_timeouts()
        return _download_and_verify(model_id, hotkey, competition, snapshot, resolve_endpoint(endpoint),
                                    progress, token, deadline, download)
    finally:
        lock.release()


def _download_and_verify(model_id: ModelId, hotkey: str, competition: Any, snapshot: Path, endpoint: str,
                         progress: bool, token, deadline: float | None = None,
                         download: Downloader = download_files) -> Snapshot:
    what = f"{model_id.repo_id}@{model_id.commit[:12]}"
    repo_dir = snapshot.parent.parent
    tmp = repo_dir / f"{constants.MODEL_STORE_TMP_PREFIX}{model_id.commit}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir(parents=True)
        got, checked = _fetch_checked(model_id.repo_id, model_id.commit, competition, tmp, endpoint, progress, token,
                                      deadline, guard=lambda: _checks_attempt(snapshot), download=download)
        # A wrong hash is reported on this first visit (the live validator errors out first
        # and reports it at the next visit).
        content = _verify_local(got, model_id, hotkey)
        os.rename(got, snapshot)  # same filesystem: atomic; a snapshot dir is always complete
        _write_marker(snapshot, model_id, hotkey, content, checked)
        log.info("%s verified at %s", what, snapshot)
        return Snapshot(snapshot, content)
    except FetchError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. disk errors while realising
        raise _classify(exc, what) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the disk store ------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSnapshot:
    path: Path
    size: int
    last_used: float


class ModelStore:
    """The snapshots under `model_dir` within a disk budget.

    budget_gb > 0: keep the store at most that many GiB; budget_gb < 0: keep at least
    |budget_gb| GiB free on its filesystem; 0: keep only what is in use or within grace.
    Cleanup removes unreferenced snapshots least recently used first, never one in use or
    used within `grace_s` (default constants.MODEL_STORE_GRACE_S)."""

    def __init__(self, model_dir: str | os.PathLike, budget_gb: float, grace_s: float | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.budget_gb = float(budget_gb)
        self.grace_s = constants.MODEL_STORE_GRACE_S if grace_s is None else float(grace_s)

    def snapshots(self) -> list[StoredSnapshot]:
        out = []
        for snap_dir in self.model_dir.glob("models/*/models--*/snapshots"):
            for snap in snap_dir.iterdir():
                if not snap.is_dir() or snap.is_symlink():
                    continue
                marker = _marker(snap)
                last = marker.stat().st_mtime if marker.exists() else snap.stat().st_mtime
                out.append(StoredSnapshot(snap, _tree_size(snap), last))
        return sorted(out, key=lambda s: s.last_used)

    def excess_bytes(self, used: int) -> int:
        """Bytes to free to meet the budget, given the store uses `used` bytes."""
        if self.budget_gb >= 0:
            return used - int(self.budget_gb * GIB)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        return int(-self.budget_gb * GIB) - shutil.disk_usage(self.model_dir).free

    def cleanup(self, in_use: Iterable[str | os.PathLike] = (), now: float | None = None) -> list[Path]:
        """Remove least-recently-used unreferenced snapshots until within budget; returns them."""
        now = time.time() if now is None else now
        keep = {os.path.realpath(p) for p in in_use}
        self._remove_stale_tmp(now)
        snaps = self.snapshots()
        excess = self.excess_bytes(sum(s.size for s in snaps))
        removed: list[Path] = []
        for s in snaps:
            if excess <= 0:
                break
            if os.path.realpath(s.path) in keep or now - s.last_used < self.grace_s:
                continue
            lock = filelock.FileLock(str(_lock(s.path)), timeout=0)
            try:
                lock.acquire()
            except filelock.Timeout:
                continue  # being (re)verified right now
            try:
                _marker(s.path).unlink(missing_ok=True)  # first: a snapshot without marker is never served
                shutil.rmtree(s.path)
            finally:
                lock.release()
            removed.append(s.path)
            excess -= s.size
            log.info("model store: removed %s (%d bytes)", s.path, s.size)
        return removed

    def _remove_stale_tmp(self, now: float) -> None:
        """Downloads left by a crashed process (their lock is free) older than the grace."""
        for tmp in self.model_dir.glob(f"models/*/models--*/{constants.MODEL_STORE_TMP_PREFIX}*"):
            commit = tmp.name[len(constants.MODEL_STORE_TMP_PREFIX):].split("-")[0]
            if now - tmp.stat().st_mtime < self.grace_s:
                continue
            lock = filelock.FileLock(str(tmp.parent / "snapshots" / f"{commit}.lock"), timeout=0)
            try:
                lock.acquire()
            except filelock.Timeout:
                continue
            try:
                shutil.rmtree(tmp, ignore_errors=True)
            finally:
                lock.release()
