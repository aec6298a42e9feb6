"""Faults of everything the validator depends on: the step goes on with what it has, the
fault is reported per model or per stage, nothing is set on chain from empty or stale
data, and a later step recovers."""
from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from validator.core.failures import FailureReason, FetchError
from tests.reliability import tally
from tests.reliability.faulthub import FaultHub
from tests.reliability.jobs import FIRED_SUFFIX
import constants
from tests.reliability.world import (VAL, Clock, FakeField, assert_weights_sane, publish_and_commit, rows,
                                     run_args)
from validator.adapters.chain.local import LocalChain


def test_chain_unreachable_at_sync_block_hash_and_set_weights(tmp_path):
    f = FakeField(tmp_path, {"m1": 1.0, "m2": 0.9})
    v = f.validator()
    f.chain.fail_sync = 1
    r = v.step()  # no metagraph at all yet: nothing to rank, nothing set
    assert r["weights_set"] == "not set: no metagraph" and "no earlier sync" in r["problems"][0]
    assert f.chain.sets == []
    f.chain.fail_block_hash, f.chain.fail_set = 1, 2
    r = v.step()
    assert any("seeding with the block number" in p for p in r["problems"])
    assert {m["status"] for m in rows(r).values()} == {"scored"}  # scoring was not blocked
    assert r["weights_set"].startswith("not set: set_weights: connection refused") and "retried" in r["weights_set"]
    f.local.advance(1)
    r = v.step()  # retried at once (the failed set did not count for the interval), fails again
    assert "retried" in r["weights_set"]
    f.local.advance(1)
    r = v.step()
    assert r["weights_set"].startswith("set at block"), r["weights_set"]
    assert f.local.weights_record(VAL) is not None
    f.chain.fail_sync = 1
    f.local.advance(500)
    r = v.step()  # a stale metagraph: ranked from cache, never set
    assert "stale" in r["weights_set"] and len(f.chain.sets) == 3  # no call at all
    assert_weights_sane(f.chain, v.settings.version_key)


def test_text_source_failing_then_garbage_then_back(tmp_path):
    f = FakeField(tmp_path, {"m1": 1.0, "m2": 0.9})
    v = f.validator()
    f.source.fail = OSError("shard server unreachable")
    r = v.step()
    assert any("sample source 'texts' failed" in p and "unreachable" in p for p in r["problems"])
    assert r["weights_set"].startswith("not set: no model has weight this step") and f.chain.sets == []
    assert {m["status"] for m in rows(r).values()} == {"skipped"}
    f.source.fail, f.source.garbage = None, True
    f.local.advance(1)
    r = v.step()
    cache = v.cache_for("texts")
    assert set(cache.db.ids()) == {f"s{i}" for i in range(30)}  # garbage never entered the db
    assert r["weights_set"].startswith("set"), r["weights_set"]
    assert_weights_sane(f.chain, v.settings.version_key)


def test_hub_failures_per_model_are_reported_and_retried(tmp_path):
    f = FakeField(tmp_path, {"m1": 1.0, "m2": 0.9, "m3": 0.8})
    v = f.validator()
    f.fetch_faults = {"m1": FetchError(FailureReason.network, "hub answered 503"),
                      "m2": FetchError(FailureReason.disk_full, "no space left on device"),
                      "m3": ConnectionResetError("connection reset by peer")}
    r = v.step()
    got = {m["hotkey"]: m for m in rows(r).values()}
    assert got["m1"]["reason"] == "network: hub answered 503"
    assert got["m2"]["reason"] == "disk_full: no space left on device"
    assert got["m3"]["reason"].startswith("network: connection reset")
    assert {m["status"] for m in got.values()} == {"failed"}  # not evaluated; in the table with the reason
    assert r["weights_set"].startswith("not set: no model has weight this step") and f.chain.sets == []
    f.fetch_faults = {}
    f.local.advance(1)
    f.clock.advance(constants.CHAIN_UPDATE_INTERVAL_S)
    r = v.step()  # retry_after 0 in this field: fetched again at the next chain update, recovered
    assert {m["status"] for m in rows(r).values()} == {"scored"}
    assert r["weights_set"].startswith("set")


def test_scoring_worker_segfault_oom_timeout_error(tmp_path, monkeypatch):
    import validator.scoring.dispatch as scorer

    monkeypatch.setattr(scorer, "JOB", "tests.reliability.jobs:score")
    q = {"good1": 1.0, "segv": 0.5, "oom": 0.5, "hang": 0.5, "raise": 0.5, "good2": 0.9}
    f = FakeField(tmp_path, q)
    v = f.validator()
    v.score = scorer.make_score_fn("cpu", tmp_path / "tok", isolate=True, timeout_s=4)
    r = v.step()
    fired = {p.name[:-len(FIRED_SUFFIX)] for p in (tmp_path / "models").glob("*" + FIRED_SUFFIX)}
    for name in fired:  # each worker recorded its fault before it fired
        tally.fault_fired(f"scoring worker {name}", str(tmp_path / name))
    assert fired == {"segv", "oom", "hang", "raise"}
    got = {m["hotkey"]: m for m in rows(r).values()}
    assert got["segv"]["status"] == "failed" and "crashed" in got["segv"]["reason"] and "SIGSEGV" in got["segv"]["reason"]
    assert got["oom"]["status"] == "failed" and got["oom"]["reason"].startswith("oom")
    assert got["hang"]["status"] == "failed" and got["hang"]["reason"].startswith("timeout")
    assert got["raise"]["status"] == "failed" and "forward pass exploded" in got["raise"]["reason"]
    assert got["good1"]["status"] == got["good2"]["status"] == "scored"
    weighted = {u for u, w in f.local.weights_of(VAL).items() if w > 0}
    assert weighted <= {f.uid("good1"), f.uid("good2")} and weighted
    f.local.advance(200)
    f.clock.advance(constants.MIN_WEIGHT_SET_INTERVAL_S)
    r = v.step()  # the loop goes on: good models cached, weights set again
    assert r["weights_set"].startswith("set") and {rows(r)[f"uid {f.uid('good1')}"]["status"]} == {"cached"}
    assert_weights_sane(f.chain, v.settings.version_key)


@pytest.fixture
def tiny_fs(tmp_path):
    """A small tmpfs (real ENOSPC) when this sandbox allows mounting, else None."""
    mnt = tmp_path / "tinyfs"
    mnt.mkdir()
    ok = not os.environ.get("COLDINT_TEST_NO_TMPFS") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True).returncode == 0
    yield mnt if ok else None
    if ok:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_during_state_save(tmp_path, tiny_fs, monkeypatch):
    f = FakeField(tmp_path, {"m1": 1.0, "m2": 0.9})
    state_dir = (tiny_fs or tmp_path) / "state"
    v = f.validator(state_dir=state_dir)
    first = v.step()
    assert first["weights_set"].startswith("set")
    saved_state = (state_dir / "validator_state.json").read_bytes()
    if tiny_fs is not None:  # fill the disk
        filler = tiny_fs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 1024)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
    else:
        import validator.adapters.files as st

        def full(fd):
            tally.fault_fired("disk full during state save (fsync)")
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(st.os, "fsync", full)
    f.qualities["m3"] = 0.5
    f.local.register("m3")
    from tests.reliability.world import fake_commitment

    f.local.commit("m3", fake_commitment("m3"))
    (tmp_path / "models" / "m3").mkdir()
    f.local.advance(200)
    f.clock.advance(constants.CHAIN_UPDATE_INTERVAL_S)  # the chain update downloads m3
    r = v.step()
    assert any("save failed" in p and "No space left" in p for p in r["problems"]), r["problems"]
    if tiny_fs is not None:  # the filesystem is the injection point: the save met its ENOSPC
        tally.fault_fired("disk full during state save (tmpfs)")
    assert rows(r)[f"uid {f.uid('m3')}"]["status"] == "scored"  # the step went on
    assert (state_dir / "validator_state.json").read_bytes() == saved_state  # the old save is intact
    assert not list(state_dir.rglob(".*.tmp"))
    if tiny_fs is not None:
        filler.unlink()
    else:
        monkeypatch.undo()
    f.local.advance(200)
    r = v.step()  # space is back: everything, the losses of the full-disk step included, is saved
    assert not any("save failed" in p for p in r["problems"])
    from validator.adapters.evalcache import EvalCache

    cache = EvalCache.load(state_dir / "evalcache" / "texts.json")
    assert len(cache.losses.models()) == 3  # m3, scored while the disk was full, is saved now
    assert json.loads((state_dir / "validator_state.json").read_text())["step"] == r["step"]


# --- the real hub behind a faulty front ----------------------------------------------------------


@pytest.fixture
def hub_field(real_field, real_hub, tmp_path):
    chain = LocalChain(tmp_path / "chain.sqlite", hotkey=VAL)
    chain.register(VAL, stake=1000.0, validator=True)
    for i, name in enumerate(("good0", "good1")):
        publish_and_commit(real_field, chain, f"5Hub{i}", real_field["models"][name], f"hubteam/{name}")
        chain.advance(20)
    chain.advance(150)
    return chain


def _real_validator(real_field, tmp_path, endpoint, *extra):
    from validator.app import build_validator
    from validator.cli.main import build_parser
    from validator.cli.run import config_from_args

    args = build_parser().parse_args(run_args(real_field, tmp_path / "state", tmp_path / "chain.sqlite", endpoint,
                                              "--no-isolation", *extra))
    v = build_validator(config_from_args(args))
    v.progress = None
    v.clock = Clock()  # chain updates and weight sets when the test moves it
    v.retry_after = lambda reason, attempts: 0.0  # retry at the next step (the backoff is tested in test_hub)
    return v


def test_hub_faults_then_recovery_then_hub_down_with_models_on_disk(real_field, real_hub, hub_field, tmp_path,
                                                                     fast_hub_retries, monkeypatch):
    import constants

    store = tmp_path / "state" / "models"
    with FaultHub(real_hub.endpoint) as front:
        v = _real_validator(real_field, tmp_path, front.endpoint)
        expect = {"404": "not_found", "401": "not_found", "500": "network", "hang": "network",
                  "down": "network", "die": "network"}
        for mode, reason in expect.items():
            front.mode = mode
            hub_field.advance(1)
            v.clock.advance(constants.CHAIN_UPDATE_INTERVAL_S)  # the next chain update tries both again
            # a hanging hub is cut by the request timeout (constants.HUB_TIMEOUT_S, 0.2 s here)
            monkeypatch.setattr(constants, "HUB_TIMEOUT_S", 0.1 if mode == "hang" else 0.2)
            r = v.step()
            got = [m for m in r["competitions"]["c00"]["models"]]
            assert len(got) == 2 and all(m["status"] == "failed" for m in got), (mode, got)
            assert all(m["reason"].startswith(reason) for m in got), (mode, [m["reason"] for m in got])
            assert r["weights_set"].startswith("not set: no model has weight this step")
            assert hub_field.weights_record(VAL) is None  # nothing set from an empty step
            # a failed download leaves no snapshot and no partial files in the store
            assert not list(store.glob("models/*/*/snapshots/*/*")) and not list(store.glob("models/*/*/.tmp-*"))
        front.mode = "proxy"
        hub_field.advance(1)
        v.clock.advance(constants.CHAIN_UPDATE_INTERVAL_S)
        r = v.step()  # the hub is back: downloaded, scored, weights set
        assert {m["status"] for m in r["competitions"]["c00"]["models"]} == {"scored"}
        assert r["weights_set"].startswith("set"), r["weights_set"]
        front.mode = "down"
        hub_field.advance(150)
        v.clock.advance(constants.MIN_WEIGHT_SET_INTERVAL_S)  # a chain update, and weights may be set again
        r = v.step()  # hub down, models already on disk (the pool): scored from the store, weights set
        assert {m["status"] for m in r["competitions"]["c00"]["models"]} <= {"scored", "cached"}
        assert r["weights_set"].startswith("set"), r["weights_set"]


@pytest.mark.filterwarnings("ignore:Not enough free disk space")
def test_disk_full_during_download(real_field, real_hub, hub_field, tmp_path, tiny_fs, monkeypatch,
                                   fast_hub_retries):
    import functools

    import validator.adapters.hub as hub
    import validator.adapters.hub.download as hub_download

    model_dir = (tiny_fs or tmp_path) / "models"
    if tiny_fs is not None:  # a 512 KiB disk that claims to have room: the write itself fails
        monkeypatch.setattr(hub_download, "_disk_free", lambda path: 1 << 40)
        big = tiny_fs / "filler"
        big.write_bytes(b"\0" * (480 * 1024))
    else:
        real = hub.ensure_model

        def full(*a, **k):
            tally.fault_fired("disk full during download", repr(a[:2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(hub, "ensure_model", functools.partial(real, download=full))
    v = _real_validator(real_field, tmp_path, real_hub.endpoint, "--model-dir", str(model_dir))
    r = v.step()
    got = r["competitions"]["c00"]["models"]
    assert all(m["status"] == "failed" and m["reason"].startswith("disk_full") for m in got), got
    if tiny_fs is not None:  # the filesystem is the injection point: each download met its ENOSPC
        for m in got:
            tally.fault_fired("disk full during download (tmpfs)", m["commitment"])
    assert not list(model_dir.glob("models/*/*/snapshots/*/*")) and not list(model_dir.glob("models/*/*/.tmp-*"))
    assert hub_field.weights_record(VAL) is None
    if tiny_fs is not None:
        big.unlink()
    else:
        monkeypatch.setattr(hub, "ensure_model", real)
    hub_field.advance(1)
    v.clock.advance(constants.CHAIN_UPDATE_INTERVAL_S)  # the next chain update tries both again
    r = v.step()
    assert {m["status"] for m in r["competitions"]["c00"]["models"]} == {"scored"}
    assert r["weights_set"].startswith("set")


def test_a_hub_answering_500_is_asked_no_more_often_than_huggingface_hub_asks_by_itself(real_hub, fast_hub_retries):
    # huggingface_hub already retries a 5xx with backoff (about 23 s on the real clock);
    # retrying that whole round again per model made a failing hub cost minutes per step.
    from huggingface_hub import HfApi

    import validator.adapters.hub as hub

    with FaultHub(real_hub.endpoint) as front:
        front.mode = "500"
        with pytest.raises(Exception):
            list(HfApi(endpoint=front.endpoint).list_repo_tree("miner/m", revision="a" * 40, recursive=True))
        library_alone = len(front.requests)
        front.requests.clear()
        with pytest.raises(FetchError) as err:
            hub.remote_files("miner/m", "a" * 40, front.endpoint)
    assert err.value.reason is FailureReason.network and "HTTP 500" in str(err.value)
    assert library_alone > 1 and len(front.requests) == library_alone
