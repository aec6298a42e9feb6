"""The loop under a full disk, damaged or hostile files, reused uids, hostile text and clock jumps."""
from __future__ import annotations

import errno
import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from validator.core.failures import FailureReason, FetchError
import constants
from test_loop_stages import COMPS, VAL, Clock, Source, _commit, _field, _hash, _pool
from validator.adapters.evalcache import EvalCache, cache_file
from validator.adapters.candidates import benchmark_entries
from validator.core.entries import clamp_retry_at
from validator.step.persist import Saver
from validator.step.state import ValidatorState
from validator.step.validator import Settings, Validator
from validator.core.sanitize import printable
from validator.core.scores import ScoreResult
from validator.adapters.files import StateError, read_json

UPDATE = constants.CHAIN_UPDATE_INTERVAL_S
NASTY = "boom\x1b[2J\r\nforged line \u202egnp.exe"


def _make(tmp_path: Path, chain, qualities: dict[str, float], calls: list, *, failing: dict | None = None,
          failure: str | None = None, clock=None, **kw) -> Validator:
    """A Validator over fakes: models at tmp/models/<hotkey>, loss = quality x text length
    (independent of the code under test); `failing` hotkeys raise that FetchError."""
    def fetch(mid, hotkey, comp, deadline=None):
        calls.append(("fetch", hotkey))
        if failing and hotkey in failing:
            raise failing[hotkey]
        return tmp_path / "models" / hotkey, _hash("content-" + hotkey)

    def score(path, samples, comp, step_samples=None):
        calls.append(("score", path.name, len(samples)))
        if failure:
            return ScoreResult({}, {}, failure, 0.0, tokenizer="competition", tokenizer_reason=failure)
        q = qualities[path.name]
        return ScoreResult({sid: q * len(t) for sid, t in samples}, {sid: len(t.split()) for sid, t in samples},
                           None, 0.0)

    s = Settings(state_dir=tmp_path / "state", eval_samples=40, step_interval_s=0, weights_interval_s=0)
    return Validator(chain, lambda: COMPS, fetch, score, lambda name, **k: Source(), s, hotkey=VAL,
                     retry_after=lambda reason, attempts: 300.0, clock=clock or time.time, **kw)


@contextmanager
def _within(seconds: int):
    """Fail (instead of hanging the suite) when the body blocks, e.g. reading a FIFO."""
    def boom(*_):
        raise TimeoutError(f"blocked for more than {seconds} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- item 4: a full disk ----------------------------------------------------------------------


class FullDisk(Saver):
    """The real saves, until `full`: then every write fails as on a full disk."""

    def __init__(self) -> None:
        self.full, self.failed = False, 0

    def _check(self) -> None:
        if self.full:
            self.failed += 1
            raise OSError(errno.ENOSPC, "No space left on device")

    def cache(self, cache, path):
        self._check()
        super().cache(cache, path)

    def state(self, state, path):
        self._check()
        super().state(state, path)

    def report(self, report, path):
        self._check()
        super().report(report, path)


def test_a_full_disk_keeps_the_results_in_memory_the_models_keep_their_pool_slots_and_all_is_written_later(
        tmp_path):
    q = {"m1": 1.0, "m2": 0.9, "m3": 0.8}
    chain, _ = _field(tmp_path, q)
    uids = {hk: chain.sync()[0].uid_of(hk) for hk in q}
    saver, calls = FullDisk(), []
    saver.full = True  # the disk is full from the first save on
    v = _make(tmp_path, chain, q, calls, saver=saver)

    r1 = v.step()
    full = [p for p in r1["problems"] if p.startswith("disk_full:")]
    assert saver.failed >= 5 and len(full) == 1  # 3 model saves, the state, the report: said once
    assert "kept in memory" in full[0]
    assert sorted(_pool(v)) == sorted(uids.values())
    assert chain.weights_of(VAL) == {uids["m3"]: pytest.approx(1.0)}  # the results counted
    state_dir = tmp_path / "state"
    assert not (state_dir / "validator_state.json").exists() and not cache_file(state_dir, "texts").exists()

    calls.clear()
    r2 = v.step()  # still full: ranked from memory, nothing scored again but re-checks
    assert sum(1 for p in r2["problems"] if p.startswith("disk_full:")) == 1
    assert all(n < 40 for kind, *rest in calls if kind == "score" for n in rest[1:])
    rows = {m["uid"]: m for m in r2["competitions"]["c00"]["models"]}
    assert {u: rows[u]["status"] for u in uids.values()} == {u: "cached" for u in uids.values()}
    assert sorted(_pool(v)) == sorted(uids.values()) and rows[uids["m3"]]["weight"] == pytest.approx(1.0)

    saver.full = False  # space is back
    r3 = v.step()
    assert not [p for p in r3["problems"] if p.startswith("disk_full:")]
    saved = EvalCache.load(cache_file(state_dir, "texts"))
    texts = dict(Source().sample(0, 40))
    for hk, quality in q.items():
        row = {sid: saved.losses.get(f"c00:{COMPS['c00'].scoring_key}:{_hash('content-' + hk)}", sid)
               for sid in texts}
        assert row == {sid: pytest.approx(quality * len(t)) for sid, t in texts.items()}
    state = ValidatorState.load(state_dir / "validator_state.json")
    assert state.step == 3 and sorted(state.selection["competitions"]["c00"]["pool"]) == sorted(uids.values())
    assert json.loads((state_dir / "last_step.json").read_text())["step"] == 3


def test_a_save_failing_otherwise_is_reported_without_the_disk_full_reason(tmp_path):
    class ReadOnly(Saver):
        def state(self, state, path):
            raise OSError(errno.EROFS, "Read-only file system")

    chain, _ = _field(tmp_path, {"m1": 1.0})
    report = _make(tmp_path, chain, {"m1": 1.0}, [], saver=ReadOnly()).step()
    assert [p for p in report["problems"] if "save failed" in p] and \
        not [p for p in report["problems"] if p.startswith("disk_full:")]


# --- item 5: bounded reads of every file we parse --------------------------------------------------


def test_a_100000_deep_state_file_is_set_aside_and_the_validator_starts_fresh(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    bad = "[" * 100_000 + "]" * 100_000
    (state_dir / "validator_state.json").write_text(bad)
    with pytest.raises(StateError, match="nested deeper than"):
        read_json(state_dir / "validator_state.json")
    chain, _ = _field(tmp_path, {"m1": 1.0})
    v = _make(tmp_path, chain, {"m1": 1.0}, [])
    assert v.state == ValidatorState()
    assert (state_dir / "validator_state.json.bad").read_text() == bad  # kept for the operator
    assert v.step()["step"] == 1 and ValidatorState.load(state_dir / "validator_state.json").step == 1


def test_a_deep_or_oversized_eval_cache_is_set_aside_and_started_empty(tmp_path):
    state_dir = tmp_path / "state"
    path = cache_file(state_dir, "texts")
    path.parent.mkdir(parents=True)
    path.write_text('{"version": ' + "[" * 100_000 + "]" * 100_000 + "}")
    chain, _ = _field(tmp_path, {"m1": 1.0})
    v = _make(tmp_path, chain, {"m1": 1.0}, [])
    report = v.step()
    assert any("evaluation cache" in p and "nested deeper than" in p for p in report["problems"])
    assert path.with_name(path.name + ".bad").exists()
    assert report["competitions"]["c00"]["models"][0]["status"] == "scored"
    with pytest.raises(StateError, match="more than the 10 allowed"):
        read_json(path, max_bytes=10)
    small = path.with_name("small.json")
    small.write_text("[1, 2, 3, 4]")
    with pytest.raises(StateError, match="more than 3 JSON values"):
        read_json(small, max_elements=3)


def test_reading_a_fifo_or_a_device_as_state_fails_at_once(tmp_path):
    fifo = tmp_path / "validator_state.json"
    os.mkfifo(fifo)
    link = tmp_path / "evalcache.json"
    link.symlink_to("/dev/zero")
    with _within(10):
        for p in (fifo, link):
            with pytest.raises(StateError, match="not a regular file"):
                read_json(p)
    assert read_json(tmp_path / "absent.json", {"fresh": True}) == {"fresh": True}


def _candidate(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "model.safetensors").write_bytes(b"weights")
    return d


def test_benchmark_entries_refuse_fifos_and_device_links_and_hash_the_download_set(tmp_path):
    good = _candidate(tmp_path / "good")
    (good / "README.md").write_text("not downloaded by validators: not hashed")
    fifo = _candidate(tmp_path / "fifo")
    os.mkfifo(fifo / "tokenizer.json")
    dev = _candidate(tmp_path / "dev")
    (dev / "vocab.json").symlink_to("/dev/zero")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    bench = tmp_path / "benchmark.json"
    bench.write_text(json.dumps({name: {"competition": "c00", "path": str(tmp_path / name)}
                                 for name in ("good", "fifo", "dev", "bare")}))
    with _within(10):
        entries, problems = benchmark_entries(bench, COMPS)
    assert [e.key for e in entries] == ["bench:good"]
    # the hash of config.json + model.safetensors, computed here from the hash rule (README.md is left out)
    import base64
    import hashlib
    per = "".join(base64.b64encode(hashlib.sha256(b).digest()).decode()
                  for b in (b'{"model_type": "llama"}', b"weights"))
    assert entries[0].content_hash == base64.b64encode(hashlib.sha256(per.encode()).digest()).decode()
    by = {name: [p for p in problems if f"'{name}'" in p] for name in ("fifo", "dev", "bare")}
    assert "tokenizer.json is not a regular file" in by["fifo"][0]
    assert "vocab.json is a symlink" in by["dev"][0]
    assert "constraint:" in by["bare"][0] and "model_type" in by["bare"][0]


# --- item 6: a reused uid ------------------------------------------------------------------------


@pytest.mark.parametrize("empty_step", [False, True], ids=["replaced-between-steps", "a-step-while-empty"])
def test_a_reused_uid_does_not_inherit_the_old_owners_weight(tmp_path, empty_step):
    q = {"m1": 1.0, "m2": 0.5, "new": 2.0}  # m2 the best; the newcomer the worst
    chain, _ = _field(tmp_path, {"m1": 1.0, "m2": 0.5})
    clock = Clock()
    v = _make(tmp_path, chain, q, [], clock=clock)
    v.step()
    uid = chain.sync()[0].uid_of("m2")
    assert chain.weights_of(VAL) == {uid: pytest.approx(1.0)} and v.state.ema[uid] == pytest.approx(1.0)

    assert chain.deregister("m2") == uid
    if empty_step:
        clock.advance(UPDATE)
        v.step()
    (tmp_path / "models" / "new").mkdir()
    assert chain.register("new") == uid
    chain.commit("new", _commit("new"))
    chain.advance(10)
    clock.advance(UPDATE)
    v.step()
    # the newcomer scores worse than m1: per step it gets 0, and nothing of m2's 1.0 is carried over
    assert v.state.ema[uid] == 0.0
    assert uid not in chain.weights_of(VAL)
    assert chain.weights_of(VAL) == {chain.sync()[0].uid_of("m1"): pytest.approx(1.0)}


# --- item 9: hostile text ---------------------------------------------------------------------------


def test_printable_escapes_control_ansi_and_bidi_characters_and_bounds_the_length():
    assert printable(NASTY) == "boom\\x1b[2J\\r\\nforged line \\u202egnp.exe"
    assert printable("tab\there\u200b\x00") == "tab\\there\\u200b\\x00"
    assert printable("ünïcödé text 模型") == "ünïcödé text 模型"  # printable text is kept as is
    assert printable("x" * 50, 10) == "x" * 10 + "…" and printable(ValueError("a\nb")) == "a\\nb"


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, x in obj.items():
            yield from _strings(k)
            yield from _strings(x)
    elif isinstance(obj, list):
        for x in obj:
            yield from _strings(x)


def _inert(s: str) -> bool:
    return all(ch == " " or ch.isprintable() for ch in s)


@pytest.mark.parametrize("where", ["hub", "scoring"])
def test_miner_supplied_text_is_escaped_before_the_report_and_the_log(tmp_path, caplog, where):
    chain, _ = _field(tmp_path, {"m1": 1.0})
    failing = {"m1": FetchError(FailureReason.bad_repo, NASTY)} if where == "hub" else None
    v = _make(tmp_path, chain, {"m1": 1.0}, [], failing=failing, failure=None if where == "hub" else NASTY)
    with caplog.at_level("INFO"):
        report = v.step()
    (row,) = report["competitions"]["c00"]["models"]
    assert "\\x1b[2J\\r\\nforged line \\u202egnp.exe" in row["reason"]
    if where == "scoring":
        assert row["tokenizer_reason"] == printable(NASTY)
    assert all(_inert(s) for s in _strings(report))
    assert all(_inert(r.getMessage()) for r in caplog.records)


# --- item 10: wall-clock jumps -----------------------------------------------------------------------


def test_a_retry_time_is_never_further_ahead_than_the_largest_backoff():
    longest = constants.DOWNLOAD_RETRY_BACKOFF_S[-1]
    assert clamp_retry_at(1_000.0 + 300, 1_000.0) == 1_300.0
    assert clamp_retry_at(1_000.0 + 7 * 86_400, 1_000.0) == 1_000.0 + longest


def test_a_clock_jumping_back_a_week_neither_stops_chain_updates_nor_puts_retries_a_week_away(tmp_path):
    q = {"m1": 1.0}
    chain, _ = _field(tmp_path, q)
    wall, mono, calls = Clock(), Clock(50.0), []
    failing = {"m1": FetchError(FailureReason.network, "connection reset")}
    v = _make(tmp_path, chain, q, calls, failing=failing, clock=wall, monotonic=mono)
    v.step()
    assert calls.count(("fetch", "m1")) == 1
    assert v.state.records["m1"]["retry_at"] == pytest.approx(wall() + 300)

    wall.advance(-7 * 86_400)  # NTP fixes a clock that ran a week ahead
    mono.advance(UPDATE)
    failing.clear()
    v.step()  # the chain update is due by the monotonic clock; the retry is clamped, not due yet
    longest = constants.DOWNLOAD_RETRY_BACKOFF_S[-1]
    assert v.state.records["m1"]["retry_at"] == pytest.approx(wall() + longest)
    assert calls.count(("fetch", "m1")) == 1

    wall.advance(longest)
    mono.advance(UPDATE)
    report = v.step()  # a week-old retry time would still wait days; the clamped one is due
    assert calls.count(("fetch", "m1")) == 2
    assert report["competitions"]["c00"]["models"][0]["status"] == "scored"
