"""Hostile repo content is the repo's fault, not the network's; the download budget and the
file-count cap hold inside one download. Through the real ensure_model path on olah."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from validator.core.failures import FailureReason, FetchError, NOT_FOUND_RETRIES, retry_after
import constants
from tests.factories import make_model
from tests.olah_fixture import publish
from validator.adapters import hub
from validator.core.competitions import Competition
from validator.adapters.hub import download as hub_download
from validator.adapters.hub import ensure_model
from validator.adapters.hub.checks import _refuse_lfs_pointers
from validator.adapters.hub.http import _classify
from validator.adapters.hub.publish import _git
from validator.core.identity import ModelId, secure_hash

HOTKEY = "5HostileHotkeyAAA"
UNUSED_HASH = "A" * 43 + "="  # the repo is refused before any hash is checked


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("hostile") / "good")


@pytest.fixture(scope="module")
def comp() -> Competition:
    return Competition(id="c00", reward=1.0, model_types=["LlamaForCausalLM"], parameters=10**9,
                       model_size=10**9, dataset="x")


def tensor_names(model_dir: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", "pt") as st:
        return list(st.keys())


def committed(mirror: Path, name: str, model_dir: Path) -> ModelId:
    sha = publish(mirror, "alice", name, model_dir)
    return ModelId("alice", name, sha, secure_hash(hub.model_dir_hash(model_dir), HOTKEY), "c00")


def retree(mirror: Path, name: str, model_dir: Path, edit) -> str:
    """Publish `model_dir`, then commit a tree git's index would never write: `edit(repo,
    ls-tree lines)` returns the new top-level lines for git mktree. Returns the commit."""
    publish(mirror, "alice", name, model_dir)
    repo = mirror / "models" / "alice" / name
    lines = edit(repo, _git(["ls-tree", "HEAD"], repo).splitlines())
    tree = _git(["mktree"], repo, "\n".join(lines) + "\n")
    commit = _git(["commit-tree", tree, "-p", "HEAD", "-m", "crafted"], repo)
    _git(["update-ref", "refs/heads/main", commit], repo)
    return commit


def blob(repo: Path, data: str) -> str:
    return _git(["hash-object", "-w", "--stdin"], repo, data)


def refused(mid: ModelId, comp, store: Path, endpoint: str,
            download: hub.Downloader = hub.download_files) -> FetchError:
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, comp, store, endpoint=endpoint, progress=False, download=download)
    left = [p for p in store.rglob("*") if p.name.endswith(".verified")
            or p.name.startswith(constants.MODEL_STORE_TMP_PREFIX) or p.parent.name == "snapshots" and p.is_dir()]
    assert left == [], "a refused model leaves nothing behind"
    return err.value


def assert_permanent(err: FetchError, reason: FailureReason = FailureReason.bad_repo) -> None:
    assert err.reason is reason, err
    assert not err.transient
    assert retry_after(err.reason, 1) is None


# --- 1. content problems are the repo's, permanent -------------------------------------------


def test_glob_characters_in_a_shard_name_are_fetched_by_exact_name(src, comp, olah_mirror, olah_hub, tmp_path):
    d = shutil.copytree(src, tmp_path / "glob")
    shard = "model[1]*?.safetensors"
    keys = tensor_names(d)
    (d / "model.safetensors").rename(d / shard)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {k: shard for k in keys}}))
    mid = committed(olah_mirror, "globname", d)
    path = ensure_model(mid, HOTKEY, comp, tmp_path / "store", endpoint=olah_hub.endpoint, progress=False).path
    assert (path / shard).read_bytes() == (d / shard).read_bytes()


def test_overlong_file_name_is_bad_repo_before_download(src, comp, olah_mirror, olah_hub, tmp_path, downloads):
    long_name = "m" * 300 + ".safetensors"  # one component over the filesystem's 255 bytes
    keys = tensor_names(src)

    def edit(repo, lines):
        out = [line.replace("\tmodel.safetensors", f"\t{long_name}") for line in lines]
        index = json.dumps({"metadata": {}, "weight_map": {k: long_name for k in keys}})
        return out + [f"100644 blob {blob(repo, index)}\tmodel.safetensors.index.json"]

    sha = retree(olah_mirror, "longname", src, edit)
    err = refused(ModelId("alice", "longname", sha, UNUSED_HASH, "c00"), comp, tmp_path, olah_hub.endpoint,
                  download=downloads)
    assert_permanent(err)
    assert "HUB_MAX_NAME_BYTES" in err.detail
    assert downloads == []


def test_overlong_name_the_validator_ignores_is_no_reason_to_refuse(src, comp, olah_mirror, olah_hub, tmp_path):
    sha = retree(olah_mirror, "longreadme", src,
                 lambda repo, lines: lines + [f"100644 blob {blob(repo, 'notes')}\t{'r' * 300}.md"])
    mid = ModelId("alice", "longreadme", sha, secure_hash(hub.model_dir_hash(src), HOTKEY), "c00")
    path = ensure_model(mid, HOTKEY, comp, tmp_path, endpoint=olah_hub.endpoint, progress=False).path
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]


@pytest.mark.parametrize("entry", ["..", ".", "sub/../config.json", "/etc/passwd", "a//b", "a\\b", "x\ny"])
def test_tree_entries_that_are_not_plain_paths_are_bad_repo(entry, src, comp, olah_mirror, olah_hub, tmp_path,
                                                           monkeypatch, downloads):
    # olah answers 500 for a git tree holding "." or ".." (it cannot serve one), so the entry
    # is added to olah's real listing of a good repo, as a mirror that served it would list it.
    from huggingface_hub.hf_api import RepoFile

    mid = committed(olah_mirror, "plainpaths", src)
    real = hub_download._listing
    monkeypatch.setattr(hub_download, "_listing", lambda *a: real(*a) + [RepoFile(path=entry, size=1, oid="0" * 40)])
    err = refused(mid, comp, tmp_path, olah_hub.endpoint, download=downloads)
    assert_permanent(err)
    assert "not a plain relative path" in err.detail
    assert downloads == []


def test_lfs_pointer_without_its_object_is_bad_repo(src, comp, olah_mirror, olah_hub, tmp_path, fast_retries):
    d = shutil.copytree(src, tmp_path / "lfs")
    (d / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64
                                         + "\nsize 12345\n")
    sha = publish(olah_mirror, "alice", "lfspointer", d)
    err = refused(ModelId("alice", "lfspointer", sha, UNUSED_HASH, "c00"), comp, tmp_path / "store",
                  olah_hub.endpoint)
    assert_permanent(err)
    assert "git-LFS" in err.detail and "model.safetensors" in err.detail


def test_lfs_pointer_served_as_the_file_is_bad_repo(src, tmp_path):
    # olah always resolves a pointer blob as LFS (and fails), so the case of a hub serving the
    # pointer text itself is checked on the downloaded dir, as _fetch_files does.
    d = shutil.copytree(src, tmp_path / "served")
    (d / "model.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:"
                                          + b"b" * 64 + b"\nsize 99\n")
    with pytest.raises(FetchError) as err:
        _refuse_lfs_pointers(d, ["config.json", "model.safetensors"], "alice/x@0")
    assert_permanent(err.value)
    _refuse_lfs_pointers(src, ["config.json", "model.safetensors"], "alice/x@0")  # real files pass


def test_commit_that_vanished_during_the_download_is_not_found(src, comp, olah_mirror, olah_hub, tmp_path,
                                                               fast_retries):
    mid = committed(olah_mirror, "vanishing", src)
    repo = olah_mirror / "models" / "alice" / "vanishing"

    def force_push_then_download(*args, **kwargs):  # the miner rewrites history after the listing
        _git(["commit", "-q", "--amend", "-m", "rewritten"], repo)
        _git(["reflog", "expire", "--expire=now", "--all"], repo)
        _git(["gc", "-q", "--prune=now"], repo)
        return hub.download_files(*args, **kwargs)

    err = refused(mid, comp, tmp_path, olah_hub.endpoint, force_push_then_download)
    assert err.reason is FailureReason.not_found, err  # not_found: a few retries, then permanent
    assert retry_after(err.reason, NOT_FOUND_RETRIES) is None


def test_repo_id_the_hub_client_rejects_is_bad_repo(src, comp, olah_hub, tmp_path):
    mid = ModelId("alice", "model.git", "0" * 40, UNUSED_HASH, "c00")  # a valid commitment; the client refuses .git
    err = refused(mid, comp, tmp_path, olah_hub.endpoint)
    assert_permanent(err)
    assert "refused by the hub client" in err.detail


def test_classifier_keeps_hub_failures_as_network():
    import httpx

    assert _classify(httpx.ConnectError("refused"), "x").reason is FailureReason.network
    assert _classify(TimeoutError("slow"), "x").reason is FailureReason.network
    too_long = OSError(36, "File name too long")
    assert _classify(too_long, "x").reason is FailureReason.bad_repo


# --- 2. budget and file count -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(src, tmp_path_factory) -> Path:
    """The tiny model with one shard per tensor (21 files to download)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    d = shutil.copytree(src, tmp_path_factory.mktemp("sharded") / "m")
    weight_map = {}
    with safe_open(d / "model.safetensors", "pt") as st:
        for i, key in enumerate(st.keys()):
            shard = f"model-{i:05d}.safetensors"
            save_file({key: st.get_tensor(key)}, str(d / shard), metadata={"format": "pt"})
            weight_map[key] = shard
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


def test_deadline_stops_the_download_between_files(sharded, comp, olah_mirror, olah_hub, tmp_path, monkeypatch):
    import huggingface_hub

    mid = committed(olah_mirror, "manyshards", sharded)
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    deadline = time.monotonic() + 8
    started: list[str] = []
    real = huggingface_hub.hf_hub_download

    def slow_after_two(repo_id, filename, **kwargs):  # the third shard on finishes past the deadline
        if filename in shards:
            started.append(filename)
            if len(started) > 2:
                time.sleep(max(0.0, deadline - time.monotonic()) + 0.05)
        return real(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", slow_after_two)
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, comp, tmp_path, endpoint=olah_hub.endpoint, progress=False, deadline=deadline)
    assert err.value.reason is FailureReason.network and err.value.transient
    assert hub.BUDGET_USED_UP in err.value.detail
    assert 0 < len(started) < len(shards), "stopped inside the download, before its last file"
    assert not hub.snapshot_path(tmp_path, HOTKEY, mid).exists()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", real)
    path = ensure_model(mid, HOTKEY, comp, tmp_path, endpoint=olah_hub.endpoint, progress=False).path  # next step
    assert sorted(p.name for p in path.glob("model-*")) == shards


def test_repo_over_the_file_cap_is_refused_before_any_download(src, comp, olah_mirror, olah_hub, tmp_path,
                                                              downloads):
    d = shutil.copytree(src, tmp_path / "many")
    (d / "extra").mkdir()
    n_extra = constants.HUB_MAX_REPO_FILES  # with the model's own files: over the cap
    for i in range(n_extra):
        (d / "extra" / f"f{i:05d}.txt").write_text("x")
    sha = publish(olah_mirror, "alice", "manyfiles", d)
    err = refused(ModelId("alice", "manyfiles", sha, UNUSED_HASH, "c00"), comp, tmp_path / "store",
                  olah_hub.endpoint, download=downloads)
    assert_permanent(err)
    assert f"{n_extra + 3} files" in err.detail and "HUB_MAX_REPO_FILES" in err.detail
    assert downloads == []
