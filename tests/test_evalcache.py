"""validator/adapters/evalcache.py and sampledb.py, validator/core/rechecks.py: sample db, loss matrix,
rechecks, first-seen, persistence."""
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import constants
from validator.adapters.evalcache import EvalCache, LossCache
from validator.adapters.sampledb import SampleDB
from validator.core.rechecks import pick_eval_samples, pick_rechecks, verify_rechecks
from validator.adapters.files import StateError


class CountingSource:
    """A SampleSource over an endless id space: sample(seed, n) gives n ids derived from seed."""

    name = "counting"

    def __init__(self):
        self.calls = []

    def sample(self, seed, n):
        self.calls.append((seed, n))
        return [(f"s{seed}-{i}", f"text {seed} {i}") for i in range(n)]


def fake_losses(model_key, sample_ids):
    """Deterministic stand-in for scoring: a loss per (model, sample)."""
    return {sid: float(sum(map(ord, model_key + sid)) % 97) + 0.5 for sid in sample_ids}


def make_db(**kw):
    args = dict(min_samples=10, max_samples=25, extend_samples=5, extend_interval=100.0)
    args.update(kw)
    return SampleDB(**args)


# --- the sample database under the cache ----------------------------------------------------


def test_eval_cache_refresh_forgets_losses_of_dropped_samples():
    ec = EvalCache(make_db(min_samples=5, max_samples=5, extend_samples=5))
    ec.refresh(CountingSource(), 1, now=0.0)
    old = ec.db.ids()
    ec.losses.put("m", fake_losses("m", old))
    r = ec.refresh(CountingSource(), 2, now=1000.0)
    assert r.dropped == old
    assert ec.losses.cached("m") == []


# --- LossCache and picking ----------------------------------------------------------------


def test_matrix_missing_and_reset():
    c = LossCache()
    c.put("a", {"x": 1.0, "y": math.inf}, {"x": 3, "y": 0})
    c.put("b", {"y": 2.0}, {"y": 5})
    m = c.get_matrix(["a", "b", "new"], ["x", "y"])
    assert m.shape == (3, 2) and m.dtype == np.float64
    assert m[0, 0] == 1.0 and m[0, 1] == math.inf and m[1, 1] == 2.0
    assert np.isnan(m[1, 0]) and np.isnan(m[2]).all()
    assert c.get_ntokens(["a", "b"], ["x", "y"]).tolist() == [[3, 0], [-1, 5]]
    assert c.missing(["a", "b", "new"], ["x", "y"]) == {"a": [], "b": ["x"], "new": ["x", "y"]}
    assert c.missing("b", ["y", "x", "z"]) == ["x", "z"]  # one key: its list
    c.reset_model("a")
    assert c.missing(["a"], ["x", "y"]) == {"a": ["x", "y"]}
    with pytest.raises(ValueError, match="sample z"):
        c.put("a", {"z": "1.0"})


def test_pick_prefers_missing_and_is_deterministic():
    db = make_db(min_samples=20, max_samples=20)
    db.refresh(CountingSource(), 0, now=0.0)
    ids = db.ids()
    c = LossCache()
    c.put("a", fake_losses("a", ids[:15]))
    c.put("b", fake_losses("b", ids[5:]))
    # missing for both: none; for one: ids[:5] (b) and ids[15:] (a); for none: ids[5:15]
    picked = pick_eval_samples(db, c, ["a", "b"], 8, seed=7)
    assert set(picked[:10]) <= set(ids[:5]) | set(ids[15:])
    assert set(picked) <= set(ids[:5]) | set(ids[15:])
    assert picked == pick_eval_samples(db, c, ["a", "b"], 8, seed=7)
    assert picked != pick_eval_samples(db, c, ["a", "b"], 8, seed=8)  # ties broken by the seed
    # a newcomer "n" is missing everything: the samples no one has come first
    c.reset_model("b")
    assert set(pick_eval_samples(db, c, ["a", "n"], 5, seed=1)) == set(ids[15:])


def test_pick_does_not_depend_on_db_insertion_order():
    items = [(f"id{i}", f"t{i}") for i in range(30)]
    db1, db2 = make_db(min_samples=30, max_samples=30), make_db(min_samples=30, max_samples=30)
    db1.add(items, now=0)
    db2.add(items[::-1], now=0)
    assert pick_eval_samples(db1, LossCache(), ["m"], 10, 3) == pick_eval_samples(db2, LossCache(), ["m"], 10, 3)


def run_round(db, cache, models, n, seed):
    """One validator step as the loop does it; returns how many losses were computed."""
    sample_ids = pick_eval_samples(db, cache, models, n, seed)
    computed = 0
    for key in models:
        missing = cache.missing([key], sample_ids)[key]
        rechecks = pick_rechecks(cache, key, sample_ids, seed)
        cache.put(key, fake_losses(key, missing), {s: 10 for s in missing})
        computed += len(missing)
        assert verify_rechecks(cache, key, fake_losses(key, rechecks))
    return computed, sample_ids


def test_second_round_needs_only_rechecks():
    db = make_db(min_samples=100, max_samples=100)
    db.refresh(CountingSource(), 0, now=0.0)
    cache = LossCache()
    models = ["m1", "m2", "m3"]
    computed, ids = run_round(db, cache, models, 100, seed=1)
    assert computed == 300
    missing = cache.missing(models, pick_eval_samples(db, cache, models, 100, seed=2))
    assert sum(map(len, missing.values())) == 0
    assert [len(pick_rechecks(cache, k, ids, 2)) for k in models] == [2, 2, 2]  # 2 % of 100
    computed, _ = run_round(db, cache, models, 100, seed=2)
    assert computed == 0
    # a newcomer costs exactly its own row
    computed, _ = run_round(db, cache, models + ["m4"], 100, seed=3)
    assert computed == 100


def test_rechecks_count_and_cap():
    c = LossCache()
    ids = [f"s{i}" for i in range(1000)]
    c.put("m", fake_losses("m", ids[:700]))
    r = pick_rechecks(c, "m", ids, seed=5)
    assert len(r) == constants.RECHECK_MAX and set(r) <= set(ids[:700])
    assert r == pick_rechecks(c, "m", ids, seed=5)
    assert len(pick_rechecks(c, "m", ids[:100], seed=5)) == 2
    assert len(pick_rechecks(c, "m", ids[:10], seed=5)) == 1  # something cached: at least one
    assert pick_rechecks(c, "m", ids[700:], seed=5) == []
    assert pick_rechecks(c, "other", ids, seed=5) == []


def test_tampered_loss_is_caught_and_row_reset():
    c = LossCache()
    ids = [f"s{i}" for i in range(50)]
    truth = fake_losses("m", ids)
    c.put("m", truth)
    c.put("other", fake_losses("other", ids))
    # within tolerance: accepted
    near = {s: v * (1 + constants.RECHECK_TOLERANCE / 2) for s, v in truth.items()}
    assert verify_rechecks(c, "m", near)
    c._rows["m"]["s3"] = (truth["s3"] * 0.9, 0)  # tampered on disk, say
    assert verify_rechecks(c, "m", {"s1": truth["s1"], "s2": truth["s2"]})  # not rechecked: unnoticed
    assert not verify_rechecks(c, "m", {"s3": truth["s3"]})
    assert c.cached("m") == []
    assert len(c.cached("other")) == 50  # other models untouched


def test_recheck_compares_inf_and_nan():
    c = LossCache()
    c.put("m", {"a": math.inf, "b": math.nan, "c": 0.0})
    assert verify_rechecks(c, "m", {"a": math.inf, "b": math.nan, "c": 0.0})
    assert not verify_rechecks(c, "m", {"a": 5.0})
    c.put("m", {"b": math.nan})
    assert not verify_rechecks(c, "m", {"b": 1.0})


# --- FirstSeen --------------------------------------------------------------------------


def test_first_seen_earliest_block_wins_and_survives_restart(tmp_path):
    ec = EvalCache(make_db())
    fs = ec.first_seen
    assert fs.observe("h1", "alice", 100) == "alice"
    assert fs.observe("h1", "bob", 150) == "alice"  # bob copied
    assert fs.observe("h1", "carol", 90) == "carol"  # an earlier commitment seen late
    assert fs.observe("h1", "alice", 100) == "carol"
    assert fs.observe("h2", "zed", 5) == "zed"
    assert fs.observe("h2", "amy", 5) == "amy"  # same block: smaller hotkey, on every validator
    path = tmp_path / "cache.json"
    ec.save(path)
    fs2 = EvalCache.load(path).first_seen
    assert fs2.get("h1") == ("carol", 90) and fs2.get("h2") == ("amy", 5)
    assert fs2.observe("h1", "dave", 500) == "carol"


# --- persistence ------------------------------------------------------------------------


def test_save_forgets_losses_of_samples_outside_the_db(tmp_path):
    ec = EvalCache(make_db(min_samples=5, max_samples=5, extend_samples=5))
    ec.db.refresh(CountingSource(), 1, now=0.0)
    old = ec.db.ids()
    ec.losses.put("m", fake_losses("m", old))
    ec.db.refresh(CountingSource(), 2, now=1000.0)  # straight on the db: the cache was not told
    ec.save(tmp_path / "c.json")
    back = EvalCache.load(tmp_path / "c.json", min_samples=5, max_samples=5)
    assert back.losses.cached("m") == [] and back.db.ids() == ec.db.ids()


def test_save_load_round_trip_and_missing_file(tmp_path):
    ec = EvalCache(make_db())
    ec.refresh(CountingSource(), 4, now=12.5)
    ids = ec.db.ids()
    ec.losses.put("m", {**fake_losses("m", ids[:4]), ids[4]: math.inf}, {s: 7 for s in ids})
    path = tmp_path / "state" / "evalcache.json"
    ec.save(path)
    back = EvalCache.load(path, **dict(min_samples=10, max_samples=25, extend_samples=5, extend_interval=100.0))
    assert back.db.ids() == ids and back.db.texts(ids) == ec.db.texts(ids)
    assert back.db.last_extend == 12.5 and back.db.wanted(50.0) == 0
    np.testing.assert_array_equal(back.losses.get_matrix(["m"], ids), ec.losses.get_matrix(["m"], ids))
    np.testing.assert_array_equal(back.losses.get_ntokens(["m"], ids), ec.losses.get_ntokens(["m"], ids))
    empty = EvalCache.load(tmp_path / "none.json")
    assert len(empty.db) == 0 and empty.losses.models() == []


def test_load_trims_to_a_smaller_cap(tmp_path):
    ec = EvalCache(make_db())
    ec.refresh(CountingSource(), 4, now=0)
    ec.losses.put("m", fake_losses("m", ec.db.ids()))
    ec.save(tmp_path / "c.json")
    back = EvalCache.load(tmp_path / "c.json", min_samples=4, max_samples=4)
    assert back.db.ids() == ec.db.ids()[-4:]
    assert sorted(back.losses.cached("m")) == sorted(ec.db.ids()[-4:])


@pytest.mark.parametrize("content", [b'{"version": 1, "db": ', b'{"version": 1, "db": {"samples": 3}}',
                                     b'[1, 2]', b'{"version": 99}'])
def test_corrupt_file_gives_clear_error(tmp_path, content):
    path = tmp_path / "evalcache.json"
    path.write_bytes(content)
    with pytest.raises(StateError) as e:
        EvalCache.load(path)
    assert str(path) in str(e.value)


finite_or_special = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(math.inf))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), n_models=st.integers(1, 4), n_samples=st.integers(0, 8))
def test_save_load_round_trip_property(tmp_path, data, n_models, n_samples):
    """Any matrix of losses (inf, -inf, nan stored; some entries never computed) survives."""
    models = [f"model-{i}" for i in range(n_models)]
    sids = [f"d/f.parquet/{i}" for i in range(n_samples)]
    ec = EvalCache(make_db(min_samples=max(n_samples, 1), max_samples=max(n_samples, 1)))
    ec.db.add([(s, f"t{s}") for s in sids], now=1.0)
    for m in models:
        present = data.draw(st.lists(st.booleans(), min_size=n_samples, max_size=n_samples))
        vals = data.draw(st.lists(finite_or_special, min_size=n_samples, max_size=n_samples))
        toks = data.draw(st.lists(st.integers(0, 10**6), min_size=n_samples, max_size=n_samples))
        ec.losses.put(m, {s: v for s, v, p in zip(sids, vals, present) if p},
                      {s: t for s, t in zip(sids, toks)})
    path = tmp_path / "prop.json"
    ec.save(path)
    back = EvalCache.load(path, min_samples=max(n_samples, 1), max_samples=max(n_samples, 1))
    a, b = ec.losses.get_matrix(models, sids), back.losses.get_matrix(models, sids)
    np.testing.assert_array_equal(a, b)  # equal_nan: nan positions must match too
    assert back.losses.missing(models, sids) == ec.losses.missing(models, sids)
    np.testing.assert_array_equal(back.losses.get_ntokens(models, sids), ec.losses.get_ntokens(models, sids))


def test_save_writes_the_texts_only_when_the_database_changed(tmp_path):
    from validator.adapters.evalcache import EvalCache
    from validator.adapters.sampledb import SampleDB

    cache = EvalCache(SampleDB(min_samples=3, max_samples=4, extend_samples=1, extend_interval=10))
    cache.db.add([("a", "alpha"), ("b", "beta"), ("c", "gamma")], now=0.0)
    path = tmp_path / "cache.json"
    cache.save(path)
    texts = EvalCache.samples_path(path)
    assert json.loads(texts.read_text())["samples"][0][:2] == ["a", "alpha"]
    assert "alpha" not in path.read_text()  # the per-model saves stay small
    inode = texts.stat().st_ino
    cache.losses.put("m", {"a": 1.5}, {"a": 2})
    cache.save(path)
    assert texts.stat().st_ino == inode  # not rewritten: nothing in the database changed
    cache.db.add([("d", "delta"), ("e", "eps")], now=20.0)  # cap 4: "a" is dropped
    cache.save(path)
    assert texts.stat().st_ino != inode
    again = EvalCache.load(path)
    assert again.db.ids() == ["b", "c", "d", "e"] and again.db.text("e") == "eps"


def test_crash_between_texts_and_losses_keeps_the_losses_of_kept_samples(tmp_path):
    from validator.adapters.evalcache import EvalCache
    from validator.adapters.sampledb import SampleDB

    cache = EvalCache(SampleDB(min_samples=2, max_samples=2, extend_samples=1, extend_interval=10))
    cache.db.add([("a", "alpha"), ("b", "beta")], now=0.0)
    cache.losses.put("m", {"a": 1.0, "b": 2.0}, {"a": 1, "b": 1})
    path = tmp_path / "cache.json"
    cache.save(path)
    index_before = path.read_text()
    cache.db.add([("c", "gamma")], now=20.0)  # drops "a"
    cache.save(path)
    path.write_text(index_before)  # as if killed after the texts were written, before the index
    again = EvalCache.load(path)
    assert again.db.ids() == ["b", "c"]
    assert again.losses.get("m", "b") == 2.0 and again.losses.get("m", "a") is None


def test_touch_is_saved(tmp_path):
    # the order is the age: a re-added id must stay newest after a save and load
    ec = EvalCache(make_db(min_samples=2, max_samples=3))
    ec.db.add([("a", "A"), ("b", "B"), ("c", "C")], now=0.0)
    path = tmp_path / "c.json"
    ec.save(path)
    ec.db.add([("a", "A")], now=5.0)
    ec.save(path)
    back = EvalCache.load(path, min_samples=2, max_samples=3)
    assert back.db.ids() == ["b", "c", "a"]
    back.db.add([("d", "D")], now=6.0)
    assert back.db.ids() == ["c", "a", "d"]


def test_configure_shrinks_the_cap_dropping_oldest_with_their_losses():
    ec = EvalCache(make_db(min_samples=5, max_samples=10, extend_samples=5))
    ec.db.add([(f"s{i}", f"t{i}") for i in range(10)], now=0.0)
    ec.losses.put("m", fake_losses("m", ec.db.ids()))
    r = ec.configure(min_samples=4, max_samples=6)
    assert r.dropped == ["s0", "s1", "s2", "s3"] and ec.db.ids() == [f"s{i}" for i in range(4, 10)]
    assert sorted(ec.losses.cached("m")) == sorted(ec.db.ids())
    assert (ec.db.extend_samples, ec.db.extend_interval) == (5, 100.0)  # None keeps a value
    # a longer interval applies to the next refresh
    ec.db.last_extend = 0.0
    ec.configure(extend_interval=500)
    assert ec.db.wanted(400.0) == 0 and ec.db.wanted(501.0) == 5


def test_configure_refuses_bad_sizes_and_changes_nothing():
    db = make_db()
    before = (db.min_samples, db.max_samples, db.extend_samples, db.extend_interval)
    with pytest.raises(ValueError, match="min_samples"):
        db.configure(min_samples=30)  # above max_samples 25
    with pytest.raises(ValueError, match="extend_interval"):
        db.configure(extend_interval=float("nan"))
    assert (db.min_samples, db.max_samples, db.extend_samples, db.extend_interval) == before
    with pytest.raises(ValueError, match="max_samples=2.5"):
        SampleDB(min_samples=1, max_samples=2.5)


def test_a_file_written_before_paged_sampling_still_loads(tmp_path):
    """The persisted form did not change with paged sampling (ids are still
    <dump>/<shard file>/<row>): both layouts written earlier load as they are."""
    sid = "CC-MAIN-2024-10/000_00000.parquet/17"
    # one document (texts inside), the first layout
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"version": 1, "losses": {"m": {sid: [2.5, 7], "gone": ["inf", 0]}},
                               "first_seen": {"h": ["alice", 10]},
                               "db": {"last_extend": 50.0, "samples": [[sid, "some text", 40.0]]}}))
    back = EvalCache.load(one)
    assert back.db.ids() == [sid] and back.db.text(sid) == "some text" and back.db.last_extend == 50.0
    assert back.losses.get("m", sid) == 2.5 and back.losses.get("m", "gone") is None  # not in the db
    assert back.first_seen.get("h") == ("alice", 10)
    # index + sibling texts file, the current layout
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"version": 1, "losses": {"m": {sid: [1.0, 3]}}, "first_seen": {}}))
    EvalCache.samples_path(two).write_text(json.dumps({"last_extend": None, "samples": [[sid, "t", 1.0]]}))
    back = EvalCache.load(two)
    assert back.db.ids() == [sid] and back.losses.get("m", sid) == 1.0 and back.db.wanted(0.0) > 0
