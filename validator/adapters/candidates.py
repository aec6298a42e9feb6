"""benchmark.json's candidates, read from disk: the validator's CandidateSource.

Reads the file (bounded), checks each candidate's directory (regular files and folders
only) and hashes its download set, remembering the hash while the files are unchanged.
The schema is validator.core.candidates.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

import constants
from validator.adapters import hub
from validator.core.candidates import BenchmarkEntry, BenchmarkError, parse_benchmark
from validator.core.competitions import Competition
from validator.core.entries import Entry
from validator.core.failures import FetchError
from validator.core.jsonread import SourceError, decode_json
from validator.core.sanitize import printable

# path -> (file listing fingerprint, directory hash)
Hashes = dict[Path, tuple[tuple, str]]


def load_benchmark(path: str | Path) -> tuple[dict[str, BenchmarkEntry], dict[str, str]]:
    """Read benchmark.json; a missing file means no entries (the validator runs without)."""
    path = Path(path)
    try:
        if not path.exists():
            return {}, {}
        # bounded: size checked before reading, nesting and value count before parsing;
        # utf-8 as JSON requires (an editor's BOM tolerated), not the locale's encoding
        if path.stat().st_size > constants.BENCHMARK_MAX_BYTES:
            raise BenchmarkError(f"{path}: cannot read benchmark.json: more than "
                                 f"{constants.BENCHMARK_MAX_BYTES} bytes")
        with open(path, "rb") as f:
            raw = f.read(constants.BENCHMARK_MAX_BYTES + 1)
        if len(raw) > constants.BENCHMARK_MAX_BYTES:
            raise BenchmarkError(f"{path}: cannot read benchmark.json: more than "
                                 f"{constants.BENCHMARK_MAX_BYTES} bytes")
        data = decode_json(raw, str(path))
    except OSError as e:
        raise BenchmarkError(f"{path}: cannot read benchmark.json: {e}") from e
    except SourceError as e:
        reason = str(e).removeprefix(f"{path}: ")
        raise BenchmarkError(f"{path}: cannot read benchmark.json: {reason}") from e
    return parse_benchmark(data, str(path))


class UnsafeEntry(ValueError):
    """A benchmark candidate holds something other than regular files and folders."""


def _fingerprint(directory: Path) -> tuple:
    """What a file listing says about a directory's content: a change of any file's size or
    mtime changes it (a candidate being rewritten gets hashed again). Walks with lstat and
    refuses anything but regular files and folders (UnsafeEntry): reading a FIFO blocks, a
    device never ends, a symlink points anywhere. Hidden folders are skipped, as publishing does."""
    if not stat.S_ISDIR(os.stat(directory).st_mode):  # the path itself is the operator's: may be a link
        raise UnsafeEntry(f"{printable(directory)} is not a directory")
    out = []

    def fail(err: OSError) -> None:
        raise err

    for cur, dirs, names in os.walk(directory, onerror=fail):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in dirs + names:
            full = Path(cur) / name
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                out.append((full.relative_to(directory).as_posix(), st.st_size, st.st_mtime_ns))
            elif not stat.S_ISDIR(st.st_mode):
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise UnsafeEntry(f"{printable(full.relative_to(directory))} is {kind}")
    return tuple(sorted(out))


def benchmark_entries(path: Path | None, competitions: dict[str, Competition], hashes: Hashes | None = None, *,
                      hash_dir: Callable[[Path], str] = hub.model_dir_hash) -> tuple[list[Entry], list[str]]:
    """benchmark.json entries (re-read every step); bad entries are reported and skipped.

    `hashes` (path -> (fingerprint, dir hash)) keeps a candidate from being read whole
    again every step while its files are unchanged; `hash_dir` hashes a candidate's
    download set, as validators will once it is published."""
    hashes = {} if hashes is None else hashes
    if path is None:
        return [], []
    try:
        parsed, errors = load_benchmark(path)
    except BenchmarkError as e:
        return [], [printable(e)]
    problems = [f"benchmark entry {printable(repr(k), 80)}: {printable(v)}" for k, v in errors.items()]
    out = []
    for bid, b in parsed.items():
        if b.competition not in competitions:
            problems.append(f"benchmark entry {printable(repr(bid), 80)}: unknown competition "
                            f"{printable(repr(b.competition), 80)}")
            continue
        name = printable(repr(bid), 80)
        try:
            fp = _fingerprint(b.path)
            if b.path not in hashes or hashes[b.path][0] != fp:
                # what validators will hash once it is published: its download set only
                hashes[b.path] = (fp, hash_dir(b.path))
            content = hashes[b.path][1]
        except UnsafeEntry as e:
            problems.append(f"benchmark entry {name}: refused: {e}")
            continue
        except FetchError as e:
            problems.append(f"benchmark entry {name}: {e.reason.value}: {printable(e.detail)}")
            continue
        except OSError as e:
            problems.append(f"benchmark entry {name}: cannot read {printable(b.path)}: {printable(e)}")
            continue
        out.append(Entry(key=f"bench:{bid}", competition=b.competition, label=printable(b.label or bid, 80),
                         block=b.block,
                         path=b.path, content_hash=content, scoring=competitions[b.competition].scoring_key))
    return out, problems


class BenchmarkCandidates:
    """The CandidateSource of a benchmark.json (re-read every call; None: no candidates), with
    the hashes of unchanged candidates kept between calls."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.hashes: Hashes = {}

    def __call__(self, competitions: dict[str, Competition]) -> tuple[list[Entry], list[str]]:
        return benchmark_entries(self.path, competitions, self.hashes)
