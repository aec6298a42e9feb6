"""Fetching a repo at a commit: its listing, its small JSON files, exactly its download set.

Order, so that no weight byte is fetched for a model that must be refused (checks.py holds
the rules): file list at the commit (total size vs model_size) -> the small JSON files,
bounded, which fix the download set -> model class and parameter count from config.json ->
free disk -> the download of exactly that set, by name (never a pattern) -> symlinks of the
hub's cache layout realised and confined to the download -> exactly the download set on
disk, no git-LFS pointer -> the same checks on disk. The hash is store.py's.

The download itself is a Downloader, a parameter (`download_files` by default), so a caller
or a test can wrap or replace it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

import constants
from validator.adapters.hub.checks import (BOUNDED_JSON_FILES, _check_dir, _refuse_lfs_pointers, check_config,
                                           check_download_names, check_json_size, check_repo_path, check_repo_size,
                                           decode_repo_json, plan_download)
from validator.adapters.hub.http import _classify, _with_retries, install_timeouts, resolve_endpoint
from validator.core import live_repo
from validator.core.failures import FailureReason, FetchError

log = logging.getLogger(__name__)

# (repo_id, commit, endpoint, cache_dir, files, progress, token, deadline=None) -> the
# snapshot folder in the hub's cache layout under cache_dir (download_files' contract)
Downloader = Callable[..., Path]

BUDGET_USED_UP = "download budget of this step used up"


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

    api = HfApi(endpoint=endpoint, token=token)
    # list_repo_tree, not model_info: an unknown commit is a clean 404 here on both the hub
    # and olah (olah's model_info answers 500 for it).
    return _with_retries(lambda: list(api.list_repo_tree(repo_id, revision=commit, recursive=True)),
                         f"{repo_id}@{commit[:12]}")


def remote_files(repo_id: str, commit: str, endpoint: str, token: str | bool | None = None) -> dict[str, int]:
    """path -> size of every file of `repo_id` at `commit` (sizes from the tree listing, else
    the file's HEAD: olah leaves files_metadata sizes empty). Raises FetchError: bad_repo for
    an entry that is not a plain relative path or more than HUB_MAX_REPO_FILES files."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.hf_api import RepoFile

    install_timeouts()
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


def download_files(repo_id: str, commit: str, endpoint: str, cache_dir: Path, files: list[str],
                   progress: bool, token: str | bool | None, deadline: float | None = None) -> Path:
    """Download exactly `files` (plain names, never a pattern) at `commit` into a private
    cache dir, hf_hub_download per file, a few in parallel; returns the snapshot folder (hub
    layout: symlinks into ../../blobs). No file is started past `deadline` (FetchError network;
    files in flight finish). The default Downloader."""
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


def _fetch_files(repo_id: str, commit: str, endpoint: str, cache_dir: Path, files: Iterable[str],
                 progress: bool, token, deadline: float | None = None, download: Downloader = download_files) -> Path:
    """Download exactly `files` at `commit` with `download`; return the snapshot dir as real
    files, complete."""
    what = f"{repo_id}@{commit[:12]}"
    files = sorted(files)
    check_download_names(files, what)
    try:
        got = download(repo_id, commit, endpoint, cache_dir, files, progress, token, deadline=deadline)
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
                   guard: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
                   download: Downloader = download_files) -> tuple[Path, dict]:
    """Everything ensure_model does before the hash: the repo's size at the commit, the
    download set from its small JSON files, the class and parameter count from config.json,
    free disk, the download of exactly that set (under `work`), the same checks on disk.
    The checks of the miner's files run inside `guard()` (ensure_model records the attempt
    there). `download` fetches the files. Returns (snapshot dir, what was measured)."""
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
    got = _fetch_files(repo_id, commit, endpoint, cache, plan.files, progress, token, deadline, download)
    with guard():
        return got, _check_dir(got, competition, repo_size=repo_size, exact=True)


def download_snapshot(repo_id: str, commit: str, out_dir: str | os.PathLike, *, competition: Any,
                      endpoint: str | None = None, token: str | bool | None = None, progress: bool = True) -> Path:
    """Download `repo_id` at `commit` exactly as ensure_model does (same checks against
    `competition`, same file set, symlinks realised) into a new dir under `out_dir`, without
    the hash verification; returns the snapshot dir. For a miner: hash what validators hash."""
    install_timeouts()
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
    install_timeouts()
    ep = resolve_endpoint(endpoint)
    revision = revision or "main"  # olah needs an explicit revision; the hub's default is main as well
    present = remote_files(repo_id, revision, ep, token)
    names = [n for n in constants.TOKENIZER_FILES if n in present]  # exact names, never a pattern
    if names and "config.json" in present:
        names.append("config.json")  # 4.44 takes the tokenizer class from model_type when tokenizer_config has none
    if not names:
        raise FetchError(FailureReason.not_found, f"tokenizer {spec}: no tokenizer files in the repo")
    try:
        return download_files(repo_id, revision, ep, Path(cache_dir), names, False, token)
    except Exception as exc:  # noqa: BLE001 - classified
        raise _classify(exc, f"tokenizer {spec}") from None
