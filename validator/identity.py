"""Model identity: the on-chain commitment string, the directory hash and the secure hash.

Formats are those of the live subnet (see DESIGN.md); this module is pure.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

# HF repo-id part: letters, digits, '-', '_', '.', at most 96 chars, no leading/trailing
# '-' or '.', and no '--' or '..' (hub rules; '..' would also escape a directory).
_REPO_PART = re.compile(r"^(?![-.])[A-Za-z0-9_.-]{1,96}(?<![-.])$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HASH = re.compile(r"^[A-Za-z0-9+/]{43}=$")
_COMPETITION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_COMMITMENT_LEN = 256


class InvalidCommitment(ValueError):
    """A commitment string or one of its fields is not acceptable."""


def check_repo_part(value: str, field: str) -> str:
    if not isinstance(value, str) or not _REPO_PART.match(value) or "--" in value or ".." in value:
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
        if not isinstance(self.commit, str) or not _COMMIT.match(self.commit):
            raise InvalidCommitment(f"commit {self.commit!r} is not a 40-character lowercase hex git sha")
        if not isinstance(self.hash, str) or not _HASH.match(self.hash):
            raise InvalidCommitment(f"hash {self.hash!r} is not a 44-character base64 sha256")
        if not isinstance(self.competition, str) or not _COMPETITION.match(self.competition):
            raise InvalidCommitment(f"competition {self.competition!r} must match [A-Za-z0-9_-]{{1,64}}")

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_commitment(self) -> str:
        return f"{self.namespace}:{self.name}:{self.commit}:{self.hash}:{self.competition}"

    @classmethod
    def from_commitment(cls, text: str) -> "ModelId":
        if not isinstance(text, str):
            raise InvalidCommitment(f"commitment must be a string, got {type(text).__name__}")
        if len(text) > MAX_COMMITMENT_LEN:
            raise InvalidCommitment(f"commitment is {len(text)} characters, more than {MAX_COMMITMENT_LEN}")
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


def dir_hash(path: str | os.PathLike) -> str:
    """b64(sha256(concatenated file hashes)), walking sub-folders and files in sorted order.

    Same walk as the live subnet (os.walk, sorted dirnames and filenames), so a snapshot
    hashes identically on every validator.
    """
    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(f"cannot hash {root}: not a directory")
    digest = hashlib.sha256()
    for cur, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            digest.update(file_hash(os.path.join(cur, filename)).encode())
    return base64.b64encode(digest.digest()).decode()


def secure_hash(directory_hash: str, hotkey: str) -> str:
    """The hash a miner commits: binds the content to the hotkey so it cannot be copied."""
    return base64.b64encode(hashlib.sha256((directory_hash + hotkey).encode()).digest()).decode()
