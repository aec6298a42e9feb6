"""validator/adapters/sampledb.py: the sample database (fill, extend, cap) and its sizes from
competitions.json."""
import pytest

from validator.adapters.sampledb import SampleDB, sample_db_settings
from tests.test_evalcache import CountingSource, make_db


# --- SampleDB ---------------------------------------------------------------------------


def test_db_fills_to_min_then_extends_on_interval_and_caps_dropping_oldest():
    db, src = make_db(), CountingSource()
    r = db.refresh(src, seed=1, now=0.0)
    assert len(db) == 10 and len(r.added) == 10 and r.dropped == []
    assert db.refresh(src, seed=2, now=50.0).added == []  # interval not over: nothing asked
    assert src.calls == [(1, 10)]
    # live extends when now - last > interval, strictly: exactly the interval is not enough
    assert db.refresh(src, seed=2, now=100.0).added == [] and len(src.calls) == 1
    db.refresh(src, seed=2, now=100.5)
    assert len(db) == 15 and src.calls[-1] == (2, 5)
    for i, now in enumerate((201.0, 301.5)):
        db.refresh(src, seed=3 + i, now=now)
    assert len(db) == 25
    r = db.refresh(src, seed=9, now=402.0)
    assert len(db) == 25  # capped
    assert r.dropped == [f"s1-{i}" for i in range(5)]  # the five oldest
    assert db.ids()[:5] == [f"s1-{i}" for i in range(5, 10)]
    assert db.ids()[-5:] == [f"s9-{i}" for i in range(5)]
    assert db.texts(["s9-0", "s2-4"]) == ["text 9 0", "text 2 4"]
    assert db.texts(["s9-1"]) == ["text 9 1"]
    with pytest.raises(KeyError, match="s1-0"):
        db.texts(["s1-0"])


def test_db_refresh_with_known_ids_adds_nothing_twice():
    db = make_db()
    db.refresh(CountingSource(), seed=1, now=0.0)
    r = db.refresh(CountingSource(), seed=1, now=1000.0)  # same seed, same ids
    assert r.added == [] and len(db) == 10


# --- adding at the cap: what a caller adds is never what the cap drops ----------------------


def test_add_at_the_cap_keeps_every_id_of_the_batch():
    db = make_db(min_samples=5, max_samples=10)
    db.add([(f"old{i}", f"t{i}") for i in range(10)], now=0.0)  # full, old0 the oldest
    # 6 known ids (the oldest ones, which the old logic left in place and then trimmed) + 3 new:
    # 9 ids, of which the old logic kept only the 3 new and old{4,5} after dropping 3
    batch = [(f"old{i}", "ignored: an id names one text forever") for i in range(6)] + \
            [(f"new{i}", f"n{i}") for i in range(3)]
    r = db.add(batch, now=1.0)
    assert len(db) == 10
    assert all(sid in db for sid, _ in batch)
    assert db.texts([f"old{i}" for i in range(6)]) == [f"t{i}" for i in range(6)]
    assert r.added == ["new0", "new1", "new2"]
    assert r.dropped == ["old6", "old7", "old8"]  # the oldest of those not re-added
    assert db.ids() == ["old9"] + [sid for sid, _ in batch]  # the batch is newest, in its order


def test_add_a_batch_of_exactly_the_cap_replaces_everything_else():
    db = make_db(min_samples=5, max_samples=10)
    db.add([(f"a{i}", "x") for i in range(10)], now=0.0)
    batch = [(f"a{i}", "x") for i in range(0, 10, 2)] + [(f"b{i}", "y") for i in range(5)]
    r = db.add(batch, now=1.0)
    assert db.ids() == [sid for sid, _ in batch] and sorted(r.dropped) == [f"a{i}" for i in range(1, 10, 2)]


def test_add_refuses_a_batch_bigger_than_the_cap_and_changes_nothing():
    db = make_db(min_samples=5, max_samples=10)
    db.add([(f"a{i}", "x") for i in range(10)], now=0.0)
    before, changes = db.ids(), db.changes
    with pytest.raises(ValueError, match="cap of 10"):
        db.add([(f"b{i}", "y") for i in range(11)], now=1.0)
    assert db.ids() == before and db.changes == changes
    # duplicates and garbage rows do not count against the cap
    db.add([("b0", "y")] * 20 + [("", "no id"), ("c", " ")] * 5, now=2.0)
    assert db.ids()[-1] == "b0" and len(db) == 10


def test_refresh_never_asks_for_more_than_the_cap():
    db, src = make_db(min_samples=2, max_samples=3, extend_samples=5), CountingSource()
    db.refresh(src, seed=1, now=0.0)
    r = db.refresh(src, seed=2, now=1000.0)
    assert src.calls[-1] == (2, 3) and len(db) == 3 and r.added == ["s2-0", "s2-1", "s2-2"]


def test_usable_rows_keeps_order_first_text_and_skips_garbage():
    rows = SampleDB.usable_rows([("b", "1"), ("a", "2"), ("b", "3"), ("", "x"), ("c", ""), (1, "y"), "zz", ("d", "4")])
    assert rows == {"b": "1", "a": "2", "d": "4"} and list(rows) == ["b", "a", "d"]


# --- sizes from competitions.json, changed at run time -------------------------------------


def test_sample_db_settings_follow_the_live_keys_and_defaults():
    # the live validator's constants.defaults (v1.0.16): 2000 / 20000 / 500 every 3600*4 s
    assert sample_db_settings({}) == {"min_samples": 2000, "max_samples": 20000,
                                      "extend_samples": 500, "extend_interval": 4 * 3600}
    live_default_block = {"group_samples": 10, "rows_per_page": 50, "db_min_samples": 300.0,
                          "db_max_samples": 900, "db_extend_samples": 50, "db_extend_interval": 90.5}
    got = sample_db_settings(live_default_block)
    assert got == {"min_samples": 300, "max_samples": 900, "extend_samples": 50, "extend_interval": 90.5}
    assert isinstance(got["min_samples"], int)  # 300.0 read leniently, as live does
    db = SampleDB(**got)
    assert (db.min_samples, db.max_samples, db.extend_samples, db.extend_interval) == (300, 900, 50, 90.5)


@pytest.mark.parametrize("config, message", [
    ({"db_min_samples": "2000"}, "db_min_samples '2000': must be a number"),
    ({"db_max_samples": True}, "db_max_samples True: must be a number"),
    ({"db_extend_samples": 2.5}, "db_extend_samples 2.5: must be a whole number"),
    ({"db_extend_interval": -1}, "db_extend_interval -1: must be >= 0"),
    ({"db_min_samples": 0}, "db_min_samples 0: must be >= 1"),
    ({"db_min_samples": 50, "db_max_samples": 40}, "db_min_samples 50 exceeds db_max_samples 40"),
    ({"db_extend_interval": float("inf")}, "db_extend_interval inf: must be a number"),
])
def test_sample_db_settings_name_the_bad_key(config, message):
    with pytest.raises(ValueError, match=message):
        sample_db_settings(config)
