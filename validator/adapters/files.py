"""Persisted validator state: atomic writes and careful reads.

A crash mid-write must never leave a half-written state file, so every write goes to a
temporary file in the same directory, is fsynced, then renamed over the target (rename
is atomic on POSIX within a filesystem), and the directory is fsynced so the rename
itself survives a power cut.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import constants
from validator.core.jsonread import SourceError, decode_json, read_file

log = logging.getLogger(__name__)

_MISSING = object()


class StateError(Exception):
    """A state file exists but cannot be read or parsed."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"state file {self.path}: {reason}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError as e:
        log.debug("fsync of directory %s failed: %s", directory, e)
    finally:
        os.close(fd)


# Tests only (tests/reliability/test_crash_safety.py): with COLDINT_TEST_KILL_AT=N in the
# environment, the process SIGKILLs itself at the N-th point of the save path below, to
# prove a crash at any of them loses nothing. Unset (always, in production) it costs one
# environment lookup per write.
KILL_AT_ENV = "COLDINT_TEST_KILL_AT"
_crash_points_passed = 0


def _crash_point() -> None:
    at = os.environ.get(KILL_AT_ENV)
    if not at:
        return
    global _crash_points_passed
    _crash_points_passed += 1
    if _crash_points_passed == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


TEMP_SUFFIX = ".tmp"


def atomic_write_bytes(path: str | Path, data: bytes, *, crash_points: bool = True) -> None:
    """Write `data` to `path` so that readers see either the old or the new content.

    crash_points=False keeps this write out of the crash test's numbered kill points (for
    files outside the validator's state, such as a model's verification marker)."""
    path = Path(path)
    point = _crash_point if crash_points else (lambda: None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        point()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            point()
            os.fsync(f.fileno())
        point()
        os.replace(tmp, path)
        point()
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    point()


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temporary files a killed process left in `directory` mid-write (`.<name>.*.tmp`,
    never renamed into place, so never part of the state); returns them. Call it before this
    process writes there: repeated crashes would otherwise pile up copies of the eval cache."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.glob(f".*{TEMP_SUFFIX}"):
        if p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                removed.append(p)
            except OSError as e:
                log.warning("cannot remove stale temporary file %s: %s", p, e)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted save in %s", len(removed), directory)
    return removed


def atomic_write_json(path: str | Path, obj: Any, *, crash_points: bool = True) -> None:
    """Serialise `obj` as strict JSON (NaN/inf rejected: encode them explicitly) and write atomically."""
    data = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8")
    atomic_write_bytes(path, data, crash_points=crash_points)


def read_json(path: str | Path, default: Any = _MISSING, *, max_bytes: int | None = None,
              max_depth: int | None = None, max_elements: int | None = None) -> Any:
    """Read a JSON file within size, nesting and value-count bounds (the same bounded reader
    as the config files: a hostile or damaged file cannot exhaust memory or the parser's
    stack). A missing file gives `default` (or FileNotFoundError if none given); a file that
    is not a regular file, too large, too deep, unreadable or corrupt raises StateError
    naming the file and the reason. The bounds default to constants.STATE_MAX_*."""
    path = Path(path)
    what = "state"
    try:
        raw = read_file(path, f"{what} file {path}",
                        constants.STATE_MAX_BYTES if max_bytes is None else max_bytes)
        return decode_json(raw, f"{what} file {path}",
                           max_depth=constants.STATE_MAX_DEPTH if max_depth is None else max_depth,
                           max_elements=constants.STATE_MAX_ELEMENTS if max_elements is None else max_elements)
    except SourceError as e:
        if e.not_found:
            if default is _MISSING:
                raise FileNotFoundError(f"state file {path}: not found") from None
            return default
        # the message names the file already ("state file <path>: <reason>")
        raise StateError(path, str(e).removeprefix(f"{what} file {path}: ")) from None


def keep_bad_copy(path: str | Path) -> str:
    """Copy an unusable state file to `<name>.bad` for the operator; says where (or why not)."""
    path = Path(path)
    bad = path.with_name(path.name + ".bad")
    try:
        shutil.copyfile(path, bad)
        return f"kept a copy at {bad}"
    except OSError as copy_err:
        return f"could not keep a copy ({copy_err})"


def load_or_default(path: str | Path, default: Any) -> Any:
    """Like read_json, but a corrupt file is kept aside as `<name>.bad` and `default` returned,
    so the validator keeps running (it rebuilds the state) and the operator can inspect it."""
    path = Path(path)
    try:
        return read_json(path, default)
    except StateError as e:
        log.warning("%s; starting from defaults, %s", e, keep_bad_copy(path))
        return default
