"""Hostile and corrupt input: commitments, config files, hand-edited state, model repos.
Each gets a clear reason, the step goes on, no bad weight reaches the chain, and nothing
outside the state and model dirs is written."""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from validator.core.failures import FetchError
from tests.reliability import tally
from tests.reliability.world import (COMPS, VAL, FakeField, FaultyChain, assert_weights_sane, b64sha,
                                     publish_and_commit, rows, run_args, tree_snapshot)
from tests.reliability.world import fake_commitment as fake_commitment_of
from validator.core.chain import Commitment
from validator.core.identity import ModelId, check_repo_part

HOSTILE = [f"5Hostile{i}" for i in range(4)]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
TRICKS = ["..", ".", "a/b", "../../etc", "%2e%2e", "~root", "/abs", "a\x00b", "-x", "x" * 120, "team", "ok.name",
          "a..b", "a--b", "名前", " ", ""]
SHA = "a" * 40
commitments = st.one_of(
    st.text(max_size=300),
    st.builds(lambda ns, name, commit, h, comp: f"{ns}:{name}:{commit}:{h}:{comp}",
              st.sampled_from(TRICKS), st.sampled_from(TRICKS),
              st.sampled_from([SHA, "A" * 40, "g" * 40, SHA[:39], ""]),
              st.sampled_from([b64sha("x"), "=" * 44, "x" * 44, ""]),
              st.sampled_from(["c00", "c99", "../c00", "", "c00:extra"])))

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _field(root: Path) -> FakeField:
    f = FakeField(root, {"m1": 1.0, "m2": 0.9})
    for hk in HOSTILE:
        f.local.register(hk)
    f.fetched = []
    fetch = f.fetch

    def recording_fetch(mid, hotkey, comp, deadline=None):
        f.fetched.append(mid)
        return fetch(mid, hotkey, comp) if hotkey in f.qualities else (_ for _ in ()).throw(
            OSError("hostile model has no dir"))
    f.fetch = recording_fetch
    return f


def _commitment_reached(text: str, listed: bool, why: list[str]) -> None:
    """Tally a hostile commitment by how far it got: the shape check (size, five fields) is
    the first; one rejected there never reached the field checks, the dedupe or the fetch."""
    first_check = any("':'-separated fields" in p or "bytes of UTF-8, more than" in p for p in why)
    (tally.bad_input_stopped if first_check and not listed else tally.bad_input_reached)("commitment", text)


def _document_reached(kind: str, raw: str | bytes) -> None:
    """Tally a hostile config/state document: reached its schema when it decodes as a JSON object."""
    try:
        ok = isinstance(json.loads(raw), dict)
    except (ValueError, UnicodeDecodeError):
        ok = False
    key = hashlib.sha256(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")).hexdigest()
    (tally.bad_input_reached if ok else tally.bad_input_stopped)(kind, key)


@SETTINGS
@given(st.lists(commitments, min_size=1, max_size=len(HOSTILE)))
def test_hostile_commitments(texts):
    with tempfile.TemporaryDirectory() as tmp:
        f = _field(Path(tmp))
        f.chain.extra = {hk: Commitment(t, 5 + i) for i, (hk, t) in enumerate(zip(HOSTILE, texts))}
        v = f.validator()
        r = v.step()
        for mid in f.fetched:  # only well-formed ids of a known competition are ever fetched
            check_repo_part(mid.namespace, "namespace")
            check_repo_part(mid.name, "name")
            assert mid.competition == "c00" and ".." not in mid.repo_id
        listed = {m["hotkey"] for m in rows(r).values()}
        for hk, t in zip(HOSTILE, texts):
            why = [p for p in r["problems"] if p.startswith(f"uid {f.uid(hk)}:")]
            if hk not in listed:  # dropped: with a reason naming the uid
                assert why, (hk, r["problems"])
            _commitment_reached(t, hk in listed, why)
        assert r["weights_set"].startswith("set")  # the good models still get their weights
        assert_weights_sane(f.chain, v.settings.version_key)
        assert set(tree_snapshot(Path(tmp), exclude=(Path(tmp) / "state",))) <= \
            {"chain.sqlite", "chain.sqlite-wal", "chain.sqlite-shm"}


@SETTINGS
@given(bench=json_values, hof=json_values, comps=json_values,
       bench_text=st.one_of(st.none(), st.text(max_size=40)))
def test_hostile_benchmark_hall_of_fame_and_competitions_files(bench, hof, comps, bench_text):
    from validator.adapters.competitions_source import CompetitionsConfig

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        f = _field(root)
        good = {"c00": COMPS["c00"].model_dump(exclude={"id"})}
        (root / "competitions.json").write_text(json.dumps(good))
        cfg = CompetitionsConfig(str(root / "competitions.json"))
        cfg.reload()
        (root / "competitions.json").write_text(json.dumps(comps))  # then it goes bad
        (root / "benchmark.json").write_text(bench_text if bench_text is not None else json.dumps(bench))
        (root / "hof.json").write_text(json.dumps(hof))
        v = f.validator(benchmark_path=root / "benchmark.json", hall_of_fame_path=root / "hof.json")

        def competitions():
            cfg.reload()  # every step here, not hourly
            return cfg.competitions

        v.competitions = competitions
        r = v.step()
        for kind in ("benchmark.json", "hall_of_fame.json", "competitions.json"):
            _document_reached(kind, (root / kind.replace("hall_of_fame", "hof")).read_bytes())
        assert set(cfg.competitions) == {"c00"}  # the last good config stays in force
        assert r["weights_set"].startswith("set") and r["competitions"]["c00"]["models"]
        assert_weights_sane(f.chain, v.settings.version_key)
        if isinstance(hof, dict) and any(isinstance(k, str) and not k.startswith("_") and not isinstance(x, list)
                                         for k, x in hof.items()):
            assert any(p.startswith("hall of fame") for p in r["problems"])
        if not isinstance(bench, dict) or bench_text is not None:
            assert any("benchmark" in p for p in r["problems"]) or bench_text is not None


def _damage(data: bytes, rnd: random.Random) -> bytes:
    how = rnd.choice(["truncate", "flip", "empty", "garbage"])
    if how == "truncate":
        return data[:rnd.randrange(len(data))]
    if how == "flip" and data:
        i = rnd.randrange(len(data))
        return data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:]
    return b"" if how == "empty" else bytes(rnd.randrange(256) for _ in range(64))


@SETTINGS
@given(field_values=st.dictionaries(st.sampled_from(["step", "ema", "last_weights_block", "pools", "evaluated",
                                                     "records", "unknown"]), json_values, max_size=4),
       damage_seed=st.integers(0, 10**6), which=st.sampled_from(["state", "index", "samples", "none", "all"]))
def test_hand_edited_state_files(field_values, damage_seed, which):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        f = _field(root)
        v = f.validator()
        v.step()
        state_dir = root / "state"
        files = {"state": state_dir / "validator_state.json", "index": state_dir / "evalcache" / "texts.json",
                 "samples": state_dir / "evalcache" / "texts.samples.json"}
        saved = json.loads(files["state"].read_text())
        files["state"].write_text(json.dumps({**saved, **field_values}))
        rnd = random.Random(damage_seed)
        for name, p in files.items():
            if which in (name, "all"):
                p.write_bytes(_damage(p.read_bytes(), rnd))
        for name, p in files.items():
            if name == "state" or which in (name, "all"):
                _document_reached(f"hand-edited {p.name}", p.read_bytes())
        f.local.advance(200)
        v2 = f.validator()  # a restart on the edited files
        r = v2.step()
        r = v2.step() if not r["weights_set"].startswith("set") else r
        assert r["competitions"]["c00"]["models"]
        assert_weights_sane(f.chain, v2.settings.version_key)
        if which in ("index", "all") and not files["index"].with_name("texts.json.bad").exists():
            # the damage happened to leave a readable cache (e.g. a flipped digit): fine, it loaded
            assert not any("evaluation cache" in p for p in r["problems"])


# --- hostile model repos through the real hub and the real scorer ---------------------------------


def _model(real_field, tmp: Path, name: str, **kw) -> Path:
    from tests.factories import make_model

    d = make_model(tmp / name, vocab_size=kw.pop("vocab_size", 300), seed=7, hidden=16, layers=1, **kw)
    return d


def _edit_weights(d: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    w = load_file(d / "model.safetensors")
    save_file({k: fn(k, t) for k, t in w.items()}, d / "model.safetensors", metadata={"format": "pt"})


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _shard_with_index(d: Path, shard_file: str, mapped_to: str | None = None) -> None:
    """model.safetensors moved to `shard_file`, and an index whose weight_map names `mapped_to`
    (the shard itself by default) for every tensor."""
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    size = (d / "model.safetensors").stat().st_size
    (d / "model.safetensors").rename(d / shard_file)
    index = {"metadata": {"total_size": size}, "weight_map": {n: mapped_to or shard_file for n in names}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def test_hostile_model_repos(real_field, real_hub, tmp_path, outside_guard, monkeypatch):
    import torch

    import constants

    from validator.adapters.chain.local import LocalChain
    from validator.app import build_validator
    from validator.cli.main import build_parser
    from validator.cli.run import config_from_args
    from validator.adapters.hub import model_dir_hash, publish_local
    from validator.core.identity import dir_hash, secure_hash

    comp = json.loads(real_field["comps"].read_text())["c00"]
    comps = tmp_path / "competitions.json"
    comps.write_text(json.dumps({"c00": comp, "c01": {**comp, "free_tokenizer": True, "reward": 0.5}}))
    field = {**real_field, "comps": comps}
    chain = LocalChain(tmp_path / "chain.sqlite", hotkey=VAL)
    chain.register(VAL, stake=1000.0, validator=True)
    mk = tmp_path / "made"
    expect = {}

    def miner_hash(d):
        # what validators hash (the download set); a repo no validator downloads: every file
        try:
            return model_dir_hash(d)
        except FetchError:
            return dir_hash(d)

    def add(hk, d, reason, competition="c00"):
        publish_and_commit(field, chain, hk, d, f"bad/{d.name}", competition, hash_of=miner_hash)
        expect[hk] = reason
        chain.advance(5)

    publish_and_commit(field, chain, "5Good0", real_field["models"]["good0"], "fine/good0")
    publish_and_commit(field, chain, "5Good1", real_field["models"]["good1"], "fine/good1")
    chain.advance(5)
    d = _model(real_field, mk, "pickle")
    torch.save({"w": torch.zeros(2)}, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()  # pickle only (a .bin beside safetensors is ignored, as live ignores it)
    add("5Pickle", d, "unsafe_format")
    d = _model(real_field, mk, "remote")
    _edit_config(d, auto_map={"AutoModelForCausalLM": "modeling_evil.Evil"})
    (d / "modeling_evil.py").write_text("import os\nos.system('touch /tmp/pwned')\n")
    # as live: auto_map and code files are ignored (never downloaded, hashed or run); the model loads
    # as the class of its model_type. The miner hashes what validators hash.
    publish_and_commit(field, chain, "5Remote", d, f"bad/{d.name}", hash_of=model_dir_hash)
    chain.advance(5)
    d = _model(real_field, mk, "oversized")
    (d / "extra.safetensors").write_bytes(b"\0" * (comp["model_size"] + 1))
    add("5Oversized", d, "too_large")
    d = _model(real_field, mk, "trillion")
    _edit_config(d, vocab_size=500_000_000, hidden_size=1024)  # declares ~10^12 parameters
    add("5Trillion", d, "constraint")
    d = _model(real_field, mk, "nan")
    _edit_weights(d, lambda k, t: torch.full_like(t, float("nan")))
    add("5NaN", d, "NaN")
    d = _model(real_field, mk, "inf")
    _edit_weights(d, lambda k, t: torch.full_like(t, float("inf")) if "lm_head" in k else t)
    add("5Inf", d, "loss")
    d = _model(real_field, mk, "smallvocab", vocab_size=100)  # the tokenizer has 300 ids
    add("5SmallVocab", d, "vocab")
    # a model with its own tokenizer (free_tokenizer) that lowercases: text does not round trip
    d = _model(real_field, mk, "lowercase")
    tok = json.loads((real_field["tok"] / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Lowercase"}
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        if (real_field["tok"] / fname).exists():
            shutil.copy(real_field["tok"] / fname, d / fname)
    (d / "tokenizer.json").write_text(json.dumps(tok))
    # as live: its own tokenizer fails and the model is scored with the competition's (not disqualified)
    publish_and_commit(field, chain, "5Lowercase", d, f"bad/{d.name}", "c01", hash_of=model_dir_hash)
    chain.advance(5)
    # a git symlink pointing out of the snapshot, at the sentinel
    d = _model(real_field, mk, "symlink")
    sha = publish_local(d, real_field["mirror"], "bad", "symlink")
    repo = real_field["mirror"] / "models" / "bad" / "symlink"
    (repo / "notes.txt").symlink_to(outside_guard / "secret.txt")
    subprocess.run(["git", "add", "notes.txt"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qm", "link"], cwd=repo, check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (d / "notes.txt").symlink_to(outside_guard / "secret.txt")  # what the miner hashed: the link followed
    chain.register("5Symlink")
    chain.commit("5Symlink", ModelId("bad", "symlink", sha, secure_hash(dir_hash(d), "5Symlink"), "c00").to_commitment())
    expect["5Symlink"] = "hash_mismatch"
    # an index whose weight_map points out of the snapshot (the real shard is in the repo)
    for hk, name, target in (("5IndexUp", "indexup", "../x/model.safetensors"),
                             ("5IndexAbs", "indexabs", "/abs/model.safetensors")):
        d = _model(real_field, mk, name)
        _shard_with_index(d, "model-00001-of-00001.safetensors", target)
        add(hk, d, "unsafe_format")
    # glob characters in file names: a shard the index names and a file no validator downloads
    d = _model(real_field, mk, "globchars")
    _shard_with_index(d, "model-[0]*?.safetensors")
    (d / "notes [*?].txt").write_text("not downloaded, counted in the repo size")
    publish_and_commit(field, chain, "5Glob", d, f"bad/{d.name}", hash_of=model_dir_hash)
    chain.advance(5)
    # more files than HUB_MAX_REPO_FILES (lowered here: the check counts the listing, whatever the cap)
    monkeypatch.setattr(constants, "HUB_MAX_REPO_FILES", 40)
    d = _model(real_field, mk, "manyfiles")
    for i in range(41):
        (d / "extra" / f"f{i}.txt").parent.mkdir(exist_ok=True)
        (d / "extra" / f"f{i}.txt").write_text(str(i))
    add("5ManyFiles", d, "bad_repo")
    chain.advance(150)

    state_dir = tmp_path / "state"
    (state_dir / "tokenizers").mkdir(parents=True)
    (state_dir / "tokenizers" / "tokens.npz").write_bytes(b"PK\x03\x04 not a zip")  # a damaged token cache
    args = build_parser().parse_args(run_args(field, state_dir, tmp_path / "chain.sqlite", real_hub.endpoint,
                                              "--no-isolation"))
    outside = tree_snapshot(tmp_path, exclude=(state_dir,))
    v = build_validator(config_from_args(args))
    v.progress = None
    # path tricks in repo names never reach the hub
    v.chain = FaultyChain(v.chain)
    for hk, text in (("5Trick0", f"..:m:{SHA}:{b64sha('a')}:c00"), ("5Trick1", f"team:..%2F..:{SHA}:{b64sha('b')}:c00"),
                     ("5Trick2", f"a/b:m:{SHA}:{b64sha('c')}:c00"), ("5Trick3", f"team:m/../../x:{SHA}:{b64sha('d')}:c00")):
        chain.register(hk)
        v.chain.extra[hk] = Commitment(text, 1)
    r = v.step()
    meta = chain.sync()[0]
    table = {m["hotkey"]: m for c in r["competitions"].values() for m in c["models"]}
    for hk, reason in expect.items():
        row = table[hk]
        assert row["reason"] and reason in row["reason"], (hk, row["status"], row["reason"])
        assert row["weight"] in (None, 0.0), (hk, row["weight"])
        tally.bad_input_reached("model repo (listed and checked)", hk)  # the check that refused it ran
    for hk in ("5Remote", "5Lowercase", "5Glob"):  # hostile but loadable: survived and scored
        if table[hk]["status"] == "scored":
            tally.bad_input_reached("model repo (listed, downloaded, scored)", hk)
    assert table["5Glob"]["status"] == "scored", table["5Glob"]  # glob characters downloaded as names
    for hk in ("5Trick0", "5Trick1", "5Trick2", "5Trick3"):  # five fields: reached the name checks
        tally.bad_input_reached("repo name with a path trick", hk)
    if (state_dir / "tokenizers" / "tokens.npz").read_bytes() != b"PK\x03\x04 not a zip":
        tally.bad_input_reached("damaged token cache", "tokens.npz")  # loaded, refused, rewritten
    for hk in ("5Trick0", "5Trick1", "5Trick2", "5Trick3"):
        assert any(p.startswith(f"uid {meta.uid_of(hk)}: invalid commitment") for p in r["problems"]), hk
    assert table["5Good0"]["status"] == table["5Good1"]["status"] == "scored"  # despite the damaged token cache
    assert table["5Remote"]["status"] == "scored", table["5Remote"]  # its code never ran (checked below)
    # the same weights (seed 7) and the competition tokenizer: the same losses as 5Remote's
    assert table["5Lowercase"]["status"] == "scored", table["5Lowercase"]
    assert table["5Lowercase"]["loss_per_token"] == pytest.approx(table["5Remote"]["loss_per_token"], rel=1e-5)
    weighted = {u for u, w in chain.weights_of(VAL).items() if w > 0}
    scored = {meta.uid_of(hk) for hk in ("5Good0", "5Good1", "5Remote", "5Lowercase", "5Glob")}
    assert weighted and weighted <= scored  # no hostile model that failed takes weight
    # nothing of the sentinel was copied into the store, nothing outside was written
    for p in state_dir.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert b"SENTINEL-DO-NOT-READ" not in p.read_bytes(), p
    assert not list(state_dir.rglob("*.py")) and not Path("/tmp/pwned").exists()
    after = tree_snapshot(tmp_path, exclude=(state_dir, real_field["mirror"]))
    assert {k: v for k, v in after.items() if not k.startswith("chain.sqlite")} == \
        {k: v for k, v in outside.items() if not k.startswith("chain.sqlite")}


def test_commitment_field_with_a_trailing_newline_is_an_invalid_commitment(tmp_path):
    f = _field(tmp_path)
    good = ModelId("team", "m", SHA, b64sha("x"), "c00")
    fields = ["namespace", "name", "commit", "hash", "competition"]
    texts = {}
    for i, hk in enumerate(HOSTILE):  # the newline on one field each (four of the five)
        parts = good.to_commitment().split(":")
        parts[i + 1 if i else 0] += "\n"
        texts[hk] = ":".join(parts)
    f.chain.extra = {hk: Commitment(t, 5 + i) for i, (hk, t) in enumerate(texts.items())}
    r = f.validator().step()
    listed = {m["hotkey"] for m in rows(r).values()}
    for i, hk in enumerate(HOSTILE):
        why = [p for p in r["problems"] if p.startswith(f"uid {f.uid(hk)}: invalid commitment")]
        assert why and hk not in listed, (fields[i + 1 if i else 0], r["problems"])
        _commitment_reached(texts[hk], False, why)
    assert not [m for m in f.fetched if m.namespace == "team" and m.name == "m"]  # never fetched
    assert r["weights_set"].startswith("set")


def test_a_reused_uid_whose_hotkey_changed_inherits_no_weight(tmp_path):
    import sqlite3

    import constants

    f = FakeField(tmp_path, {"m1": 0.5, "m2": 0.9})  # m1 is the better model: it takes the weight
    v = f.validator()
    uid = f.uid("m1")
    assert v.step()["weights_set"].startswith("set") and f.local.weights_of(VAL).get(uid, 0) > 0
    assert v.state.ema[uid] > 0
    # the uid is deregistered and taken by a new hotkey, whose model cannot be fetched
    with sqlite3.connect(f.local.path) as db:
        db.execute("UPDATE neurons SET hotkey = 'newcomer' WHERE uid = ?", (uid,))
    f.local.commit("newcomer", fake_commitment_of("newcomer"))
    f.fetch_faults["newcomer"] = OSError("the newcomer's repo is gone")
    tally.bad_input_reached("reused uid with a new hotkey", str(tmp_path))
    f.local.advance(200)
    f.clock.advance(max(constants.CHAIN_UPDATE_INTERVAL_S, constants.MIN_WEIGHT_SET_INTERVAL_S))
    r = v.step()
    assert r["weights_set"].startswith("set"), r["weights_set"]
    assert v.state.ema[uid] == 0.0  # the old miner's moving average is not inherited
    assert f.local.weights_of(VAL).get(uid, 0.0) == 0.0 and f.local.weights_of(VAL).get(f.uid("m2"), 0) > 0
    row = rows(r)[f"uid {uid}"]
    assert row["hotkey"] == "newcomer" and row["status"] == "failed" and row["weight"] in (None, 0.0), row
