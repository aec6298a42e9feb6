"""validator.adapters.hub against a real olah server on loopback serving git mirrors made here."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import filelock
import pytest

from validator.core.failures import FailureReason, FetchError, NOT_FOUND_RETRIES, TRANSIENT_REASONS, retry_after
import constants
from tests.factories import make_model, make_tokenizer
from tests.olah_fixture import publish
from validator.adapters import hub
from validator.core.competitions import Competition
from validator.adapters.hub import ModelStore, ensure_model, snapshot_path
from validator.core.identity import ModelId, dir_hash, files_hash, secure_hash
from validator.adapters.hub.localhub import LocalHub
from validator.adapters.hub.publish import _git

HOTKEY = "5GoodHotkeyAAAA"
# What a live validator downloads from `src` (written out here, not derived from the rule):
# the tokenizer is declared PreTrainedTokenizerFast, whose files 4.44 fetches are
# tokenizer.json plus the common ones (tokenizer_config.json here; special_tokens_map.json
# and added_tokens.json are absent); README.md and .gitattributes are not downloaded.
DOWNLOADED = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def n_params_in(safetensors_dir: Path) -> int:
    """Parameter count read from the weights themselves (independent of the config path)."""
    from safetensors import safe_open

    total = 0
    for f in safetensors_dir.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                total += math.prod(st.get_slice(k).get_shape())
    return total


def as_a_hub_repo(model_dir: Path) -> Path:
    """A dir shaped as on the hub: the tokenizer class transformers 4.44 saves
    (PreTrainedTokenizerFast; 5.x writes TokenizersBackend, which 4.44 cannot load), plus the
    README.md and .gitattributes every hub repo has."""
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (model_dir / "README.md").write_text("---\nlibrary_name: transformers\n---\n# a model\n")
    (model_dir / ".gitattributes").write_bytes(GITATTRIBUTES)
    return model_dir


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    make_tokenizer(root / "tok")
    return as_a_hub_repo(make_model(root / "good", tokenizer_dir=root / "tok"))


@pytest.fixture(scope="module")
def comp(src) -> Competition:
    size = sum(f.stat().st_size for f in src.iterdir())
    return Competition(id="c00", reward=1.0, model_types=["LlamaForCausalLM"], parameters=n_params_in(src),
                       model_size=size + 1000, dataset="local")


def variant(src: Path, dst: Path, config_edit=None, extra: dict[str, bytes] | None = None,
            drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    if config_edit:
        cfg = json.loads((dst / "config.json").read_text())
        config_edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    for name, data in (extra or {}).items():
        (dst / name).write_bytes(data)
    return dst


def commit_of(mirror: Path, name: str, model_dir: Path, hotkey: str = HOTKEY, ns: str = "alice",
              files: list[str] = DOWNLOADED) -> ModelId:
    sha = publish(mirror, ns, name, model_dir)
    # The committed hash is computed from the source dir: the published files a validator downloads.
    return ModelId(ns, name, sha, secure_hash(files_hash(model_dir, files), hotkey), "c00")


def assert_clean(model_dir: Path) -> None:
    """Nothing half-written: no snapshot, no marker, no temp download."""
    left = [p for p in model_dir.rglob("*")
            if p.name.endswith(".verified") or p.name.startswith(constants.MODEL_STORE_TMP_PREFIX)
            or p.parent.name == "snapshots" and p.is_dir()]
    assert left == []


def test_good_model_downloads_and_verifies(src, comp, olah_mirror, olah_hub, tmp_path, downloads):
    mid = commit_of(olah_mirror, "good", src)
    path, content_hash = ensure_model(mid, HOTKEY, comp, tmp_path, endpoint=olah_hub.endpoint, progress=False,
                                      download=downloads)
    assert content_hash == files_hash(src, DOWNLOADED)
    assert path == snapshot_path(tmp_path, HOTKEY, mid)
    assert path == tmp_path / "models" / HOTKEY / "models--alice--good" / "snapshots" / mid.commit
    # real files, byte for byte the published ones; only what a live validator downloads
    assert sorted(p.name for p in path.iterdir()) == DOWNLOADED
    for name in DOWNLOADED:
        assert not (path / name).is_symlink()
        assert (path / name).read_bytes() == (src / name).read_bytes()
    assert secure_hash(dir_hash(path), HOTKEY) == mid.hash
    assert hub.verified_dir_hash(path) == files_hash(src, DOWNLOADED)
    marker = hub.read_marker(path)
    assert marker["repo_size"] == sum(f.stat().st_size for f in src.iterdir())  # .gitattributes, README included
    assert marker["class"] == "<class 'transformers_llama.modeling_llama.SlicedLlamaForCausalLM'>"
    assert marker["files"] == DOWNLOADED
    assert downloads == ["alice/good"]
    assert_no_temp = [p for p in path.parent.parent.iterdir() if p.name.startswith(constants.MODEL_STORE_TMP_PREFIX)]
    assert assert_no_temp == []


def test_hf_endpoint_env_is_honoured(src, comp, olah_mirror, hf_endpoint, tmp_path):
    mid = commit_of(olah_mirror, "viaenv", src)
    assert hub.resolve_endpoint() == hf_endpoint
    path = ensure_model(mid, HOTKEY, comp, tmp_path, progress=False).path
    assert secure_hash(dir_hash(path), HOTKEY) == mid.hash


def test_wrong_hash_is_refused_and_removed(src, comp, olah_mirror, olah_hub, tmp_path):
    mid = commit_of(olah_mirror, "wronghash", src, hotkey="5SomeoneElse")  # hash bound to another hotkey
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, comp, tmp_path, endpoint=olah_hub.endpoint, progress=False)
    assert err.value.reason is FailureReason.hash_mismatch
    assert mid.hash in err.value.detail
    assert_clean(tmp_path)


def index_for(model: Path, shard: str) -> bytes:
    """A safetensors index mapping every tensor of `model` to `shard`."""
    from safetensors import safe_open

    with safe_open(model / "model.safetensors", "pt") as st:
        keys = list(st.keys())
    return json.dumps({"metadata": {"total_size": 1}, "weight_map": {k: shard for k in keys}}).encode()


@pytest.mark.parametrize("case, reason", [
    ("pickle_only", FailureReason.unsafe_format),
    ("index_elsewhere", FailureReason.unsafe_format),
    ("index_absolute", FailureReason.unsafe_format),
    ("index_missing_shard", FailureReason.unsafe_format),
    ("ten_x_parameters", FailureReason.constraint),
    ("other_model_type", FailureReason.constraint),
    ("unknown_model_type", FailureReason.constraint),
    ("no_model_type", FailureReason.constraint),
])
def test_bad_repos_refused_before_weights(case, reason, src, comp, olah_mirror, olah_hub, tmp_path,
                                          downloads):
    def ten_x(cfg):
        cfg["num_hidden_layers"] = 40

    def as_shard(dst_name: str) -> dict:  # weights moved into a shard named by an index
        return dict(drop=("model.safetensors",),
                    extra={"model.safetensors.index.json": index_for(src, dst_name),
                           "model-00001-of-00001.safetensors": (src / "model.safetensors").read_bytes()})

    builders = {
        "pickle_only": dict(drop=("model.safetensors",), extra={"pytorch_model.bin": b"\x80\x04fake pickle"}),
        # a shard of another repo's snapshot, outside this one, or not in the repo at all
        "index_elsewhere": as_shard("../../models--bob--other/snapshots/" + "0" * 40 + "/model.safetensors"),
        "index_absolute": as_shard("/etc/passwd"),
        "index_missing_shard": as_shard("model-00002-of-00002.safetensors"),
        "ten_x_parameters": dict(config_edit=ten_x),
        # the class comes from model_type (gpt2 -> GPT2LMHeadModel), whatever `architectures` says
        "other_model_type": dict(config_edit=lambda c: c.update(model_type="gpt2")),
        "unknown_model_type": dict(config_edit=lambda c: c.update(model_type="my_secret_arch")),
        "no_model_type": dict(config_edit=lambda c: c.pop("model_type")),
    }
    model = variant(src, tmp_path / "src", **builders[case])
    if case == "ten_x_parameters":  # the config, built on the meta device, declares >= 10x the limit
        arch, n = hub.count_parameters(json.loads((model / "config.json").read_text()))
        assert arch == "LlamaForCausalLM" and n >= 10 * comp.parameters
    name = case.replace("_", "-")
    mid = commit_of(olah_mirror, name, model, files=["config.json"])  # refused before any hash
    roomy = comp.model_copy(update={"model_size": comp.model_size + 10_000})  # the index adds bytes
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, roomy, tmp_path / "store", endpoint=olah_hub.endpoint, progress=False,
                     download=downloads)
    assert err.value.reason is reason, err.value.detail
    assert downloads == []  # refused before any weight byte was fetched
    assert_clean(tmp_path / "store")
    with pytest.raises(FetchError) as local:  # a miner's check of the dir says the same
        hub.check_model_constraints(model, comp.model_copy(update={"model_size": 10**9}))
    assert local.value.reason is reason


@pytest.mark.parametrize("case", ["pickle_beside_safetensors", "auto_map_and_code", "other_architectures",
                                  "extras_in_folders"])
def test_files_the_live_validator_ignores_are_no_reason_to_refuse(case, src, comp, olah_mirror, olah_hub,
                                                                   tmp_path):
    """As live: pickles beside safetensors, auto_map with its code, `architectures` and
    anything else a validator does not download are neither fetched, hashed nor refused."""
    builders = {
        "pickle_beside_safetensors": dict(extra={"pytorch_model.bin": b"\x80\x04fake pickle",
                                                 "training_args.bin": b"\x80\x04fake pickle"}),
        "auto_map_and_code": dict(
            config_edit=lambda c: c.update(auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"}),
            extra={"modeling_x.py": b"import os\nos.system('echo pwned')\n"}),
        "other_architectures": dict(config_edit=lambda c: c.update(architectures=["GPT2LMHeadModel"])),
        "extras_in_folders": dict(extra={"original/params.json": b"{}", "optimizer.pt": b"\x80\x04",
                                         "train.py": b"print('x')\n"}),
    }
    spec = builders[case]
    extra = spec.pop("extra", {})
    model = variant(src, tmp_path / "src", **spec)
    for rel, data in extra.items():
        (model / rel).parent.mkdir(parents=True, exist_ok=True)
        (model / rel).write_bytes(data)
    big = comp.model_copy(update={"model_size": comp.model_size + 10_000})
    mid = commit_of(olah_mirror, case.replace("_", "-"), model)
    path = ensure_model(mid, HOTKEY, big, tmp_path / "store", endpoint=olah_hub.endpoint, progress=False).path
    assert sorted(p.name for p in path.iterdir()) == DOWNLOADED
    hub.check_model_constraints(model, big)
    assert hub.model_dir_hash(model) == files_hash(model, DOWNLOADED) == hub.verified_dir_hash(path)


def test_oversized_repo_refused_before_download(src, comp, olah_mirror, olah_hub, tmp_path, downloads):
    mid = commit_of(olah_mirror, "big", src)
    small = comp.model_copy(update={"model_size": (src / "model.safetensors").stat().st_size})
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, small, tmp_path, endpoint=olah_hub.endpoint, progress=False, download=downloads)
    assert err.value.reason is FailureReason.too_large
    total = sum(f.stat().st_size for f in src.iterdir())  # sizes came through olah (HEAD / tree)
    assert str(total) in err.value.detail
    assert downloads == []
    assert_clean(tmp_path)


def test_not_enough_disk_is_disk_full(src, comp, olah_mirror, olah_hub, tmp_path, monkeypatch, downloads):
    mid = commit_of(olah_mirror, "nodisk", src)
    monkeypatch.setattr(constants, "DISK_MARGIN_BYTES", 1 << 62)
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, comp, tmp_path, endpoint=olah_hub.endpoint, progress=False, download=downloads)
    assert err.value.reason is FailureReason.disk_full and err.value.transient
    assert downloads == []
    assert_clean(tmp_path)


def test_symlink_escaping_the_snapshot_is_refused(src, comp, olah_mirror, olah_hub, tmp_path):
    mid = commit_of(olah_mirror, "symlink", src)
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any model")

    def planting(*args, **kwargs):  # a hub (or cache) handing back a link out of the download
        snap = hub.download_files(*args, **kwargs)
        os.symlink(secret, snap / "extra.json")
        return snap

    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, comp, tmp_path / "store", endpoint=olah_hub.endpoint, progress=False,
                     download=planting)
    assert err.value.reason is FailureReason.unsafe_format
    assert "extra.json" in err.value.detail
    assert secret.read_text() == "not part of any model"
    assert_clean(tmp_path / "store")


def test_git_symlink_is_served_as_text_not_followed(src, comp, olah_mirror, olah_hub, tmp_path):
    """A symlink committed to the repo reaches the client as a file holding the link text."""
    sha = publish(olah_mirror, "alice", "gitlink", src)
    repo = olah_mirror / "models" / "alice" / "gitlink"
    (repo / "tokenizer.json").unlink()
    os.symlink("../../../../../../etc/hostname", repo / "tokenizer.json")  # a real git link, downloaded
    _git(["add", "-A"], repo)
    _git(["commit", "-q", "-m", "link"], repo)
    sha = _git(["rev-parse", "HEAD"], repo)
    link_text = b"../../../../../../etc/hostname"
    expected = variant(src, tmp_path / "expected", extra={"tokenizer.json": link_text})
    mid = ModelId("alice", "gitlink", sha, secure_hash(files_hash(expected, DOWNLOADED), HOTKEY), "c00")
    path = ensure_model(mid, HOTKEY, comp, tmp_path / "store", endpoint=olah_hub.endpoint, progress=False).path
    assert (path / "tokenizer.json").read_bytes() == link_text and not (path / "tokenizer.json").is_symlink()


@pytest.mark.parametrize("what", ["commit", "repo"])
def test_missing_commit_or_repo_is_not_found(what, src, comp, olah_mirror, olah_hub, tmp_path):
    good = commit_of(olah_mirror, "exists", src)
    if what == "commit":
        mid = ModelId("alice", "exists", "0123456789abcdef" * 2 + "01234567", good.hash, "c00")
    else:
        mid = ModelId("alice", "no-such-repo", good.commit, good.hash, "c00")
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, comp, tmp_path, endpoint=olah_hub.endpoint, progress=False)
    assert err.value.reason is FailureReason.not_found
    assert_clean(tmp_path)


def test_present_model_needs_no_network_and_stopped_download_recovers(src, comp, olah_mirror, tmp_path,
                                                                        monkeypatch, fast_retries):
    import huggingface_hub as sd

    first = commit_of(olah_mirror, "offline-a", src)
    second = commit_of(olah_mirror, "offline-b", variant(src, tmp_path / "b", extra={"README.md": b"b"}))
    server = LocalHub(olah_mirror).start()
    try:
        path = ensure_model(first, HOTKEY, comp, tmp_path / "store", endpoint=server.endpoint, progress=False).path
        # the server goes away in the middle of the second model's download
        real = sd.hf_hub_download

        def dying(repo_id, filename, **kwargs):
            if filename == "model.safetensors":
                server.kill()
            return real(repo_id, filename, **kwargs)

        monkeypatch.setattr(sd, "hf_hub_download", dying)
        with pytest.raises(FetchError) as err:
            ensure_model(second, HOTKEY, comp, tmp_path / "store", endpoint=server.endpoint, progress=False)
        assert err.value.reason is FailureReason.network and err.value.transient
        assert not snapshot_path(tmp_path / "store", HOTKEY, second).exists()
        assert not list(snapshot_path(tmp_path / "store", HOTKEY, second).parent.parent.glob(".tmp-*"))
        monkeypatch.setattr(sd, "hf_hub_download", real)
        # present and verified: served with the server down
        assert ensure_model(first, HOTKEY, comp, tmp_path / "store", endpoint=server.endpoint).path == path
    finally:
        server.stop()
    with LocalHub(olah_mirror) as again:  # a later ensure, with the hub back, succeeds
        path2 = ensure_model(second, HOTKEY, comp, tmp_path / "store", endpoint=again.endpoint, progress=False).path
    assert secure_hash(dir_hash(path2), HOTKEY) == second.hash


def test_snapshot_without_marker_is_rechecked_locally(src, comp, olah_mirror, olah_hub, tmp_path, downloads):
    mid = commit_of(olah_mirror, "remark", src)
    path = ensure_model(mid, HOTKEY, comp, tmp_path, endpoint=olah_hub.endpoint, progress=False,
                        download=downloads).path
    (path.parent / f"{mid.commit}.verified").unlink()  # e.g. a crash between rename and marker
    assert ensure_model(mid, HOTKEY, comp, tmp_path, endpoint="http://127.0.0.1:9", progress=False,
                        download=downloads).path == path
    (path / "model.safetensors").write_bytes(b"tampered")
    (path.parent / f"{mid.commit}.verified").unlink()
    assert ensure_model(mid, HOTKEY, comp, tmp_path, endpoint=olah_hub.endpoint, progress=False,
                        download=downloads).path == path
    assert downloads == ["alice/remark", "alice/remark"]  # tampered copy replaced by a fresh download
    assert secure_hash(dir_hash(path), HOTKEY) == mid.hash


def test_limits_tightened_after_verification_apply_without_network(src, comp, olah_mirror, olah_hub, tmp_path):
    mid = commit_of(olah_mirror, "tighten", src)
    ensure_model(mid, HOTKEY, comp, tmp_path, endpoint=olah_hub.endpoint, progress=False)
    offline = "http://127.0.0.1:9"
    tighter = comp.model_copy(update={"parameters": comp.parameters - 1})
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, tighter, tmp_path, endpoint=offline, progress=False)
    assert err.value.reason is FailureReason.constraint and "parameters:" in err.value.detail
    # the type rule on the recorded class: a substring of SlicedLlamaForCausalLM passes, others not
    assert ensure_model(mid, HOTKEY, comp.model_copy(update={"model_types": ["SlicedLlama"]}), tmp_path,
                        endpoint=offline, progress=False)
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, comp.model_copy(update={"model_types": ["Phi3ForCausalLM"]}), tmp_path,
                     endpoint=offline, progress=False)
    assert err.value.reason is FailureReason.constraint and "SlicedLlamaForCausalLM" in err.value.detail
    # the recorded size is the whole repo's (README.md and .gitattributes count, as live)
    repo_size = sum(f.stat().st_size for f in src.iterdir())
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, comp.model_copy(update={"model_size": repo_size - 1}), tmp_path,
                     endpoint=offline, progress=False)
    assert err.value.reason is FailureReason.too_large and str(repo_size) in err.value.detail


def test_concurrent_ensures_download_once(src, comp, olah_mirror, olah_hub, tmp_path, downloads):
    mid = commit_of(olah_mirror, "concurrent", src)
    results, errors = [], []

    def run():
        try:
            results.append(ensure_model(mid, HOTKEY, comp, tmp_path, endpoint=olah_hub.endpoint, progress=False,
                                        download=downloads))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1 and len(results) == 3
    assert downloads == ["alice/concurrent"]


def test_busy_lock_times_out_with_network_reason(src, comp, olah_mirror, olah_hub, tmp_path):
    mid = commit_of(olah_mirror, "busy", src)
    snap = snapshot_path(tmp_path, HOTKEY, mid)
    snap.parent.mkdir(parents=True)
    with filelock.FileLock(str(snap.parent / f"{mid.commit}.lock")):  # someone else downloading
        done = []
        t = threading.Thread(target=lambda: done.append(_capture(lambda: ensure_model(
            mid, HOTKEY, comp, tmp_path, endpoint=olah_hub.endpoint, progress=False, lock_timeout_s=0.2))))
        t.start()
        t.join()
    err = done[0]
    assert isinstance(err, FetchError) and err.reason is FailureReason.network and "busy" in err.detail
    assert_clean(tmp_path)


def _capture(fn):
    try:
        return fn()
    except Exception as exc:  # returned for the assertion
        return exc


def test_cleanup_keeps_in_use_and_removes_least_recently_used(src, comp, olah_mirror, olah_hub, tmp_path):
    store_dir = tmp_path / "store"
    paths = {}
    for i, key in enumerate(["5KeyOld", "5KeyMid", "5KeyNew", "5KeyInUse"]):
        mid = commit_of(olah_mirror, "lru", src, hotkey=key)
        paths[key] = ensure_model(mid, key, comp, store_dir, endpoint=olah_hub.endpoint, progress=False).path
    now = time.time()
    ages = {"5KeyInUse": 10_000, "5KeyOld": 9_000, "5KeyMid": 8_000, "5KeyNew": 10}  # seconds since last use
    for key, age in ages.items():
        os.utime(paths[key].parent / f"{paths[key].name}.verified", (now - age, now - age))
    size = sum(f.stat().st_size for f in paths["5KeyOld"].iterdir())
    # room for two snapshots: the one in use (oldest of all) and the newest stay
    store = ModelStore(store_dir, budget_gb=2.5 * size / hub.GIB, grace_s=60)
    removed = store.cleanup({paths["5KeyInUse"]}, now=now)
    assert removed == [paths["5KeyOld"], paths["5KeyMid"]]
    assert not paths["5KeyOld"].exists() and not paths["5KeyMid"].exists()
    assert paths["5KeyInUse"].is_dir() and paths["5KeyNew"].is_dir()
    assert not (paths["5KeyOld"].parent / f"{paths['5KeyOld'].name}.verified").exists()
    # a tiny budget still never removes what is in use or younger than the grace period
    assert ModelStore(store_dir, budget_gb=1e-9, grace_s=60).cleanup({paths["5KeyInUse"]}, now=now) == []
    # the kept ones are still served without a download
    mid_new = ModelId("alice", "lru", paths["5KeyNew"].name, secure_hash(files_hash(src, DOWNLOADED), "5KeyNew"),
                      "c00")
    assert ensure_model(mid_new, "5KeyNew", comp, store_dir, endpoint="http://127.0.0.1:9").path == paths["5KeyNew"]


def test_cleanup_free_space_mode_and_stale_temp(tmp_path):
    stale = tmp_path / "models" / "5K" / "models--a--b" / f"{constants.MODEL_STORE_TMP_PREFIX}{'a' * 40}-1-x"
    stale.mkdir(parents=True)
    (stale / "part").write_bytes(b"x" * 10)
    old = time.time() - 10_000
    os.utime(stale, (old, old))
    # -N: keep N GiB free; asking for less than is free removes nothing but stale downloads
    assert ModelStore(tmp_path, budget_gb=-1e-6, grace_s=60).cleanup(set()) == []
    assert not stale.exists()


def test_retry_after_backoff():
    b = constants.DOWNLOAD_RETRY_BACKOFF_S
    assert [retry_after("network", n) for n in range(1, len(b) + 3)] == [*b, b[-1], b[-1]]
    assert retry_after(FailureReason.disk_full, 1) == b[0]
    for reason in ("too_large", "unsafe_format", "remote_code", "hash_mismatch", "constraint"):
        assert retry_after(reason, 1) is None
    # a repo is private until its commitment lands: a few tries, then permanent
    assert retry_after("not_found", 1) == b[0]
    assert retry_after("not_found", NOT_FOUND_RETRIES) is None
    assert retry_after("copy", 1) is None
    assert TRANSIENT_REASONS == {FailureReason.network, FailureReason.disk_full}


def test_check_model_constraints_on_a_local_dir(src, comp, tmp_path):
    hub.check_model_constraints(src, comp)
    with pytest.raises(FetchError) as err:
        hub.check_model_constraints(src, comp.model_copy(update={"parameters": comp.parameters - 1}))
    assert err.value.reason is FailureReason.constraint and str(comp.parameters) in err.value.detail
    with pytest.raises(FetchError) as err:
        hub.check_model_constraints(src, comp.model_copy(update={"model_size": 100}))
    assert err.value.reason is FailureReason.too_large
    linked = variant(src, tmp_path / "linked")
    os.symlink(src / "config.json", linked / "other.json")
    with pytest.raises(FetchError) as err:
        hub.check_model_constraints(linked, comp)
    assert err.value.reason is FailureReason.unsafe_format
    # a tokenizer auto_map beside a built-in tokenizer class: 4.44 uses the built-in one, no refusal
    tok_code = variant(src, tmp_path / "tokcode")
    cfg = json.loads((tok_code / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["tok.T", None]}
    (tok_code / "tokenizer_config.json").write_text(json.dumps(cfg))
    hub.check_model_constraints(tok_code, comp.model_copy(update={"model_size": 10**9}))
    # a hidden folder (a git checkout, a cache) is not published, so it does not count
    hidden = variant(src, tmp_path / "hidden")
    (hidden / ".cache").mkdir()
    (hidden / ".cache" / "blob").write_bytes(b"x" * 100_000)
    hub.check_model_constraints(hidden, comp)
    deep = variant(src, tmp_path / "deep")
    (deep / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # json.loads recurses per level
    with pytest.raises(FetchError) as err:
        hub.check_model_constraints(deep, comp.model_copy(update={"model_size": 10**9}))
    assert err.value.reason is FailureReason.constraint and "config.json: not readable JSON" in err.value.detail


def test_count_parameters_matches_the_weights(src):
    arch, n = hub.count_parameters(json.loads((src / "config.json").read_text()))
    assert arch == "LlamaForCausalLM" and n == n_params_in(src)



# --- config.json counts: bounded before the model is built --------------------------------


def config_dict(arch: str = "llama", **kw) -> dict:
    """A config.json as a miner's repo holds it (tests.factories.tiny_config, as a dict)."""
    from tests.factories import tiny_config

    cfg = tiny_config(arch, **kw).to_dict()
    cfg["architectures"] = [{"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM",
                             "gpt2": "GPT2LMHeadModel"}[arch]]
    return cfg


def any_comp(*archs: str) -> Competition:
    return Competition(id="c00", reward=1.0, model_types=list(archs or ["LlamaForCausalLM"]),
                       parameters=10**12, model_size=10**13, dataset="local")


@pytest.fixture
def no_build(monkeypatch):
    """Fails the test if a model is built: a refused config must cost no build."""
    from transformers import AutoModelForCausalLM

    def refuse(*_a, **_k):
        raise AssertionError("the model was built")

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", refuse)


@pytest.mark.parametrize("arch, edit, named", [
    ("llama", {"num_hidden_layers": 10_000_000}, "num_hidden_layers = 10000000 exceeds CONFIG_MAX_LAYERS = 1024"),
    ("gpt2", {"n_layer": 10_000_000}, "n_layer = 10000000 exceeds CONFIG_MAX_LAYERS"),
    ("llama", {"text_config": {"num_hidden_layers": 10_000_000}},
     "text_config.num_hidden_layers = 10000000 exceeds CONFIG_MAX_LAYERS"),
    ("mixtral", {"num_local_experts": 1_000_000}, "num_local_experts = 1000000 exceeds CONFIG_MAX_EXPERTS = 1024"),
    ("mixtral", {"num_hidden_layers": 512, "num_local_experts": 512},
     "num_hidden_layers = 512 x num_local_experts = 512 = 262144 exceeds CONFIG_MAX_MODULE_BLOCKS = 65536"),
    ("llama", {"num_hidden_layers": True}, "num_hidden_layers = True is a bool"),
    ("llama", {"num_hidden_layers": -1}, "num_hidden_layers = -1 is negative"),
    ("llama", {"num_hidden_layers": "32"}, "num_hidden_layers = '32' is not an integer"),
    ("llama", {"num_hidden_layers": 1e7}, "num_hidden_layers = 10000000.0 is not an integer"),
    ("mixtral", {"num_local_experts": False}, "num_local_experts = False is a bool"),
])
def test_hostile_counts_refused_before_building(arch, edit, named, no_build):
    cfg = {**config_dict(arch), **edit}
    comp = any_comp(*cfg["architectures"])
    for call in (lambda: hub.check_config(cfg, comp, "alice/x@abc/config.json"),
                 lambda: hub.count_parameters(cfg, "alice/x@abc/config.json")):
        with pytest.raises(FetchError) as err:
            call()
        assert err.value.reason is FailureReason.constraint
        assert err.value.detail.startswith("alice/x@abc/config.json: ") and named in err.value.detail


def test_real_model_counts_pass_the_precheck():
    real = {
        "llama3_405b": {"num_hidden_layers": 126, "num_key_value_heads": 8},
        "deepseek_v3": {"num_hidden_layers": 61, "n_routed_experts": 256, "n_shared_experts": 1,
                        "num_experts_per_tok": 8, "first_k_dense_replace": 3, "num_nextn_predict_layers": 1},
        "kimi_k2": {"num_hidden_layers": 61, "n_routed_experts": 384, "n_shared_experts": 1},
        "qwen3_moe": {"num_hidden_layers": 94, "num_experts": 128, "mlp_only_layers": [], "max_window_layers": 94},
        # indices, flags and widths whose names look like counts
        "vlm": {"text_config": {"num_hidden_layers": 32}, "vision_config": {"num_hidden_layers": 24},
                "vision_feature_layer": -2, "freeze_vision_layers": True,
                "shared_experts_intermediate_size": 1536, "num_experts": None},
    }
    for name, cfg in real.items():
        hub.check_config_counts(cfg, name)


def test_transformers_builtin_causal_lm_defaults_pass_the_precheck():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    refused = {}
    for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        try:
            cfg = CONFIG_MAPPING[model_type]().to_dict()
        except Exception:  # noqa: BLE001 - a few need arguments to exist at all: nothing to check
            continue
        try:
            hub.check_config_counts(cfg, model_type)
        except FetchError as exc:
            refused[model_type] = exc.detail
    # doge's num_experts (16384) counts rows of a product-key embedding, not modules; it
    # is the one built-in causal LM beyond CONFIG_MAX_EXPERTS
    assert set(refused) <= {"doge"}, refused


def llama_parameters(vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                     experts: int = 0) -> int:
    """Closed form of a Llama / Mixtral parameter count (untied embeddings, no biases)."""
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim  # q, o + k, v
    mlp = 3 * hidden * intermediate  # gate, up, down
    if experts:
        mlp = experts * mlp + hidden * experts  # + the router
    norms = 2 * hidden
    return 2 * vocab * hidden + layers * (attention + mlp + norms) + hidden


def test_llama_7b_config_is_counted_exactly():
    cfg = config_dict("llama", vocab_size=32_000, hidden=4096, layers=32, intermediate_size=11_008,
                      num_attention_heads=32, num_key_value_heads=32)
    expected = llama_parameters(32_000, 4096, 11_008, 32, 32, 32)
    assert expected == 6_738_415_616  # Llama 2 7B
    assert hub.count_parameters(cfg) == ("LlamaForCausalLM", expected)
    assert hub.check_config(cfg, any_comp("LlamaForCausalLM")) == (
        "<class 'transformers_llama.modeling_llama.SlicedLlamaForCausalLM'>", expected)


def test_mixtral_config_with_experts_is_counted_exactly():
    cfg = config_dict("mixtral", vocab_size=32_000, hidden=4096, layers=32, intermediate_size=14_336,
                      num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2)
    expected = llama_parameters(32_000, 4096, 14_336, 32, 32, 8, experts=8)
    assert expected == 46_702_792_704  # Mixtral 8x7B
    assert hub.check_config(cfg, any_comp("MixtralForCausalLM")) == (
        "<class 'transformers.models.mixtral.modeling_mixtral.MixtralForCausalLM'>", expected)

def test_fetch_tokenizer(src, olah_mirror, olah_hub, tmp_path):
    assert hub.fetch_tokenizer(str(src), tmp_path) == src
    sha = publish(olah_mirror, "alice", "tokrepo", src)
    for spec in (f"alice/tokrepo@{sha}", "alice/tokrepo"):
        path = hub.fetch_tokenizer(spec, tmp_path / "cache", endpoint=olah_hub.endpoint)
        names = {p.name for p in path.iterdir()}
        # config.json too: 4.44 reads the tokenizer class from its model_type when tokenizer_config has none
        assert "tokenizer.json" in names and "config.json" in names and "model.safetensors" not in names
        assert (path / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    with pytest.raises(FetchError) as err:
        hub.fetch_tokenizer("alice/missing-tok", tmp_path / "cache", endpoint=olah_hub.endpoint)
    assert err.value.reason is FailureReason.not_found


def test_publish_local_replaces_the_tree(src, olah_mirror, tmp_path):
    first = publish(olah_mirror, "bob", "versions", src)
    smaller = variant(src, tmp_path / "v2", drop=("generation_config.json",))
    second = publish(olah_mirror, "bob", "versions", smaller)
    assert first != second and len(second) == 40
    repo = olah_mirror / "models" / "bob" / "versions"
    assert _git(["rev-parse", "--abbrev-ref", "HEAD"], repo) == "main"
    files = set(_git(["ls-tree", "-r", "--name-only", second], repo).splitlines())
    assert files == {p.name for p in smaller.iterdir()}
    assert ".gitattributes" in files  # hidden files are published, as on the hub
    with pytest.raises(Exception):
        hub.publish_local(src, olah_mirror, "bad--ns", "x")


def test_publish_local_is_byte_exact_whatever_the_repo_attributes(olah_mirror, tmp_path):
    """git would apply the model's own .gitattributes (eol conversion, LFS filters) and
    .gitignore on `git add`; the mirror must hold the files byte for byte, as the hub does."""
    model = tmp_path / "m"
    (model / "sub").mkdir(parents=True)
    files = {".gitattributes": b"* text eol=crlf\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
             ".gitignore": b"*.json\nsub/\n", "config.json": b'{"a": 1}\r\n{"b": 2}\n', "weights.safetensors": b"\0\1",
             "sub/notes.txt": b"line\n"}
    for rel, data in files.items():
        (model / rel).write_bytes(data)
    (model / ".git").mkdir()  # a hidden folder: not published
    (model / ".git" / "config").write_bytes(b"[core]\n")
    sha = publish(olah_mirror, "bob", "exact", model)
    repo = olah_mirror / "models" / "bob" / "exact"
    assert set(_git(["ls-tree", "-r", "--name-only", sha], repo).splitlines()) == set(files)
    for rel, data in files.items():
        blob = subprocess.run(["git", "cat-file", "blob", f"{sha}:{rel}"], cwd=repo, capture_output=True, check=True)
        assert blob.stdout == data, rel


def test_hotkey_must_be_a_safe_dir_name(src, comp, tmp_path):
    mid = ModelId("alice", "x", "a" * 40, secure_hash("x", "y"), "c00")
    with pytest.raises(ValueError):
        snapshot_path(tmp_path, "../evil", mid)
