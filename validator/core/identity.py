"""Model identity: the on-chain commitment string, the directory hash and the secure hash.

Formats are those of the live subnet (see DESIGN.md); this module is pure.

Commitment: `namespace:name:commit:hash:competition`, at most COMMITMENT_MAX_BYTES (128)
bytes of UTF-8, the size of the one Raw field the chain holds it in. Every field is matched
whole (fullmatch: a trailing newline is not a valid field). The competition is any
non-empty text without ':', whitespace or control characters (the live validator accepts
any id; competitions.json decides which exist).
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import constants

# HF repo-id part: letters, digits, '-', '_', '.', at most 96 chars, no leading/trailing
# '-' or '.', and no '--' or '..' (hub rules; '..' would also escape a directory).
_REPO_PART = re.compile(r"(?![-.])[A-Za-z0-9_.-]{1,96}(?<![-.])")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_HASH = re.compile(r"[A-Za-z0-9+/]{43}=")
_COMPETITION = re.compile(r"[^:\s\x00-\x1f\x7f-\x9f\ud800-\udfff]+")
MAX_COMMITMENT_BYTES = constants.COMMITMENT_MAX_BYTES


class InvalidCommitment(ValueError):
    """A commitment string or one of its fields is not acceptable."""


def check_repo_part(value: str, field: str) -> str:
    if not isinstance(value, str) or not _REPO_PART.fullmatch(value) or "--" in value or ".." in value:
        raise InvalidCommitment(
            f"{field} {value!r} is not a valid Hugging Face repo name part "
            "(1-96 of [A-Za-z0-9_.-], no leading/trailing '-' or '.', no '--' or '..')"
        )
    return value


@dataclass(frozen=True)
class ModelId:
    namespace: str
    name: str
    commit: str
    hash: str
    competition: str

    def __post_init__(self) -> None:
        check_repo_part(self.namespace, "namespace")
        check_repo_part(self.name, "name")
        if not isinstance(self.commit, str) or not _COMMIT.fullmatch(self.commit):
            raise InvalidCommitment(f"commit {self.commit!r} is not a 40-character lowercase hex git sha")
        if not isinstance(self.hash, str) or not _HASH.fullmatch(self.hash):
            raise InvalidCommitment(f"hash {self.hash!r} is not a 44-character base64 sha256")
        if not isinstance(self.competition, str) or not _COMPETITION.fullmatch(self.competition):
            raise InvalidCommitment(f"competition {self.competition!r} must be non-empty, without ':', "
                                    "whitespace or control characters")
        size = len(self.to_commitment().encode("utf-8"))
        if size > MAX_COMMITMENT_BYTES:
            raise InvalidCommitment(f"commitment {self.to_commitment()[:140]!r} is {size} bytes, more than the "
                                    f"{MAX_COMMITMENT_BYTES} the chain holds in one field")

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_commitment(self) -> str:
        return f"{self.namespace}:{self.name}:{self.commit}:{self.hash}:{self.competition}"

    @classmethod
    def from_commitment(cls, text: str) -> "ModelId":
        if not isinstance(text, str):
            raise InvalidCommitment(f"commitment must be a string, got {type(text).__name__}")
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > MAX_COMMITMENT_BYTES:
            raise InvalidCommitment(f"commitment is {size} bytes of UTF-8, more than {MAX_COMMITMENT_BYTES}")
        parts = text.split(":")
        if len(parts) != 5:
            raise InvalidCommitment(
                f"commitment {text[:120]!r} has {len(parts)} ':'-separated fields, "
                "expected namespace:name:commit:hash:competition"
            )
        return cls(*parts)


def file_hash(path: str | os.PathLike) -> str:
    """b64(sha256(file bytes)), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode()


class NothingToHash(ValueError):
    """A directory (or file list) without any file has no hash (the live validator gets None)."""


def dir_hash(path: str | os.PathLike) -> str:
    """b64(sha256(concatenated file hashes)), walking sub-folders and files in sorted order.

    The live subnet's walk (os.walk, file names sorted in each folder; sub-folders sorted
    here so the result never depends on the filesystem). A verified snapshot is flat, so
    this is the hash of its files in sorted name order. Raises FileNotFoundError /
    NotADirectoryError for a missing path and NothingToHash for a dir without files.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"cannot hash {root}: no such directory")
    if not root.is_dir():
        raise NotADirectoryError(f"cannot hash {root}: not a directory")
    paths = []
    for cur, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths.extend(os.path.join(cur, filename) for filename in sorted(filenames))
    if not paths:
        raise NothingToHash(f"cannot hash {root}: it holds no files (an empty snapshot has no hash)")
    return _hash_of(paths)


def files_hash(root: str | os.PathLike, names: Iterable[str]) -> str:
    """dir_hash of a flat snapshot holding exactly `names` (plain file names under `root`),
    without making that snapshot: what a validator's download of those files hashes to."""
    names = sorted(set(names))
    bad = [n for n in names if not n or "/" in n or "\\" in n or n in (".", "..")]
    if bad:
        raise ValueError(f"files_hash: {bad[0]!r} is not a plain file name")
    if not names:
        raise NothingToHash(f"cannot hash {root}: no files named (an empty snapshot has no hash)")
    return _hash_of([os.path.join(root, n) for n in names])


def _hash_of(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(file_hash(p).encode())
    return base64.b64encode(digest.digest()).decode()


def secure_hash(directory_hash: str, hotkey: str) -> str:
    """The hash a miner commits: binds the content to the hotkey so it cannot be copied."""
    return base64.b64encode(hashlib.sha256((directory_hash + hotkey).encode()).digest()).decode()
