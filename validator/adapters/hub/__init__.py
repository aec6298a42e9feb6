"""Models on the hub: download at a commit, check, verify, keep on disk; publish for miners.

`ensure_model` is the validator's one entry point (a validator.ports.ModelSource): the
committed model on disk at exactly the committed revision, checked and verified, as a
Snapshot(path, content_hash), or FetchError with a typed FailureReason.

- http.py: the endpoint, failures classified, retries, request timeouts (install_timeouts).
- checks.py: the rules on a repo's files and config that need no weights.
- download.py: listing, small files, the download set (a Downloader), download_snapshot,
  fetch_tokenizer.
- store.py: snapshot paths and markers, ensure_model, ModelStore (disk budget, cleanup).
- publish.py: publish_local (git mirror), publish_hf, set_visibility.
- localhub.py: LocalHub, olah serving git mirrors on loopback.

Private helpers (underscore names) are imported from their submodule.
"""
from validator.adapters.hub.checks import (check_config, check_config_counts, check_model_constraints,
                                           count_parameters, count_parameters_isolated, strip_config_keys)
from validator.adapters.hub.download import (BUDGET_USED_UP, Downloader, download_files, download_snapshot,
                                             fetch_tokenizer, remote_files)
from validator.adapters.hub.http import install_timeouts, resolve_endpoint
from validator.adapters.hub.localhub import LocalHub, LocalHubError
from validator.adapters.hub.publish import publish_hf, publish_local, set_visibility
from validator.adapters.hub.store import (GIB, ModelStore, StoredSnapshot, attempt_marker, ensure_model,
                                          model_dir_hash, read_marker, snapshot_path, verified_dir_hash)

__all__ = ["check_config", "check_config_counts", "check_model_constraints", "count_parameters",
           "count_parameters_isolated", "strip_config_keys", "BUDGET_USED_UP", "Downloader", "download_files",
           "download_snapshot", "fetch_tokenizer", "remote_files", "install_timeouts", "resolve_endpoint",
           "LocalHub", "LocalHubError", "publish_hf", "publish_local", "set_visibility", "GIB", "ModelStore",
           "StoredSnapshot", "attempt_marker", "ensure_model", "model_dir_hash", "read_marker", "snapshot_path",
           "verified_dir_hash"]
