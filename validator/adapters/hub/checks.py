"""The checks of a model's files that need no weights: size, the small JSON files, the config.

Which files count is the live validator's rule (validator/core/live_repo.py): the size of
every file at the commit is checked against model_size, then only what transformers 4.44
loads is downloaded, by exact name, and hashed. The small JSON files (tokenizer_config.json,
config.json, the safetensors index) are bounded in size, nesting and value count before any
parser sees them; the model class comes from model_type and the parameter count from a
build on the meta device (CONFIG_KEYS_STRIPPED removed, layer and expert counts bounded
first, the build in a worker with time and memory limits). Each refusal is a FetchError
with its FailureReason. The same checks run on the hub's listing, on a download and on a
local model dir (check_model_constraints, for miners).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

import constants
from validator.core import live_repo
from validator.core.failures import FailureReason, FetchError
from validator.core.jsonread import SourceError, check_json_shape, decode_json
from validator.scoring import worker


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
