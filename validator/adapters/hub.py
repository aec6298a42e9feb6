"""Models on the hub: download at a commit, check, verify, keep on disk; publish for miners.

`ensure_model` is the validator's one entry point: it makes sure the committed model is on
disk at exactly the committed revision, and verified, or raises `FetchError` with a typed
`FailureReason`. The client is huggingface_hub, so `HF_ENDPOINT` (or `endpoint=`) can point
at huggingface.co, a mirror, or olah on loopback (validator/adapters/localhub.py); hf_xet is used
by huggingface_hub when installed and the repo is xet-backed.

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

Which files count is the live validator's rule (validator/core/live_repo.py): the size of every
file at the commit is checked against model_size, then only what transformers 4.44 loads is
downloaded, by exact name, and hashed (config.json, generation_config.json, the safetensors
weights, the tokenizer files AutoTokenizer asks for). Anything else in the repo is ignored.

Order of checks, so no weight byte is fetched for a model that must be refused:
file list at the commit (total size vs the competition's model_size) -> the small JSON
files (tokenizer_config.json, config.json, the safetensors index), bounded in size, nesting
and value count before any parser sees them, which fix the download set -> model class
from model_type and parameter count on the meta device (CONFIG_KEYS_STRIPPED removed, layer
and expert counts bounded first, the build in a worker with time and memory limits) -> free
disk -> the download -> symlinks realised and confined to the download -> exactly the
download set on disk -> the same checks on disk (generation_config.json and the other JSON
files a load reads bounded too) -> secure hash.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator

import filelock

from validator.core.failures import FailureReason, FetchError
import constants
from validator.core import live_repo
from validator.scoring import worker
from validator.core.jsonread import SourceError, check_json_shape, decode_json
from validator.core.identity import ModelId, NothingToHash, dir_hash, files_hash, secure_hash
from validator.adapters.files import atomic_write_json

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
PICKLE_SUFFIXES = live_repo.PICKLE_SUFFIXES  # never downloaded nor loaded
_HOTKEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
GIB = 1024**3


def resolve_endpoint(endpoint: str | None = None) -> str:
    """`endpoint`, else $HF_ENDPOINT read now (huggingface_hub reads it once, at import), else
    huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _classify(exc: BaseException, what: str) -> FetchError:
    """Map an exception from huggingface_hub / httpx / the OS to a typed FetchError."""
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, HFValidationError):  # raised before any request: the id or a file name, not the hub
        return FetchError(FailureReason.bad_repo, f"{what}: refused by the hub client: {str(exc)[:200]}")
    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError)):
        return FetchError(FailureReason.not_found, f"{what}: {type(exc).__name__}")
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return FetchError(FailureReason.not_found, f"{what}: not on the hub (404)")
    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        status = exc.response.status_code
        if status in (401, 403, 404, 410):
            return FetchError(FailureReason.not_found, f"{what}: HTTP {status}")
        return FetchError(FailureReason.network, f"{what}: HTTP {status}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FetchError(FailureReason.disk_full, f"{what}: {exc.strerror}")
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # a file name of the repo
        return FetchError(FailureReason.bad_repo, f"{what}: a file name is too long for the filesystem")
    # LocalEntryNotFoundError (the hub could not be reached), httpx transport errors,
    # timeouts, other OSErrors: the network or the server, worth a later retry.
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return FetchError(FailureReason.network, f"{what}: {type(exc).__name__}: {text}")


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


# --- checks that need no weights -------------------------------------------------------------


def _tree_size(path: Path) -> int:
    total = 0
    for cur, _dirs, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(cur, f)).st_size
    return total


def check_repo_size(files: dict[str, int], competition: Any, what: str) -> int:
    """The live size check: every file at the commit (path -> bytes; .gitattributes, README.md
    and files never downloaded included) against model_size. Returns the total."""
    return _check_size(sum(files.values()), competition, what)


def _check_size(total: int, competition: Any, what: str) -> int:
    if total > competition.model_size:
        raise FetchError(FailureReason.too_large, f"{what}: repo size {total} bytes > model_size {competition.model_size}")
    return total


# The repo's JSON files that this module or a later load reads with Python's json module
# (tokenizer.json is validator/scoring/tokens.py's, with its own bound). Each is bounded in size, then
# in nesting depth and value count, before any parser sees it: 60 MiB of nested empty lists
# once cost the validator 5.8 GB and 12 minutes.
BOUNDED_JSON_FILES = (live_repo.TOKENIZER_CONFIG, live_repo.CONFIG, live_repo.SAFE_INDEX,
                      live_repo.GENERATION_CONFIG, "special_tokens_map.json", "added_tokens.json")


def check_json_size(name: str, size: int, what: str) -> None:
    """FetchError(constraint) when a repo JSON file is larger than HUB_SMALL_FILE_MAX_BYTES."""
    if size > constants.HUB_SMALL_FILE_MAX_BYTES:
        raise FetchError(FailureReason.constraint, f"{what}/{name}: {size} bytes, more than "
                                                 f"HUB_SMALL_FILE_MAX_BYTES = {constants.HUB_SMALL_FILE_MAX_BYTES}")


def _json_error(exc: SourceError, what: str) -> FetchError:
    """config_source's message ("<what>: why") as a refusal that names the hub's bounds."""
    why = str(exc).removeprefix(f"{what}: ")
    return FetchError(FailureReason.constraint,
                    f"{what}: not readable JSON within HUB_JSON_MAX_DEPTH = {constants.HUB_JSON_MAX_DEPTH}, "
                    f"HUB_JSON_MAX_ELEMENTS = {constants.HUB_JSON_MAX_ELEMENTS}: {why}")


def check_repo_json(name: str, raw: bytes, what: str) -> None:
    """Refuse (FetchError constraint, naming the file and the bound) a repo JSON file beyond
    HUB_SMALL_FILE_MAX_BYTES, HUB_JSON_MAX_DEPTH or HUB_JSON_MAX_ELEMENTS, without parsing it.
    Whether it is valid JSON stays the live rule's question (live_repo): an unreadable
    tokenizer_config.json makes 4.44 skip the tokenizer, an unreadable config.json refuses."""
    check_json_size(name, len(raw), what)
    try:
        check_json_shape(raw.decode("utf-8-sig", errors="replace"), f"{what}/{name}",
                         max_depth=constants.HUB_JSON_MAX_DEPTH, max_elements=constants.HUB_JSON_MAX_ELEMENTS)
    except SourceError as exc:
        raise _json_error(exc, f"{what}/{name}") from None


def decode_repo_json(raw: bytes, what: str) -> Any:
    """A repo JSON file (`what` names it) decoded by jsonread.decode_json within
    HUB_SMALL_FILE_MAX_BYTES, HUB_JSON_MAX_DEPTH and HUB_JSON_MAX_ELEMENTS; FetchError(constraint)
    naming the file and the bound or the parse error otherwise."""
    if len(raw) > constants.HUB_SMALL_FILE_MAX_BYTES:
        raise FetchError(FailureReason.constraint, f"{what}: {len(raw)} bytes, more than "
                                                 f"HUB_SMALL_FILE_MAX_BYTES = {constants.HUB_SMALL_FILE_MAX_BYTES}")
    try:
        return decode_json(raw, what, max_depth=constants.HUB_JSON_MAX_DEPTH,
                           max_elements=constants.HUB_JSON_MAX_ELEMENTS)
    except SourceError as exc:
        raise _json_error(exc, what) from None


def plan_download(files: Iterable[str], small_files: dict[str, bytes], what: str) -> live_repo.DownloadSet:
    """live_repo.download_set with its refusals as FetchError; each small file bounded first
    (check_repo_json)."""
    for name, raw in small_files.items():
        check_repo_json(name, raw, what)
    try:
        return live_repo.download_set(files, small_files)
    except live_repo.RepoRefused as exc:
        raise FetchError(exc.reason, f"{what}: {exc.detail}") from None


def check_config(cfg: Any, competition: Any, what: str = "config.json", *, timeout_s: float | None = None,
                 memory_limit_bytes: int | None = None) -> tuple[str, int]:
    """The live constraints from a config dict: the class built from model_type (printed as
    the live validator prints it) must contain one of the competition's model_types, and its
    unique parameters (built on the meta device: no weights, no remote code) must not exceed
    `parameters`. The build runs in a worker (count_parameters_isolated; the limits default to
    CONFIG_CHECK_TIMEOUT_S and CONFIG_CHECK_MEMORY_BYTES). Returns (printed class, parameter
    count); raises FetchError(constraint)."""
    try:
        printed = live_repo.live_model_class(live_repo.config_model_type(cfg))
    except live_repo.RepoRefused as exc:
        raise FetchError(exc.reason, f"{what}: {exc.detail}") from None
    check_model_type(printed, competition, what)
    _arch, n_params = count_parameters_isolated(cfg, what, timeout_s=timeout_s, memory_limit_bytes=memory_limit_bytes)
    check_parameters(n_params, competition, what)
    return printed, n_params


def check_model_type(printed_class: str, competition: Any, what: str) -> None:
    if not live_repo.model_type_allowed(printed_class, competition.model_types):
        raise FetchError(FailureReason.constraint, f"{what}: model type: {printed_class} contains none of the "
                                                 f"competition's model_types {list(competition.model_types)}")


def check_parameters(n_params: int, competition: Any, what: str) -> None:
    if n_params > competition.parameters:
        raise FetchError(FailureReason.constraint, f"{what}: parameters: {n_params} > {competition.parameters}")


def strip_config_keys(cfg: dict) -> dict:
    """A copy of a config dict without the keys of constants.CONFIG_KEYS_STRIPPED (they pick
    attention kernels, quantizers, parallel plans: code paths a miner must not choose), at
    every nesting level (sub-configs). Iterative: any depth."""
    stripped = frozenset(constants.CONFIG_KEYS_STRIPPED)
    root: dict = {}
    stack: list[tuple[Any, Any]] = [(cfg, root)]
    while stack:
        src, dst = stack.pop()
        for key, value in (src.items() if isinstance(src, dict) else enumerate(src)):
            if isinstance(src, dict) and key in stripped:
                continue
            if isinstance(value, (dict, list)):
                copy: Any = {} if isinstance(value, dict) else [None] * len(value)
                stack.append((value, copy))
                value = copy
            dst[key] = value
    return root


# (class, parameters) by the sha256 of a stripped config: a worker per distinct config, not per
# check (ensure_model checks the same config.json before and after the download).
_COUNTED: dict[str, tuple[str, int]] = {}
_COUNTED_MAX = 256


def count_parameters_isolated(cfg: dict, what: str = "config.json", *, timeout_s: float | None = None,
                              memory_limit_bytes: int | None = None) -> tuple[str, int]:
    """count_parameters in a worker process (validator.scoring.config_check) under a time limit and an
    address-space limit (default CONFIG_CHECK_TIMEOUT_S, CONFIG_CHECK_MEMORY_BYTES): a config
    whose build hangs, eats memory or crashes costs that worker, not the validator. A worker
    that fails is a permanent refusal, FetchError(constraint, "...: config checks crashed: oom ...")."""
    if not isinstance(cfg, dict):
        raise FetchError(FailureReason.constraint, f"{what}: not a JSON object")
    cfg = strip_config_keys(cfg)
    check_config_counts(cfg, what)  # a refused count starts no worker
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
    if key in _COUNTED:
        return _COUNTED[key]
    timeout = constants.CONFIG_CHECK_TIMEOUT_S if timeout_s is None else timeout_s
    memory = constants.CONFIG_CHECK_MEMORY_BYTES if memory_limit_bytes is None else memory_limit_bytes
    res = worker.run_isolated("validator.scoring.config_check:count_parameters_job", {"cfg": cfg, "what": what},
                              timeout_s=timeout, memory_limit_bytes=memory)
    value = res.value if res.ok else None
    if not res.ok or not isinstance(value, dict):
        why = res.describe() if not res.ok else f"unexpected result {str(value)[:80]}"
        raise FetchError(FailureReason.constraint,
                       f"{what}: config checks crashed: {why[:300]} (limits: {timeout:g} s, {memory} bytes of "
                       f"address space; CONFIG_CHECK_TIMEOUT_S, CONFIG_CHECK_MEMORY_BYTES)")
    if "refused" in value:
        raise FetchError(value["refused"], str(value.get("detail", "")))
    result = (str(value["class"]), int(value["parameters"]))
    if len(_COUNTED) >= _COUNTED_MAX:
        _COUNTED.pop(next(iter(_COUNTED)))  # oldest first
    _COUNTED[key] = result
    return result


def count_parameters(cfg: dict, what: str = "config.json") -> tuple[str, int]:
    """(model class name, unique parameter count) of the causal LM a config describes, in this
    process (count_parameters_isolated runs it in a worker; validators use that one).

    Built on torch's meta device: shapes only, nothing allocated, no weights read, without the
    keys of CONFIG_KEYS_STRIPPED. The build still costs time and memory per module, so the
    layer and expert counts are bounded first (check_config_counts)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(cfg, dict):
        raise FetchError(FailureReason.constraint, f"{what}: not a JSON object")
    cfg = strip_config_keys(cfg)
    check_config_counts(cfg, what)  # before anything is built: a huge count is hours of building
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise FetchError(FailureReason.constraint,
                       f"{what}: model_type {model_type!r} is not built into transformers (no custom code)")
    try:
        config = CONFIG_MAPPING[model_type].from_dict(dict(cfg))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except FetchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any config transformers cannot build is refused
        raise FetchError(FailureReason.constraint,
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
    """The integer a count key holds (None: unset or a flag); FetchError if it is not a
    count within the bound named by `bound_name` (a constant)."""
    key = path.rsplit(".", 1)[-1].lower()
    if value is None:
        return None  # unset: transformers takes its default
    if isinstance(value, bool):
        if _COUNT_PREFIX.search(key) or bound_name == "CONFIG_MAX_EXPERTS":
            raise FetchError(FailureReason.constraint, f"{what}: {path} = {value} is a bool, not a count")
        return None  # a flag about layers, e.g. freeze_text_layers
    if not isinstance(value, int):
        raise FetchError(FailureReason.constraint, f"{what}: {path} = {value!r} is not an integer count")
    if value < 0:
        raise FetchError(FailureReason.constraint, f"{what}: {path} = {value} is negative")
    bound = getattr(constants, bound_name)
    if value > bound:
        raise FetchError(FailureReason.constraint, f"{what}: {path} = {value} exceeds {bound_name} = {bound}")
    return value


def check_config_counts(cfg: dict, what: str = "config.json") -> None:
    """Refuse a config whose layer, block or expert counts (at any depth) are not integers
    within CONFIG_MAX_LAYERS / CONFIG_MAX_EXPERTS, or whose largest layer count times its
    largest expert count exceeds CONFIG_MAX_MODULE_BLOCKS. Builds nothing; FetchError
    (constraint) names the key and the bound."""
    if not isinstance(cfg, dict):
        raise FetchError(FailureReason.constraint, f"{what}: not a JSON object")
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
        raise FetchError(FailureReason.constraint,
                       f"{what}: {layers[0]} = {layers[1]} x {experts[0]} = {experts[1]} = {blocks} "
                       f"exceeds CONFIG_MAX_MODULE_BLOCKS = {constants.CONFIG_MAX_MODULE_BLOCKS}")


def check_model_constraints(path: str | os.PathLike, competition: Any) -> None:
    """Check a model dir against a competition, before it is published or scored, with the
    validators' rules on the same files: the dir's total size (what publish_local publishes:
    every file outside hidden folders) <= model_size (too_large); the download set (what a
    validator will fetch from it) safetensors only (unsafe_format); model class and parameter
    count (constraint). Files a validator ignores are not checked. No symlinks. Raises
    FetchError naming the dir and the reason."""
    _check_dir(Path(path), competition)


def local_files(root: Path) -> dict[str, int]:
    """path -> bytes of the files publish_local publishes from `root`: every file outside
    hidden folders (.git, .cache, ...). A symlink or special file is refused (unsafe_format)."""
    what = str(root)
    if not root.is_dir():
        raise FetchError(FailureReason.not_found, f"{what}: not a directory")
    files: dict[str, int] = {}
    for cur, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(dirs + names):
            full = Path(cur) / name
            if full.is_symlink():
                raise FetchError(FailureReason.unsafe_format, f"{what}: symlink {full.relative_to(root)} is not allowed")
        for name in names:
            full = Path(cur) / name
            if not full.is_file():
                raise FetchError(FailureReason.unsafe_format, f"{what}: {full.relative_to(root)} is not a regular file")
            files[full.relative_to(root).as_posix()] = full.stat().st_size
    return files


def _local_small_files(root: Path, files: dict[str, int], what: str) -> dict[str, bytes]:
    out = {}
    for name in live_repo.small_files_needed(files):
        out[name] = _read_bounded(root, name, files[name], what)
    return out


def _read_bounded(root: Path, name: str, size: int, what: str) -> bytes:
    """A repo JSON file of a local dir, its size bounded before it is read (and while reading)."""
    check_json_size(name, size, what)  # bounded before reading
    with open(root / name, "rb") as f:
        return f.read(constants.HUB_SMALL_FILE_MAX_BYTES + 1)  # it may have grown since it was listed


def model_dir_hash(path: str | os.PathLike) -> str:
    """The directory hash validators will compute for this model dir once it is published:
    over its download set only (a README.md or training leftovers beside it change nothing)."""
    root = Path(path)
    files = local_files(root)
    plan = plan_download(files, _local_small_files(root, files, str(root)), str(root))
    return files_hash(root, plan.files)


def _check_dir(root: Path, competition: Any, repo_size: int | None = None, exact: bool = False) -> dict:
    """check_model_constraints; returns what it measured (kept in the verified marker).

    A downloaded snapshot passes `exact`: it must hold exactly its download set, nothing
    else; and `repo_size`, the size the hub listed for the whole repo (without it, as when a
    snapshot is re-checked offline, the size is that of the files on disk)."""
    what = str(root)
    files = local_files(root)
    size = _check_size(sum(files.values()) if repo_size is None else repo_size, competition, what)
    small = _local_small_files(root, files, what)
    plan = plan_download(files, small, what)
    if exact and set(plan.files) != set(files):
        extra = sorted(set(files) - set(plan.files))
        raise FetchError(FailureReason.unsafe_format, f"{what}: holds files a validator does not download: {extra[:5]}")
    for name in sorted((set(plan.files) & set(BOUNDED_JSON_FILES)) - set(small)):  # read later, by the load
        check_repo_json(name, _read_bounded(root, name, files[name], what), what)
    cfg = decode_repo_json(small[live_repo.CONFIG], f"{what}/{live_repo.CONFIG}")
    printed, n_params = check_config(cfg, competition, f"{what}/{live_repo.CONFIG}")
    return {"repo_size": size, "parameters": n_params, "class": printed, "files": list(plan.files)}


def _check_recorded(marker: dict, competition: Any, what: str) -> None:
    """A verified snapshot against the competition as it is now (limits may have changed
    since it was verified), from the marker alone: no network, no rehash."""
    size, n_params, printed = marker.get("repo_size"), marker.get("parameters"), marker.get("class")
    if isinstance(size, int) and size > competition.model_size:
        raise FetchError(FailureReason.too_large, f"{what}: repo size {size} bytes > model_size {competition.model_size}")
    if isinstance(printed, str):
        check_model_type(printed, competition, what)
    if isinstance(n_params, int):
        check_parameters(n_params, competition, what)


# --- download -------------------------------------------------------------------------------


def _silent_tqdm():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def _listing(repo_id: str, commit: str, endpoint: str, token) -> list:
    """The tree entries (RepoFile, RepoFolder) of `repo_id` at `commit`. Raises FetchError."""
    from huggingface_hub import HfApi

    _install_timeouts()
    api = HfApi(endpoint=endpoint, token=token)
    # list_repo_tree, not model_info: an unknown commit is a clean 404 here on both the hub
    # and olah (olah's model_info answers 500 for it).
    return _with_retries(lambda: list(api.list_repo_tree(repo_id, revision=commit, recursive=True)),
                         f"{repo_id}@{commit[:12]}")


def check_repo_path(path: Any, what: str) -> str:
    """A tree entry's path must be a plain relative path: no empty, "." or ".." component, no
    backslash or control character (the hub never makes one; a mirror or a crafted tree may).
    FetchError(bad_repo) otherwise: the repo's content, permanent for the commitment."""
    if (not isinstance(path, str) or not path or any(p in ("", ".", "..") for p in path.split("/"))
            or "\\" in path or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)):
        raise FetchError(FailureReason.bad_repo, f"{what}: tree entry {str(path)[:120]!r} is not a plain relative path")
    return path


def check_download_names(names: Iterable[str], what: str) -> None:
    """Every component of a file to download must fit the filesystem (HUB_MAX_NAME_BYTES of
    UTF-8, the usual NAME_MAX): else FetchError(bad_repo) before any download."""
    for name in names:
        for part in name.split("/"):
            if len(part.encode("utf-8")) > constants.HUB_MAX_NAME_BYTES:
                raise FetchError(FailureReason.bad_repo,
                               f"{what}: file name {name[:60]!r}... has a component of {len(part.encode())} bytes, "
                               f"more than HUB_MAX_NAME_BYTES = {constants.HUB_MAX_NAME_BYTES}")


def remote_files(repo_id: str, commit: str, endpoint: str, token: str | bool | None = None) -> dict[str, int]:
    """path -> size of every file of `repo_id` at `commit` (sizes from the tree listing, else
    the file's HEAD: olah leaves files_metadata sizes empty). Raises FetchError: bad_repo for
    an entry that is not a plain relative path or more than HUB_MAX_REPO_FILES files."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.hf_api import RepoFile

    what = f"{repo_id}@{commit[:12]}"
    entries = _listing(repo_id, commit, endpoint, token)
    for entry in entries:
        check_repo_path(entry.path, what)
    n_files = sum(isinstance(e, RepoFile) for e in entries)
    if n_files > constants.HUB_MAX_REPO_FILES:  # before a HEAD per file or any download
        raise FetchError(FailureReason.bad_repo, f"{what}: the repo has {n_files} files, more than "
                                               f"HUB_MAX_REPO_FILES = {constants.HUB_MAX_REPO_FILES}")
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
            raise FetchError(FailureReason.network, f"{what}/{entry.path}: the hub gave no size")
        files[entry.path] = int(size)
    if not files:
        raise FetchError(FailureReason.not_found, f"{what}: no files at this commit")
    return files


BUDGET_USED_UP = "download budget of this step used up"


def _check_deadline(deadline: float | None, what: str) -> None:
    """Between files: past the step's download deadline (time.monotonic()) the download stops,
    transient: the model is tried again at the next step."""
    if deadline is not None and time.monotonic() >= deadline:
        raise FetchError(FailureReason.network, f"{what}: {BUDGET_USED_UP}")


def _fetch_small(repo_id: str, commit: str, endpoint: str, cache_dir: Path, files: dict[str, int], token,
                 what: str, deadline: float | None = None) -> dict[str, bytes]:
    """The small JSON files the download set depends on (live_repo.small_files_needed), each
    fetched by exact name into the download's cache (so they are not fetched twice) and
    bounded by the listed size before it is fetched."""
    from huggingface_hub import hf_hub_download

    out = {}
    for name in live_repo.small_files_needed(files):
        _check_deadline(deadline, what)
        check_json_size(name, files[name], what)
        path = _with_retries(lambda n=name: hf_hub_download(repo_id, n, revision=commit, endpoint=endpoint,
                                                            cache_dir=cache_dir, token=token,
                                                            tqdm_class=_silent_tqdm()), f"{what}/{name}")
        with open(path, "rb") as f:  # the hub may serve more than it listed: read no further than the bound
            data = f.read(constants.HUB_SMALL_FILE_MAX_BYTES + 1)
        out[name] = data
    return out


def _download_snapshot(repo_id: str, commit: str, endpoint: str, cache_dir: Path, files: list[str],
                       progress: bool, token, deadline: float | None = None) -> Path:
    """Download exactly `files` (plain names, never a pattern) at `commit` into a private
    cache dir, hf_hub_download per file, a few in parallel; returns the snapshot folder (hub
    layout: symlinks into ../../blobs). No file is started past `deadline` (FetchError network;
    files in flight finish). A seam for tests."""
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import hf_hub_download

    kwargs = {} if progress else {"tqdm_class": _silent_tqdm()}

    def one(name: str) -> Path:
        _check_deadline(deadline, f"{repo_id}@{commit[:12]}")
        return Path(hf_hub_download(repo_id, name, revision=commit, endpoint=endpoint, cache_dir=cache_dir,
                                    token=token, **kwargs))

    with ThreadPoolExecutor(max_workers=max(1, min(constants.HUB_DOWNLOAD_WORKERS, len(files)))) as pool:
        paths = list(pool.map(one, files))
    return paths[0].parent  # every file of a download set is top-level


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
                    raise FetchError(FailureReason.unsafe_format,
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
                raise FetchError(FailureReason.unsafe_format, f"{what}: {rel} is not a regular file")


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
                 lock_timeout_s: float = constants.MODEL_LOCK_TIMEOUT_S, deadline: float | None = None) -> Path:
    """The verified snapshot dir of `model_id` committed by `hotkey`, downloading it if needed.

    Present and verified: returns at once, no network. Otherwise one process downloads
    (a filelock; others wait up to `lock_timeout_s`, then FetchError(network, "busy ...")).
    Raises FetchError(reason, detail); a failed attempt leaves nothing behind. `deadline`
    (time.monotonic(), None: no limit) is checked between files of the download: past it,
    FetchError(network, "download budget of this step used up")."""
    snapshot = snapshot_path(model_dir, hotkey, model_id)
    what = f"{model_id.repo_id}@{model_id.commit[:12]}"

    def present() -> Path | None:
        marker = read_marker(snapshot)
        if marker is None or "class" not in marker or not snapshot.is_dir():
            return None  # none, or recorded under the old rules (whole repo hashed): re-checked
        if secure_hash(marker["dir_hash"], hotkey) != model_id.hash:
            raise FetchError(FailureReason.hash_mismatch,
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
                return snapshot
        return _download_and_verify(model_id, hotkey, competition, snapshot, resolve_endpoint(endpoint),
                                    progress, token, deadline)
    finally:
        lock.release()


def _fetch_files(repo_id: str, commit: str, endpoint: str, cache_dir: Path, files: Iterable[str],
                 progress: bool, token, deadline: float | None = None) -> Path:
    """Download exactly `files` at `commit`; return the snapshot dir as real files, complete."""
    what = f"{repo_id}@{commit[:12]}"
    files = sorted(files)
    check_download_names(files, what)
    try:
        got = _download_snapshot(repo_id, commit, endpoint, cache_dir, files, progress, token, deadline=deadline)
    except Exception as exc:  # noqa: BLE001 - classified into a typed reason
        err = _classify(exc, f"{what}: download")
        if err.reason is FailureReason.network and BUDGET_USED_UP not in err.detail:
            err = _diagnose_download(repo_id, commit, endpoint, token, files, err)
        raise err from None
    _realise(got, got.parent.parent / "blobs", what)
    have = _relative_files(got)
    if have != set(files):
        missing, extra = sorted(set(files) - have), sorted(have - set(files))
        raise FetchError(FailureReason.network, f"{what}: incomplete download (missing {missing[:3]}, unexpected {extra[:3]})")
    _refuse_lfs_pointers(got, files, what)
    return got


LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
LFS_POINTER_MAX_BYTES = 1024  # git-lfs pointers are ~130 bytes; its own limit is 1024


def _refuse_lfs_pointers(root: Path, files: Iterable[str], what: str) -> None:
    """A git-LFS pointer served as the file itself (pushed with plain git, the object never
    uploaded): the repo's content, not the hub; FetchError(bad_repo)."""
    for name in files:
        path = root / name
        if path.stat().st_size <= LFS_POINTER_MAX_BYTES:
            with open(path, "rb") as f:
                if f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX:
                    raise FetchError(FailureReason.bad_repo,
                                   f"{what}: {name} is a git-LFS pointer, not the file (LFS object never uploaded)")


def _diagnose_download(repo_id: str, commit: str, endpoint: str, token, files: list[str],
                       err: FetchError) -> FetchError:
    """A download failed on the connection or a 5xx: ask the hub again, so that the repo's
    content is not blamed on the network. The commit gone from the listing -> not_found
    (it vanished: force-pushed away); the hub answering for the commit's plain files but
    not for its LFS-backed ones -> bad_repo (pointer committed without its object). Anything
    else, or the hub failing to answer these questions too, stays `err` (network)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.hf_api import RepoFile

    what = f"{repo_id}@{commit[:12]}"
    try:
        entries = _listing(repo_id, commit, endpoint, token)
    except FetchError as again:
        return again if again.reason is not FailureReason.network else err
    wanted = set(files)
    listed = [e for e in entries if isinstance(e, RepoFile) and e.path in wanted]
    lfs = sorted(e.path for e in listed if e.lfs is not None)
    plain = sorted(e.path for e in listed if e.lfs is None)
    if not lfs or not plain:
        return err  # nothing to compare against: the hub may be failing

    def served(name: str) -> bool:
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint), token=token)
        except Exception as exc:  # noqa: BLE001 - any failure means not served
            log.debug("%s/%s: not served: %s", what, name, exc)
            return False
        return True

    if not served(plain[0]):
        return err
    missing = [name for name in lfs if not served(name)]
    if missing:
        return FetchError(FailureReason.bad_repo, f"{what}: the hub serves its plain files but not the git-LFS "
                                                f"object of {missing[:3]} (pointer committed without the object?)")
    return err


def _fetch_checked(repo_id: str, commit: str, competition: Any, work: Path, endpoint: str, progress: bool,
                   token, deadline: float | None = None,
                   guard: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> tuple[Path, dict]:
    """Everything ensure_model does before the hash: the repo's size at the commit, the
    download set from its small JSON files, the class and parameter count from config.json,
    free disk, the download of exactly that set (under `work`), the same checks on disk.
    The checks of the miner's files run inside `guard()` (ensure_model records the attempt
    there). Returns (snapshot dir, what was measured)."""
    what = f"{repo_id}@{commit[:12]}"
    files = remote_files(repo_id, commit, endpoint, token)
    repo_size = check_repo_size(files, competition, what)
    cache = work / "dl"
    small = _fetch_small(repo_id, commit, endpoint, cache, files, token, what, deadline)
    with guard():
        plan = plan_download(files, small, what)
        for name in sorted(set(plan.files) & set(BOUNDED_JSON_FILES)):  # by their listed size, before the download
            check_json_size(name, files[name], what)
        cfg = decode_repo_json(small[live_repo.CONFIG], f"{what}/{live_repo.CONFIG}")
        check_config(cfg, competition, f"{what}/{live_repo.CONFIG}")
    need = sum(files[f] for f in plan.files) + constants.DISK_MARGIN_BYTES
    free = _disk_free(work)
    if free < need:
        raise FetchError(FailureReason.disk_full,
                       f"{what}: {free} bytes free, need {need} (download + margin of {constants.DISK_MARGIN_BYTES})")
    got = _fetch_files(repo_id, commit, endpoint, cache, plan.files, progress, token, deadline)
    with guard():
        return got, _check_dir(got, competition, repo_size=repo_size, exact=True)


def download_snapshot(repo_id: str, commit: str, out_dir: str | os.PathLike, *, competition: Any,
                      endpoint: str | None = None, token: str | bool | None = None, progress: bool = True) -> Path:
    """Download `repo_id` at `commit` exactly as ensure_model does (same checks against
    `competition`, same file set, symlinks realised) into a new dir under `out_dir`, without
    the hash verification; returns the snapshot dir. For a miner: hash what validators hash."""
    ep = resolve_endpoint(endpoint)
    work = Path(out_dir) / f"{constants.MODEL_STORE_TMP_PREFIX}{commit}-{os.getpid()}-{secrets.token_hex(4)}"
    work.mkdir(parents=True)
    try:
        return _fetch_checked(repo_id, commit, competition, work, ep, progress, token)[0]
    except FetchError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. disk errors while realising
        shutil.rmtree(work, ignore_errors=True)
        raise _classify(exc, f"{repo_id}@{commit[:12]}") from None


def _download_and_verify(model_id: ModelId, hotkey: str, competition: Any, snapshot: Path, endpoint: str,
                         progress: bool, token, deadline: float | None = None) -> Path:
    what = f"{model_id.repo_id}@{model_id.commit[:12]}"
    repo_dir = snapshot.parent.parent
    tmp = repo_dir / f"{constants.MODEL_STORE_TMP_PREFIX}{model_id.commit}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir(parents=True)
        got, checked = _fetch_checked(model_id.repo_id, model_id.commit, competition, tmp, endpoint, progress, token,
                                      deadline, guard=lambda: _checks_attempt(snapshot))
        # A wrong hash is reported on this first visit (the live validator errors out first
        # and reports it at the next visit).
        content = _verify_local(got, model_id, hotkey)
        os.rename(got, snapshot)  # same filesystem: atomic; a snapshot dir is always complete
        _write_marker(snapshot, model_id, hotkey, content, checked)
        log.info("%s verified at %s", what, snapshot)
        return snapshot
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
        raise FetchError(FailureReason.not_found, f"tokenizer {spec!r}: not a local dir nor an org/name[@revision] repo")
    _install_timeouts()
    ep = resolve_endpoint(endpoint)
    revision = revision or "main"  # olah needs an explicit revision; the hub's default is main as well
    present = remote_files(repo_id, revision, ep, token)
    names = [n for n in constants.TOKENIZER_FILES if n in present]  # exact names, never a pattern
    if names and "config.json" in present:
        names.append("config.json")  # 4.44 takes the tokenizer class from model_type when tokenizer_config has none
    if not names:
        raise FetchError(FailureReason.not_found, f"tokenizer {spec}: no tokenizer files in the repo")
    try:
        return _download_snapshot(repo_id, revision, ep, Path(cache_dir), names, False, token)
    except Exception as exc:  # noqa: BLE001 - classified
        raise _classify(exc, f"tokenizer {spec}") from None


# --- publishing (miners) ------------------------------------------------------------------------

GIT_AUTHOR = ("coldint-upload", "upload@coldint.invalid")


def _git(args: list[str], cwd: Path, stdin: str | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": GIT_AUTHOR[0], "GIT_AUTHOR_EMAIL": GIT_AUTHOR[1],
           "GIT_COMMITTER_NAME": GIT_AUTHOR[0], "GIT_COMMITTER_EMAIL": GIT_AUTHOR[1],
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    env.pop("GIT_INDEX_FILE", None)
    proc = subprocess.run(["git", "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, input=stdin)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {cwd} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def _model_files(model_dir: Path) -> list[Path]:
    """Files to publish, relative paths: every file but those in hidden folders (.git,
    .cache, ...). Hidden files such as .gitattributes are published, as on the hub."""
    out = []
    for cur, dirs, names in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend((Path(cur) / name).relative_to(model_dir) for name in sorted(names))
    return out


def publish_local(model_dir: str | os.PathLike, mirror_dir: str | os.PathLike, namespace: str, name: str) -> str:
    """Commit the files of `model_dir` to the git repo `<mirror_dir>/models/<ns>/<name>`
    (branch main, created if needed; the tree is replaced by exactly these files, byte for
    byte: no .gitignore, .gitattributes filter or line-ending rule applies). Returns the
    commit sha. The mirror is what LocalHub (olah) serves."""
    from validator.core.identity import check_repo_part

    check_repo_part(namespace, "namespace")
    check_repo_part(name, "name")
    src = Path(model_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"model dir {src} does not exist")
    files = _model_files(src)
    if not files:
        raise ValueError(f"model dir {src} has no files to publish")
    bad = [f for f in files if "\n" in str(f) or "\t" in str(f)]
    if bad:
        raise ValueError(f"model dir {src}: file name {str(bad[0])!r} holds a newline or tab")
    repo = Path(mirror_dir) / "models" / namespace / name
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        _git(["init", "-q", "-b", "main"], repo)
    else:
        _git(["checkout", "-q", "-f", "main"], repo)
        for old in _git(["ls-files", "-z"], repo).split("\0"):
            if old:
                (repo / old).unlink(missing_ok=True)
    for rel in files:  # the work tree mirrors the commit (handy for inspecting a mirror)
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst)  # follows symlinks in the source: real content is published
    # Blobs written with --no-filters and staged by hash: `git add` would honour the model's
    # own .gitattributes (an LFS filter, eol conversion) and .gitignore, and change the tree.
    paths = [rel.as_posix() for rel in files]
    shas = _git(["hash-object", "-w", "--no-filters", "--stdin-paths"], repo, "\n".join(paths) + "\n").split()
    _git(["read-tree", "--empty"], repo)
    _git(["update-index", "--add", "--index-info"], repo,
         "".join(f"100644 {sha}\t{path}\n" for sha, path in zip(shas, paths)))
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

