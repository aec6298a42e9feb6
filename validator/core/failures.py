"""Why a model was not fetched: the typed failure reasons, their error and the retry rule.

Pure: the reasons are the values the eval cache, the state file and the report carry, so a
renamed member would change what a restart reads back.
"""
from __future__ import annotations

from enum import Enum

import constants


class FailureReason(str, Enum):
    not_found = "not_found"  # repo or commit not on the hub (or not visible: private)
    too_large = "too_large"  # more bytes than the competition's model_size
    unsafe_format = "unsafe_format"  # no safetensors weights, an index naming odd paths, escaping symlinks
    remote_code = "remote_code"  # no longer raised (auto_map and code files are ignored, as live); kept for old records
    hash_mismatch = "hash_mismatch"  # content does not give the committed secure hash
    constraint = "constraint"  # architecture or parameter count outside the competition
    disk_full = "disk_full"  # not enough free disk for the download plus a margin
    network = "network"  # hub unreachable, 5xx, interrupted download, busy (lock timeout), step budget used up
    bad_repo = "bad_repo"  # the repo's content, not the hub: unusable names or tree entries, too many
    # files, git-LFS pointers or LFS objects never uploaded, a repo id the client refuses


TRANSIENT_REASONS = frozenset({FailureReason.network, FailureReason.disk_full})
# A miner's repo stays private until its commitment is on chain (scripts/upload_model.py),
# so a validator may see "not found" for a fresh commitment: retried a few times before
# it counts as permanent.
NOT_FOUND_RETRIES = 3


class FetchError(Exception):
    """A model could not be fetched or was refused; `reason` says which rule."""

    def __init__(self, reason: FailureReason | str, detail: str) -> None:
        self.reason = FailureReason(reason)
        self.detail = detail
        super().__init__(f"{self.reason.value}: {detail}")

    @property
    def transient(self) -> bool:
        return self.reason in TRANSIENT_REASONS


def retry_after(reason: FailureReason | str, attempts: int) -> float | None:
    """Seconds to wait before trying a model again after `attempts` failures in a row
    (attempts >= 1), or None: permanent, do not retry until the commitment changes."""
    try:
        reason = FailureReason(reason)
    except ValueError:
        return None  # not a hub failure (e.g. "copy"): nothing a retry would change
    backoff = constants.DOWNLOAD_RETRY_BACKOFF_S
    step = backoff[min(max(attempts, 1) - 1, len(backoff) - 1)]
    if reason in TRANSIENT_REASONS:
        return float(step)
    if reason is FailureReason.not_found and attempts < NOT_FOUND_RETRIES:
        return float(step)
    return None
