"""Models on the hub: download at a commit, check, verify, keep on disk; publish for miners.

`ensure_model` is the validator's one entry point: it makes sure the committed model is on
disk at exactly the committed revision, and verified, or raises `HubError` with a typed
`FailureReason`. The client is huggingface_hub, so `HF_ENDPOINT` (or `endpoint=`) can point
at huggingface.co, a mirror, or olah on loopback (validator/localhub.py); hf_xet is used
by huggingface_hub when installed and the repo is xet-backed.

Layout under `model_dir`:

    models/<hotkey>/models--<ns>--<name>/
        snapshots/<commit>/            the verified snapshot: real files, no symlinks
        snapshots/<commit>.verified    marker (JSON: dir hash, ...); its mtime = last use
        snapshots/<commit>.lock        a filelock: one download per model at a time
        .tmp-<commit>-<pid>-<rand>/    a download in progress (never mistaken for a snapshot)

The marker lives beside the snapshot, not in it, so the snapshot's directory hash is the
hash of exactly what the miner published.

Order of checks, so no weight byte is fetched for a model that must be refused:
file list at the commit (names, formats, code files, total size vs the competition's
model_size, free disk) -> config.json alone (auto_map, architecture, layer and expert
counts bounded, then the parameter count on the meta device) -> the download -> symlinks
realised and confined to the download -> complete file set -> size / architecture /
parameters again on disk -> secure hash.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

import filelock

import constants
from validator.identity import ModelId, dir_hash, secure_hash
from validator.state import atomic_write_json

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
# Formats that can carry pickled Python objects (arbitrary code on load): never accepted.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
# Code a loader could be tricked into running: a repo carrying it is refused outright.
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".dylib", ".dll")
# Files whose "auto_map" would make transformers import code from the repo.
AUTO_MAP_FILES = ("config.json", "tokenizer_config.json", "processor_config.json",
                  "preprocessor_config.json", "generation_config.json")
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "vocab.txt", "*.tiktoken"]
_HOTKEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
GIB = 1024**3


# --- failures ---------------------------------------------------------------------------


class FailureReason(str, Enum):
    not_found = "not_found"  # repo or commit not on the hub (or not visible: private)
    too_large = "too_large"  # more bytes than the competition's model_size
    unsafe_format = "unsafe_format"  # pickle weights, no safetensors, odd paths, escaping symlinks
    remote_code = "remote_code"  # auto_map in a config, or code files in the repo
    hash_mismatch = "hash_mismatch"  # content does not give the committed secure hash
    constraint = "constraint"  # architecture or parameter count outside the competition
    disk_full = "disk_full"  # not enough free disk for the download plus a margin
    network = "network"  # hub unreachable, 5xx, interrupted download, or busy (lock timeout)


TRANSIENT_REASONS = frozenset({FailureReason.network, FailureReason.disk_full})
# A miner's repo stays private until its commitment is on chain (scripts/upload_model.py),
# so a validator may see "not found" for a fresh commitment: retried a few times before
# it counts as permanent.
NOT_FOUND_RETRIES = 3


class HubError(Exception):
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


def resolve_endpoint(endpoint: str | None = None) -> str:
    """`endpoint`, else $HF_ENDPOINT read now (huggingface_hub reads it once, at import), else
    huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _classify(exc: BaseException, what: str) -> HubError:
    """Map an exception from huggingface_hub / httpx / the OS to a typed HubError."""
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError)):
        return HubError(FailureReason.not_found, f"{what}: {type(exc).__name__}")
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return HubError(FailureReason.not_found, f"{what}: not on the hub (404)")
    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        status = exc.response.status_code
        if status in (401, 403, 404, 410):
            return HubError(FailureReason.not_found, f"{what}: HTTP {status}")
        return HubError(FailureReason.network, f"{what}: HTTP {status}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HubError(FailureReason.disk_full, f"{what}: {exc.strerror}")
    # LocalEntryNotFoundError (the hub could not be reached), httpx transport errors,
    # timeouts, other OSErrors: the network or the server, worth a later retry.
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return HubError(FailureReason.network, f"{what}: {type(exc).__name__}: {text}")


def _with_retries(fn, what: str):
    """Run a metadata call; a connection-level failure is tried again a couple of times
    (olah closes the connection after a 5xx, which breaks the next pooled request).

    A server that answered with a status is not retried here: huggingface_hub has already
    retried 5xx answers with its own backoff (about 23 s), and a second round of that per
    model made a failing hub cost over a minute per model."""
    from huggingface_hub.errors import HfHubHTTPError

    last: BaseException | None = None
    for attempt in range(constants.HUB_METADATA_RETRIES + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            err = _classify(exc, what)
            answered = isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None
            if err.reason is not FailureReason.network or answered:
                raise err from None
            last = err
            time.sleep(0.2 * (attempt + 1))
    assert last is not None
    raise last



# huggingface_hub sends its API calls (list_repo_tree, model_info) with no timeout at all,
# so a hub that accepts the connection and never answers would block the validator
# forever. Every request phase left unbounded gets constants.HUB_TIMEOUT_S (read per
# request); calls that carry their own timeout (file downloads) keep it.
_timeouts_installed = False


def _bound_timeouts(request: Any) -> None:
    timeout = dict(request.extensions.get("timeout") or {})
    for phase in ("connect", "read", "write", "pool"):
        if timeout.get(phase) is None:
            timeout[phase] = float(constants.HUB_TIMEOUT_S)
    request.extensions = {**request.extensions, "timeout": timeout}


def _install_timeouts() -> None:
    global _timeouts_installed
    if _timeouts_installed:
        return
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    def factory():
        client = default_client_factory()
        hooks = client.event_hooks
        client.event_hooks = {"request": [*hooks.get("request", []), _bound_timeouts],
                              "response": list(hooks.get("response", []))}
        return client

    set_client_factory(factory)
    _timeouts_installed = True

# --- paths and markers --------------------------------------------------------------------


def _check_hotkey(hotkey: str) -> str:
    if not isinstance(hotkey, str) or not _HOTKEY.match(hotkey):
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


# --- checks that need no weights -------------------------------------------------------------


def _tree_size(path: Path) -> int:
    total = 0
    for cur, _dirs, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(cur, f)).st_size
    return total


def check_file_list(files: dict[str, int], competition: Any, what: str) -> None:
    """Refuse a repo by its file names and sizes (path -> bytes) before downloading it."""
    for name in files:
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
            raise HubError(FailureReason.unsafe_format, f"{what}: file path {name!r} would leave the snapshot")
    code = sorted(n for n in files if n.lower().endswith(CODE_SUFFIXES))
    if code:
        raise HubError(FailureReason.remote_code, f"{what}: code files are not allowed: {', '.join(code[:5])}")
    pickles = sorted(n for n in files if n.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise HubError(FailureReason.unsafe_format,
                       f"{what}: pickle-capable files are not allowed (safetensors only): {', '.join(pickles[:5])}")
    if not any(n.endswith(".safetensors") for n in files):
        raise HubError(FailureReason.unsafe_format, f"{what}: no *.safetensors weights")
    if "config.json" not in files:
        raise HubError(FailureReason.constraint, f"{what}: no config.json at the top level")
    total = sum(files.values())
    if total > competition.model_size:
        raise HubError(FailureReason.too_large,
                       f"{what}: {total} bytes, more than the competition's model_size {competition.model_size}")


def check_config(cfg: dict, competition: Any, what: str = "config.json") -> int:
    """Architecture and parameter count from a config dict, built on the meta device (no
    weights, no remote code). Returns the parameter count; raises HubError."""
    if not isinstance(cfg, dict):
        raise HubError(FailureReason.constraint, f"{what}: not a JSON object")
    if "auto_map" in cfg:
        raise HubError(FailureReason.remote_code, f"{what}: auto_map (custom code) is not allowed")
    archs = cfg.get("architectures")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise HubError(FailureReason.constraint, f"{what}: 'architectures' must be a non-empty list of class names")
    allowed = list(competition.model_types)
    bad = [a for a in archs if a not in allowed]
    if bad:
        raise HubError(FailureReason.constraint, f"{what}: architecture {bad[0]} is not one of {allowed}")
    arch, n_params = count_parameters(cfg, what)
    if arch not in allowed:
        raise HubError(FailureReason.constraint,
                       f"{what}: model_type {cfg.get('model_type')!r} builds {arch}, not one of {allowed}")
    if n_params > competition.parameters:
        raise HubError(FailureReason.constraint,
                       f"{what}: {n_params} parameters, more than the competition's {competition.parameters}")
    return n_params


def count_parameters(cfg: dict, what: str = "config.json") -> tuple[str, int]:
    """(model class name, unique parameter count) of the causal LM a config describes.

    Built on torch's meta device: shapes only, nothing allocated, no weights read. The build
    still costs time and memory per module, so the layer and expert counts are bounded first
    (check_config_counts)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    check_config_counts(cfg, what)  # before anything is built: a huge count is hours of building
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise HubError(FailureReason.constraint,
                       f"{what}: model_type {model_type!r} is not built into transformers (no custom code)")
    try:
        config = CONFIG_MAPPING[model_type].from_dict(dict(cfg))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except HubError:
        raise
    except Exception as exc:  # noqa: BLE001 - any config transformers cannot build is refused
        raise HubError(FailureReason.constraint,
                       f"{what}: cannot build a causal LM from it ({type(exc).__name__}: {str(exc)[:200]})") from None
    # parameters() yields each tensor once, so tied embeddings are counted once
    return type(model).__name__, int(sum(p.numel() for p in model.parameters()))


# Config keys that count what the meta-device build makes modules for, one by one. Layer or
# block counts: plural names (num_hidden_layers, decoder_layers, num_blocks) or a count prefix
# with the singular (n_layer). A singular name without the prefix is an index
# (vision_feature_layer = -1), a list holds layer indices (mlp_only_layers), a bool under a
# plural name is a flag (freeze_text_layers): none of those sizes the model.
_LAYER_COUNT_KEY = re.compile(r"(layers|blocks)$|^(n|num)_(\w+_)?(layer|block)$")
# Expert counts end in "experts" (num_local_experts, n_routed_experts, moe_num_experts);
# shared_experts_intermediate_size contains the word but is a width.
_EXPERT_COUNT_KEY = re.compile(r"experts$")
_COUNT_PREFIX = re.compile(r"(^|_)(n|num)_")  # a name that says it is a number of things


def _config_items(cfg: dict) -> Iterable[tuple[str, Any]]:
    """(dotted path, value) of every leaf of a config, nested dicts (text_config, ...) and
    dicts inside lists included. Iterative: a deeply nested JSON cannot exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", cfg)]
    while stack:
        prefix, node = stack.pop()
        children = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in children:
            path = f"{prefix}{key}"
            if isinstance(value, (dict, list)):
                stack.append((f"{path}.", value))
            else:
                yield path, value


def _count_value(path: str, value: Any, bound_name: str, what: str) -> int | None:
    """The integer a count key holds (None: unset or a flag); HubError if it is not a
    count within the bound named by `bound_name` (a constant)."""
    key = path.rsplit(".", 1)[-1].lower()
    if value is None:
        return None  # unset: transformers takes its default
    if isinstance(value, bool):
        if _COUNT_PREFIX.search(key) or bound_name == "CONFIG_MAX_EXPERTS":
            raise HubError(FailureReason.constraint, f"{what}: {path} = {value} is a bool, not a count")
        return None  # a flag about layers, e.g. freeze_text_layers
    if not isinstance(value, int):
        raise HubError(FailureReason.constraint, f"{what}: {path} = {value!r} is not an integer count")
    if value < 0:
        raise HubError(FailureReason.constraint, f"{what}: {path} = {value} is negative")
    bound = getattr(constants, bound_name)
    if value > bound:
        raise HubError(FailureReason.constraint, f"{what}: {path} = {value} exceeds {bound_name} = {bound}")
    return value


def check_config_counts(cfg: dict, what: str = "config.json") -> None:
    """Refuse a config whose layer, block or expert counts (at any depth) are not integers
    within CONFIG_MAX_LAYERS / CONFIG_MAX_EXPERTS, or whose largest layer count times its
    largest expert count exceeds CONFIG_MAX_MODULE_BLOCKS. Builds nothing; HubError
    (constraint) names the key and the bound."""
    if not isinstance(cfg, dict):
        raise HubError(FailureReason.constraint, f"{what}: not a JSON object")
    layers: tuple[str, int] = ("", 0)
    experts: tuple[str, int] = ("", 0)
    for path, value in _config_items(cfg):
        key = path.rsplit(".", 1)[-1].lower()
        if _LAYER_COUNT_KEY.search(key):
            n = _count_value(path, value, "CONFIG_MAX_LAYERS", what)
            layers = max(layers, (path, n or 0), key=lambda item: item[1])
        elif _EXPERT_COUNT_KEY.search(key):
            n = _count_value(path, value, "CONFIG_MAX_EXPERTS", what)
            experts = max(experts, (path, n or 0), key=lambda item: item[1])
    blocks = layers[1] * max(1, experts[1])
    if blocks > constants.CONFIG_MAX_MODULE_BLOCKS:
        raise HubError(FailureReason.constraint,
                       f"{what}: {layers[0]} = {layers[1]} x {experts[0]} = {experts[1]} = {blocks} "
                       f"exceeds CONFIG_MAX_MODULE_BLOCKS = {constants.CONFIG_MAX_MODULE_BLOCKS}")


def check_model_constraints(path: str | os.PathLike, competition: Any) -> None:
    """Check a model dir against a competition before it is published or scored: formats
    (safetensors only, no code, no auto_map, no symlinks), size on disk <= model_size
    (too_large), architecture in model_types and parameter count <= parameters
    (constraint). Raises HubError naming the dir and the reason."""
    _check_dir(Path(path), competition)


def _check_dir(root: Path, competition: Any) -> dict:
    """check_model_constraints; returns what it measured (kept in the verified marker)."""
    what = str(root)
    if not root.is_dir():
        raise HubError(FailureReason.not_found, f"{what}: not a directory")
    files: dict[str, int] = {}
    for cur, dirs, names in os.walk(root):
        for name in sorted(dirs + names):
            full = Path(cur) / name
            if full.is_symlink():
                raise HubError(FailureReason.unsafe_format, f"{what}: symlink {full.relative_to(root)} is not allowed")
        for name in names:
            full = Path(cur) / name
            if not full.is_file():
                raise HubError(FailureReason.unsafe_format, f"{what}: {full.relative_to(root)} is not a regular file")
            files[full.relative_to(root).as_posix()] = full.stat().st_size
    check_file_list(files, competition, what)
    for name in AUTO_MAP_FILES:
        cfg = _read_json(root / name, f"{what}/{name}") if (root / name).is_file() else None
        if isinstance(cfg, dict) and "auto_map" in cfg:
            raise HubError(FailureReason.remote_code, f"{what}/{name}: auto_map (custom code) is not allowed")
    cfg = _read_json(root / "config.json", f"{what}/config.json")
    n_params = check_config(cfg, competition, f"{what}/config.json")
    return {"size": sum(files.values()), "parameters": n_params, "architectures": cfg["architectures"]}


def _check_recorded(marker: dict, competition: Any, what: str) -> None:
    """A verified snapshot against the competition as it is now (limits may have changed
    since it was verified), from the marker alone: no network, no rehash."""
    size, n_params, archs = marker.get("size"), marker.get("parameters"), marker.get("architectures")
    if isinstance(size, int) and size > competition.model_size:
        raise HubError(FailureReason.too_large,
                       f"{what}: {size} bytes, more than the competition's model_size {competition.model_size}")
    if isinstance(archs, list) and any(a not in competition.model_types for a in archs):
        raise HubError(FailureReason.constraint, f"{what}: architecture {archs} not in {list(competition.model_types)}")
    if isinstance(n_params, int) and n_params > competition.parameters:
        raise HubError(FailureReason.constraint,
                       f"{what}: {n_params} parameters, more than the competition's {competition.parameters}")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
        raise HubError(FailureReason.constraint, f"{what}: not readable JSON ({type(exc).__name__}: {exc})") from None


# --- download -------------------------------------------------------------------------------


def _silent_tqdm():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def remote_files(repo_id: str, commit: str, endpoint: str, token: str | bool | None = None) -> dict[str, int]:
    """path -> size of every file of `repo_id` at `commit` (sizes from the tree listing, else
    the file's HEAD: olah leaves files_metadata sizes empty). Raises HubError."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.hf_api import RepoFile

    _install_timeouts()
    api = HfApi(endpoint=endpoint, token=token)
    what = f"{repo_id}@{commit[:12]}"
    # list_repo_tree, not model_info: an unknown commit is a clean 404 here on both the hub
    # and olah (olah's model_info answers 500 for it).
    entries = _with_retries(lambda: list(api.list_repo_tree(repo_id, revision=commit, recursive=True)), what)
    files: dict[str, int] = {}
    for entry in entries:
        if not isinstance(entry, RepoFile):
            continue
        size = entry.lfs.size if entry.lfs is not None else entry.size
        if size is None:
            url = hf_hub_url(repo_id, entry.path, revision=commit, endpoint=endpoint)
            meta = _with_retries(lambda: get_hf_file_metadata(url, token=token), f"{what}/{entry.path}")
            size = meta.size
        if size is None:
            raise HubError(FailureReason.network, f"{what}/{entry.path}: the hub gave no size")
        files[entry.path] = int(size)
    if not files:
        raise HubError(FailureReason.not_found, f"{what}: no files at this commit")
    return files


def _download_config(repo_id: str, commit: str, endpoint: str, cache_dir: Path, token) -> dict:
    from huggingface_hub import hf_hub_download

    what = f"{repo_id}@{commit[:12]}/config.json"
    path = _with_retries(lambda: hf_hub_download(repo_id, "config.json", revision=commit, endpoint=endpoint,
                                                 cache_dir=cache_dir, token=token), what)
    return _read_json(Path(path), what)


def _download_snapshot(repo_id: str, commit: str, endpoint: str, cache_dir: Path, files: list[str],
                       progress: bool, token) -> Path:
    """snapshot_download at exactly `commit` into a private cache dir; returns the snapshot
    folder (hub layout: symlinks into ../../blobs). A seam for tests."""
    from huggingface_hub import snapshot_download

    kwargs = {} if progress else {"tqdm_class": _silent_tqdm()}
    return Path(snapshot_download(repo_id, revision=commit, endpoint=endpoint, cache_dir=cache_dir,
                                  allow_patterns=files, token=token, **kwargs))


def _realise(snapshot: Path, blobs: Path, what: str) -> None:
    """Replace every symlink of the hub layout by the real file it points to. A link that
    resolves outside the download's blobs dir, or to anything but a regular file, is refused."""
    blobs_real = os.path.realpath(blobs)
    moved: dict[str, Path] = {}  # blob -> first file it became (a blob may back two paths)
    stack = [snapshot]
    while stack:
        cur = stack.pop()
        for entry in sorted(os.scandir(cur), key=lambda e: e.name):
            path = Path(entry.path)
            rel = path.relative_to(snapshot)
            if entry.is_symlink():
                target = os.path.realpath(path)
                inside = os.path.commonpath([blobs_real, target]) == blobs_real
                if not inside or not (os.path.isfile(target) or target in moved):
                    raise HubError(FailureReason.unsafe_format,
                                   f"{what}: symlink {rel} -> {os.readlink(path)} leaves the download")
                if target in moved:
                    tmp = path.with_name(f".{path.name}.copy")
                    shutil.copyfile(moved[target], tmp)
                    os.replace(tmp, path)
                else:
                    os.replace(target, path)  # replaces the link itself with the blob
                    moved[target] = path
            elif entry.is_dir(follow_symlinks=False):
                stack.append(path)
            elif not entry.is_file(follow_symlinks=False):
                raise HubError(FailureReason.unsafe_format, f"{what}: {rel} is not a regular file")


def _relative_files(root: Path) -> set[str]:
    out = set()
    for cur, _dirs, names in os.walk(root):
        for name in names:
            out.add((Path(cur) / name).relative_to(root).as_posix())
    return out


def _disk_free(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free


def _clean_stale_tmp(repo_dir: Path, commit: str) -> None:
    """Left-overs of an interrupted download of this commit (we hold its lock)."""
    if not repo_dir.is_dir():
        return
    for p in repo_dir.glob(f"{constants.MODEL_STORE_TMP_PREFIX}{commit}-*"):
        shutil.rmtree(p, ignore_errors=True)


def _verify_local(snapshot: Path, model_id: ModelId, hotkey: str) -> str:
    content = dir_hash(snapshot)
    if secure_hash(content, hotkey) != model_id.hash:
        raise HubError(FailureReason.hash_mismatch,
                       f"{model_id.repo_id}@{model_id.commit[:12]}: directory hash {content} with hotkey "
                       f"{hotkey} gives {secure_hash(content, hotkey)}, committed {model_id.hash}")
    return content


def ensure_model(model_id: ModelId, hotkey: str, competition: Any, model_dir: str | os.PathLike, *,
                 endpoint: str | None = None, progress: bool = True, token: str | bool | None = None,
                 lock_timeout_s: float = constants.MODEL_LOCK_TIMEOUT_S) -> Path:
    """The verified snapshot dir of `model_id` committed by `hotkey`, downloading it if needed.

    Present and verified: returns at once, no network. Otherwise one process downloads
    (a filelock; others wait up to `lock_timeout_s`, then HubError(network, "busy ...")).
    Raises HubError(reason, detail); a failed attempt leaves nothing behind."""
    snapshot = snapshot_path(model_dir, hotkey, model_id)
    what = f"{model_id.repo_id}@{model_id.commit[:12]}"

    def present() -> Path | None:
        marker = read_marker(snapshot)
        if marker is None or not snapshot.is_dir():
            return None
        if secure_hash(marker["dir_hash"], hotkey) != model_id.hash:
            raise HubError(FailureReason.hash_mismatch,
                           f"{what}: verified content (directory hash {marker['dir_hash']}) does not give "
                           f"the committed hash {model_id.hash} for hotkey {hotkey}")
        _check_recorded(marker, competition, what)
        _touch(_marker(snapshot))  # last use, for the LRU cleanup
        return snapshot

    # Fast path without the lock: the marker is written only after the snapshot is complete.
    if (found := present()) is not None:
        return found
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(_lock(snapshot)), timeout=lock_timeout_s)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise HubError(FailureReason.network,
                       f"{what}: busy, another process is downloading it (waited {lock_timeout_s:.0f} s)") from None
    try:
        if (found := present()) is not None:  # another process finished it meanwhile
            return found
        repo_dir = snapshot.parent.parent
        _clean_stale_tmp(repo_dir, model_id.commit)
        if snapshot.exists():  # renamed into place but no marker: verify locally, no network
            try:
                checked = _check_dir(snapshot, competition)
                content = _verify_local(snapshot, model_id, hotkey)
            except HubError:
                shutil.rmtree(snapshot, ignore_errors=True)
            else:
                _write_marker(snapshot, model_id, hotkey, content, checked)
                return snapshot
        return _download_and_verify(model_id, hotkey, competition, snapshot, resolve_endpoint(endpoint),
                                    progress, token)
    finally:
        lock.release()


def _fetch_files(repo_id: str, commit: str, endpoint: str, cache_dir: Path, files: dict[str, int],
                 progress: bool, token) -> Path:
    """Download exactly `files` at `commit`; return the snapshot dir as real files, complete."""
    what = f"{repo_id}@{commit[:12]}"
    try:
        got = _download_snapshot(repo_id, commit, endpoint, cache_dir, sorted(files), progress, token)
    except Exception as exc:  # noqa: BLE001 - classified into a typed reason
        raise _classify(exc, f"{what}: download") from None
    _realise(got, got.parent.parent / "blobs", what)
    have = _relative_files(got)
    if have != set(files):
        missing, extra = sorted(set(files) - have), sorted(have - set(files))
        raise HubError(FailureReason.network, f"{what}: incomplete download (missing {missing[:3]}, unexpected {extra[:3]})")
    return got


def download_snapshot(repo_id: str, commit: str, out_dir: str | os.PathLike, *, endpoint: str | None = None,
                      token: str | bool | None = None, progress: bool = True) -> Path:
    """Download `repo_id` at `commit` the way ensure_model does (same client, same file set,
    symlinks realised) into a new dir under `out_dir`, without checks or verification;
    returns the snapshot dir. For a miner: hash what validators will hash."""
    ep = resolve_endpoint(endpoint)
    files = remote_files(repo_id, commit, ep, token)
    cache = Path(out_dir) / f"{constants.MODEL_STORE_TMP_PREFIX}{commit}-{os.getpid()}-{secrets.token_hex(4)}"
    cache.mkdir(parents=True)
    try:
        return _fetch_files(repo_id, commit, ep, cache, files, progress, token)
    except Exception:
        shutil.rmtree(cache, ignore_errors=True)
        raise


def _download_and_verify(model_id: ModelId, hotkey: str, competition: Any, snapshot: Path, endpoint: str,
                         progress: bool, token) -> Path:
    what = f"{model_id.repo_id}@{model_id.commit[:12]}"
    repo_dir = snapshot.parent.parent
    tmp = repo_dir / f"{constants.MODEL_STORE_TMP_PREFIX}{model_id.commit}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        files = remote_files(model_id.repo_id, model_id.commit, endpoint, token)
        check_file_list(files, competition, what)
        need = sum(files.values()) + constants.DISK_MARGIN_BYTES
        free = _disk_free(repo_dir)
        if free < need:
            raise HubError(FailureReason.disk_full,
                           f"{what}: {free} bytes free, need {need} (model + margin of {constants.DISK_MARGIN_BYTES})")
        tmp.mkdir(parents=True)
        check_config(_download_config(model_id.repo_id, model_id.commit, endpoint, tmp / "config", token),
                     competition, f"{what}/config.json")
        got = _fetch_files(model_id.repo_id, model_id.commit, endpoint, tmp / "dl", files, progress, token)
        checked = _check_dir(got, competition)
        content = _verify_local(got, model_id, hotkey)
        os.rename(got, snapshot)  # same filesystem: atomic; a snapshot dir is always complete
        _write_marker(snapshot, model_id, hotkey, content, checked)
        log.info("%s verified at %s", what, snapshot)
        return snapshot
    except HubError:
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


# --- tokenizers ----------------------------------------------------------------------------


def fetch_tokenizer(spec: str, cache_dir: str | os.PathLike, endpoint: str | None = None,
                    token: str | bool | None = None) -> Path:
    """A tokenizer dir for a competition's `tokenizer` field: a local dir is returned as is;
    "org/name" or "org/name@revision" downloads only the tokenizer files (never code)."""
    local = Path(spec).expanduser()
    if local.is_dir():
        return local
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or spec.startswith(("/", ".", "~")):
        raise HubError(FailureReason.not_found, f"tokenizer {spec!r}: not a local dir nor an org/name[@revision] repo")
    from huggingface_hub import snapshot_download

    _install_timeouts()
    ep = resolve_endpoint(endpoint)
    try:
        # olah needs an explicit revision; the hub's default is main as well
        path = Path(snapshot_download(repo_id, revision=revision or "main", cache_dir=Path(cache_dir), endpoint=ep,
                                      allow_patterns=TOKENIZER_FILES, token=token, tqdm_class=_silent_tqdm()))
    except Exception as exc:  # noqa: BLE001 - classified
        raise _classify(exc, f"tokenizer {spec}") from None
    if not any(path.iterdir()):
        raise HubError(FailureReason.not_found, f"tokenizer {spec}: no tokenizer files in the repo")
    return path


# --- publishing (miners) ------------------------------------------------------------------------

GIT_AUTHOR = ("coldint-upload", "upload@coldint.invalid")


def _git(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": GIT_AUTHOR[0], "GIT_AUTHOR_EMAIL": GIT_AUTHOR[1],
           "GIT_COMMITTER_NAME": GIT_AUTHOR[0], "GIT_COMMITTER_EMAIL": GIT_AUTHOR[1],
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    proc = subprocess.run(["git", "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args],
                          cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {cwd} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def _model_files(model_dir: Path) -> list[Path]:
    """Files to publish: everything but hidden entries (.git, .cache, ...), relative paths."""
    out = []
    for cur, dirs, names in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                out.append((Path(cur) / name).relative_to(model_dir))
    return out


def publish_local(model_dir: str | os.PathLike, mirror_dir: str | os.PathLike, namespace: str, name: str) -> str:
    """Commit the files of `model_dir` to the git repo `<mirror_dir>/models/<ns>/<name>`
    (branch main, created if needed; the tree is replaced by exactly these files).
    Returns the commit sha. The mirror is what LocalHub (olah) serves."""
    from validator.identity import check_repo_part

    check_repo_part(namespace, "namespace")
    check_repo_part(name, "name")
    src = Path(model_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"model dir {src} does not exist")
    files = _model_files(src)
    if not files:
        raise ValueError(f"model dir {src} has no files to publish")
    repo = Path(mirror_dir) / "models" / namespace / name
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        _git(["init", "-q", "-b", "main"], repo)
    else:
        _git(["checkout", "-q", "main"], repo)
        for old in _git(["ls-files", "-z"], repo).split("\0"):
            if old:
                (repo / old).unlink(missing_ok=True)
    for rel in files:
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst)  # follows symlinks in the source: real content is published
    _git(["add", "-A", "."], repo)
    _git(["commit", "-q", "--allow-empty", "-m", f"upload {name}"], repo)
    return _git(["rev-parse", "HEAD"], repo)


def publish_hf(model_dir: str | os.PathLike, repo_id: str, token: str | None, private: bool = True,
               endpoint: str | None = None) -> str:
    """Create `repo_id` (private by default) and upload the files of `model_dir`; returns the
    sha of the commit holding them all (huggingface_hub may split a large folder into several
    commits; the last is complete). Hidden files (.git, .cache) are not uploaded.

    The repo ends up holding exactly these files (plus the hub's .gitattributes): remote
    files left from an earlier upload are deleted, since a stale model.safetensors beside
    new shards is what transformers would load. With `private`, an existing public repo is
    made private before the upload, so the new weights stay unseen until committed on chain
    (a copier could otherwise commit them first)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=resolve_endpoint(endpoint), token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)  # exist_ok keeps its visibility
    if private:
        _make_private(api, repo_id)
    # "*" deletes every remote file this upload does not write; huggingface_hub drops the
    # files being uploaded from the deletions and never deletes .gitattributes.
    info = api.upload_folder(folder_path=str(model_dir), repo_id=repo_id, repo_type="model",
                             commit_message="upload model", ignore_patterns=[".*", "**/.*"],
                             delete_patterns="*")
    return info.oid


def _make_private(api: Any, repo_id: str) -> None:
    """Make `repo_id` private unless the hub says it already is (an unknown visibility is
    treated as public)."""
    if api.repo_info(repo_id, repo_type="model").private is True:
        return
    api.update_repo_settings(repo_id, private=True, repo_type="model")
    log.warning("%s existed and was not private: made it private before uploading "
                "(it is made public again once the commitment is on chain)", repo_id)


def set_visibility(repo_id: str, public: bool, token: str | None, endpoint: str | None = None) -> None:
    from huggingface_hub import HfApi

    HfApi(endpoint=resolve_endpoint(endpoint), token=token).update_repo_settings(
        repo_id, private=not public, repo_type="model")

