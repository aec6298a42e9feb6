"""Publishing a model dir (for miners): to a local git mirror that olah serves, or to the hub.

publish_local commits exactly the files of a model dir, byte for byte, to
`<mirror>/models/<ns>/<name>` (what localhub.LocalHub serves); publish_hf uploads them to a
private repo; set_visibility makes it public once the commitment is on chain.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from validator.adapters.hub.http import resolve_endpoint

log = logging.getLogger(__name__)

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
