"""Weight setting under random faults and random (NaN/inf included) losses, over many steps:
never all-zero or NaN, version key sent, rate limited (wall clock), a failed set retried next
step without blocking scoring, nothing set from a stale metagraph or from nothing."""
from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import tally
from tests.reliability.world import VAL, FakeField, assert_weights_sane, rows
from validator.core.scores import ScoreResult

EXAMPLES = itertools.count()
step_faults = st.fixed_dictionaries({
    "sync": st.booleans(), "set": st.booleans(), "block_hash": st.booleans(),
    "advance": st.sampled_from([0, 1, 60, 150]),  # blocks
    "wait": st.sampled_from([0, 60, 16 * 60, 35 * 60, 2 * 3600]),  # seconds of the validator's clock
    "broken": st.sets(st.sampled_from(["m1", "m2", "m3", "m4"])),  # scoring fails for these
    "nan": st.sets(st.sampled_from(["m1", "m2", "m3", "m4"])),  # these give NaN/inf losses
})


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.lists(step_faults, min_size=3, max_size=8))
def test_weights_under_random_faults(plan):
    with tempfile.TemporaryDirectory() as tmp:
        f = FakeField(Path(tmp), {"m1": 1.0, "m2": 0.9, "m3": 0.95, "m4": 1.1})
        example = next(EXAMPLES)
        v = f.validator()
        interval = v.settings.weights_interval_s
        score = f.score

        def faulty_score(path, samples, comp, step_samples=None):
            name = path.name
            if name in step["broken"]:
                tally.fault_fired("scoring crashed in a weights step")  # this call failed
                return ScoreResult({}, {}, "crashed: killed by SIGSEGV", 0.0)
            out = score(path, samples, comp, step_samples=step_samples)
            if name in step["nan"]:  # reaches ranking: the stage that must survive it
                tally.bad_input_reached("NaN/inf losses", (example, step_no, name))
                out.losses = {sid: (math.nan if i % 2 else math.inf) for i, sid in enumerate(out.losses)}
            return out

        v.score = faulty_score
        last_set_at = None
        for step_no, step in enumerate(plan):
            f.local.advance(step["advance"])
            f.clock.advance(step["wait"])
            # the pool (7 places) holds all four once visited: the faults of this step apply to all
            f.chain.fail_sync, f.chain.fail_set, f.chain.fail_block_hash = \
                int(step["sync"]), int(step["set"]), int(step["block_hash"])
            n_sets = len(f.chain.sets)
            now, had_weights = f.clock(), any(v.state.ema)
            r = v.step()
            called = len(f.chain.sets) > n_sets
            if r["block"] is None or step["sync"]:
                assert not called, "weights set from a stale or missing metagraph"
                continue
            # scoring never blocked: every model in the table, the broken ones failed with a reason
            table = rows(r)
            assert len(table) == 4
            for m in table.values():
                if m["hotkey"] in step["broken"]:
                    assert m["status"] == "failed" and "SIGSEGV" in m["reason"]
            healthy = {"m1", "m2", "m3", "m4"} - step["broken"] - step["nan"]
            due = last_set_at is None or now - last_set_at >= interval
            assert all(math.isfinite(w) and w >= 0 for w in v.state.ema)
            assert not v.state.ema or abs(sum(v.state.ema) - 1) < 1e-4
            if called:
                assert due, "rate limit broken"
                scored = [m for m in table.values() if m["status"] in ("scored", "cached")]
                # with every model failed, live keeps each competition's last weights and sets them
                assert scored or had_weights, "weights set from nothing (no model scored, none before)"
                uids, weights, vk = f.chain.sets[-1]
                assert vk == v.settings.version_key
                if not step["set"]:
                    last_set_at = now
                    assert r["weights_set"].startswith("set")
            elif due and healthy and not step["set"]:
                raise AssertionError(f"weights due and a model is healthy but not set: {r['weights_set']}")
            if step["set"] and called:
                assert "retried" in r["weights_set"]
        assert_weights_sane(f.chain, v.settings.version_key)
        rec = f.local.weights_record(VAL)
        if rec is not None:
            assert abs(sum(rec.weights.values()) - 1) < 1e-9 and all(w > 0 for w in rec.weights.values())


def test_every_model_failing_sets_nothing_from_nothing_and_keeps_the_last_weights_as_live(tmp_path):
    f = FakeField(tmp_path, {"m1": 1.0, "m2": 0.9})
    v = f.validator()
    f.score_faults = {"m1": "crashed: killed by SIGSEGV", "m2": "timeout"}
    r = v.step()  # the first step: nothing was ever scored, nothing to set
    assert r["weights_set"].startswith("not set: no model has weight this step") and f.chain.sets == []
    assert v.state.ema == []
    f.score_faults = {}
    f.local.advance(1)
    assert v.step()["weights_set"].startswith("set")  # recovered: both failed models stayed in the pool
    first, ema = f.local.weights_of(VAL), list(v.state.ema)
    assert set(first) == {f.uid("m2")}  # the better model takes it all (m1 wins no sample)
    f.score_faults = {"m1": "crashed: killed by SIGSEGV", "m2": "timeout"}
    f.local.advance(150)
    f.clock.advance(v.settings.weights_interval_s)
    r = v.step()
    # live: nothing is computed, the competition keeps its last weights and sets them again; the
    # average moves toward those weights (itself), never toward zero
    assert r["weights_set"].startswith("set") and len(f.chain.sets) == 2
    assert f.local.weights_of(VAL) == first and v.state.ema == ema
    assert {m["status"] for m in rows(r).values()} == {"failed"}
