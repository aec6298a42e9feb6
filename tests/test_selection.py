"""validator.core.selection: the revisit slice, priorities, top miners, visits and the step pick."""
import pytest

import constants
from validator.core import selection as S
from validator.core import visits as V
from validator.core.chain import Metagraph

PERIOD = constants.REVISIT_SLICE_PERIOD_S
SLOT_S = PERIOD / 256  # wall-clock seconds per slot


def t_at_slot(slot: int, day: int = 10_000) -> float:
    # a little into the slot, so float rounding never moves the boundary
    return day * PERIOD + slot * SLOT_S + 1


# --- the revisit slice ---------------------------------------------------------------------------

def test_revisit_slice_runs_from_the_last_end_to_the_clock_slot():
    assert V.revisit_slice(t_at_slot(80), 78) == ([78, 79], 80)


def test_revisit_slice_wraps_past_the_last_uid():
    uids, until = V.revisit_slice(t_at_slot(3), 250)
    assert uids == [250, 251, 252, 253, 254, 255, 0, 1, 2] and until == 3


def test_revisit_slice_first_time_is_the_ten_before_the_slot_and_wraps_below_zero():
    assert V.revisit_slice(t_at_slot(40), None) == (list(range(30, 40)), 40)
    assert V.revisit_slice(t_at_slot(4), None) == ([250, 251, 252, 253, 254, 255, 0, 1, 2, 3], 4)


def test_revisit_slice_keeps_the_last_ten_of_a_long_gap_and_a_full_turn_when_the_slot_repeats():
    assert V.revisit_slice(t_at_slot(100), 20) == (list(range(90, 100)), 100)
    # the same slot as last time: live's ranges wrap a whole turn; the last ten remain
    assert V.revisit_slice(t_at_slot(5), 5) == ([251, 252, 253, 254, 255, 0, 1, 2, 3, 4], 5)


def test_revisit_slice_uses_whole_seconds_of_the_wall_clock():
    # int(t) first: 0.9 s more never reaches the next slot boundary computed on whole seconds
    boundary = 10_000 * PERIOD + 675  # 675 s = exactly one slot (172800 / 256)
    assert V.revisit_slice(boundary - 0.1, 0)[1] == 0
    assert V.revisit_slice(boundary, 0)[1] == 1


# --- top miners ----------------------------------------------------------------------------------

def test_top_miners_take_more_than_five_percent_of_each_validator():
    v = V.ValidatorView(1, 100.0, 0, {10: 0.90, 11: 0.05, 12: 0.0501, 13: 0.0})
    assert V.top_miners([v]) == [10, 12]  # exactly 5% is not more than 5%


def test_top_miners_skip_idle_validators_without_refilling_their_slot():
    fresh = [V.ValidatorView(uid, 1000.0 - uid, 0, {100 + uid: 1.0}) for uid in range(10)]
    idle = V.ValidatorView(50, 5000.0, constants.TOP_MINER_MAX_VALIDATOR_IDLE_BLOCKS + 1, {200: 1.0})
    at_limit = V.ValidatorView(51, 4000.0, constants.TOP_MINER_MAX_VALIDATOR_IDLE_BLOCKS, {201: 1.0})
    got = V.top_miners(fresh + [idle, at_limit])
    # idle (largest stake) is cut but still takes one of the 10 slots: the smallest fresh one is out
    assert 200 not in got and 201 in got
    assert got == sorted([201] + [100 + uid for uid in range(8)])


def test_top_validators_by_stake_ties_go_to_the_higher_uid():
    vals = [V.ValidatorView(uid, 1.0, 0, {100 + uid: 1.0}) for uid in range(12)]
    assert V.top_miners(vals) == [100 + uid for uid in range(2, 12)]


def test_validators_from_metagraph_keeps_permit_holders_with_their_idle_blocks():
    meta = Metagraph(block=5000, block_hash="0x", uids=[0, 1, 2], hotkeys=["a", "b", "c"], coldkeys=["", "", ""],
                     stake=[10.0, 20.0, 30.0], incentive=[0, 0, 0], validator_permit=[True, False, True],
                     last_update=[4000, 4999, 3000], weights={0: {1: 1.0}})
    got = V.validators_from_metagraph(meta)
    assert [(v.uid, v.stake, v.idle_blocks, dict(v.weights)) for v in got] == [(0, 10.0, 1000, {1: 1.0}),
                                                                              (2, 30.0, 2000, {})]
    assert V.top_miners(got) == [1]


# --- priorities and the step pick ----------------------------------------------------------------

def test_priority_order_is_priority_then_uid_descending():
    cs = S.CompetitionState(pool=[3, 9], pending={7: 40.5, 12: 40.5, 5: 60, 1: 80.2, 9: 20.0})
    # pool members count 100 (9 is also pending: the pool wins); equal priorities: higher uid first
    assert S.priority_order(cs) == [9, 3, 1, 5, 12, 7]


def test_pick_takes_pool_plus_pend_size_and_updates_pending():
    cs = S.CompetitionState(pool=[1, 2], pending={10: 40.3, 11: 40.9, 12: 20.7, 13: 20.1, 14: 41.0})
    pick = S.pick_step(cs, pool_size=2, pend_size=2)
    assert pick.evaluated == [2, 1, 14, 11]
    # picked leave pending; not picked stay at >= 40 and leave below it
    assert pick.state.pending == {10: 40.3}
    assert pick.state.pool == [2, 1, 14, 11]
    assert cs.pending == {10: 40.3, 11: 40.9, 12: 20.7, 13: 20.1, 14: 41.0}  # input untouched


def test_pick_with_the_eval_cache_keeps_only_uids_with_a_loss_matrix_index():
    cs = S.CompetitionState(pool=[1, 2, 3], pending={10: 40.3, 11: 40.9})
    pick = S.pick_step(cs, pool_size=3, pend_size=1, has_index={1, 3, 10})
    assert pick.evaluated == [3, 1, 10]
    assert pick.state.pending == {11: 40.9}


def test_pick_refuses_an_empty_pool_size():
    with pytest.raises(S.SelectionError, match="pool_size"):
        S.pick_step(S.CompetitionState(), pool_size=0, pend_size=3)


class Outcome:
    def __init__(self, weights, next_pool, discarded):
        self.weights, self.next_pool, self.discarded = weights, next_pool, discarded


def state_with(pool, pending=None, held=None):
    return S.SelectionState({"c00": S.CompetitionState(pool, pending or {}, {1: 0.5})}, held or {})


def test_finish_maps_indices_to_uids_and_marks_discards_but_never_benchmarks():
    held = {u: S.Commit(f"k{u}", "c00", 100 + u) for u in (1, 2, 3)}
    st = state_with([1, 2], {3: 40.5, 200: 60}, held)
    pick = S.pick_step(st.competitions["c00"], pool_size=2, pend_size=2)
    assert pick.evaluated == [2, 1, 200, 3]
    fin = S.finish_step(st, "c00", pick, Outcome([0.0, 0.0, 1.0, 0.0], [1, 2], [0, 2, 3]), injected={200})
    assert fin.next_pool == [1, 200] and fin.state.competitions["c00"].pool == [1, 200]
    assert fin.weights == {2: 0.0, 1: 0.0, 200: 1.0, 3: 0.0}
    assert fin.discarded == [2, 3] and fin.state.discarded == {"k2", "k3"}
    assert st.discarded == set()


def test_finish_keeps_previous_weights_when_the_step_computes_none():
    st = state_with([1, 2])
    pick = S.pick_step(st.competitions["c00"], pool_size=2, pend_size=1)
    fin = S.finish_step(st, "c00", pick, Outcome(None, [0, 1], []))
    assert fin.weights == {1: 0.5} and fin.next_pool == [2, 1]
    empty = S.finish_step(S.SelectionState({"c00": S.CompetitionState([], {}, {1: 0.5})}), "c00",
                          S.pick_step(S.CompetitionState([], {}, {1: 0.5}), pool_size=2, pend_size=1), None)
    assert empty.weights == {} and empty.next_pool == []


def test_finish_refuses_an_index_outside_the_evaluated_list():
    st = state_with([1, 2])
    pick = S.pick_step(st.competitions["c00"], pool_size=2, pend_size=1)
    with pytest.raises(S.SelectionError, match="index 5 outside the 2 evaluated"):
        S.finish_step(st, "c00", pick, Outcome([0.5, 0.5], [5], []))


# --- the chain update ----------------------------------------------------------------------------

WALL = t_at_slot(80)


def update(state, chain, results=None, validators=(), n_uids=20, **kw):
    calls = []

    def visit(uid, commit):
        calls.append(uid)
        return (results or {}).get(uid, S.VisitResult.OK)

    up = S.update_chain(state, competitions=kw.pop("competitions", ["c00", "c01"]), chain=chain, n_uids=n_uids,
                        validators=validators, wall_clock=kw.pop("wall_clock", WALL), visit=visit,
                        fractions=kw.pop("fractions", lambda uid: 0.25), **kw)
    assert up.visited == calls
    return up


def c(uid, comp="c00", v=0):
    return S.Commit(f"hk{uid}/m{uid}.{v}", comp, 1000 + uid + v)


def test_a_pool_member_that_recommits_is_downloaded_and_moves_competition():
    st = S.SelectionState({"c00": S.CompetitionState([1, 2]), "c01": S.CompetitionState([3])},
                          {1: c(1), 2: c(2), 3: c(3, "c01")}, force_eval_until_uid_last=78)
    up = update(st, {1: c(1), 2: c(2, "c01", v=1), 3: c(3, "c01")})
    assert up.visited == [2] and up.synced == [2]
    assert up.state.competitions["c00"].pool == [1]
    assert up.state.competitions["c01"].pending == {2: 40.25}
    assert up.state.held[2] == c(2, "c01", v=1)


def test_a_recommit_in_the_same_competition_keeps_the_pool_slot_with_the_new_model():
    st = S.SelectionState({"c00": S.CompetitionState([1])}, {1: c(1)}, force_eval_until_uid_last=78)
    up = update(st, {1: c(1, v=1)}, competitions=["c00"])
    assert up.synced == [1] and up.state.competitions["c00"].pool == [1]
    assert up.state.competitions["c00"].pending == {} and up.state.held[1] == c(1, v=1)


def test_a_pool_member_whose_commitment_is_gone_leaves_every_competition():
    st = S.SelectionState({"c00": S.CompetitionState([1, 2])}, {1: c(1), 2: c(2)}, force_eval_until_uid_last=78)
    up = update(st, {1: c(1)}, competitions=["c00"])
    assert up.visited == [] and up.state.competitions["c00"].pool == [1] and up.state.held[2] is None


def test_a_transient_failure_is_tried_again_and_a_permanent_one_waits_for_a_new_commitment():
    st = S.SelectionState({"c00": S.CompetitionState()}, force_eval_until_uid_last=78)
    chain = {5: c(5), 6: c(6)}
    up = update(st, chain, {5: S.VisitResult.RETRY, 6: S.VisitResult.FAILED})
    assert up.visited == [5, 6] and up.synced == [] and up.state.competitions["c00"].pending == {}
    assert 5 not in up.state.held and up.state.held[6] == c(6)
    again = update(up.state, chain, {5: S.VisitResult.OK}, wall_clock=WALL + 60)
    assert again.visited == [5] and again.state.competitions["c00"].pending == {5: 40.25}


def test_a_top_miner_is_revisited_after_24h_and_a_fresh_one_is_not():
    held = {7: c(7), 8: c(8)}
    last = {7: WALL - constants.TOP_MODEL_RETRY_INTERVAL_S - 1, 8: WALL - 3600}
    st = S.SelectionState({"c00": S.CompetitionState()}, held, last, force_eval_until_uid_last=78)
    vals = [V.ValidatorView(15, 1.0, 0, {7: 0.5, 8: 0.5})]
    up = update(st, {7: c(7), 8: c(8)}, validators=vals, competitions=["c00"])
    assert up.rounds[0] == S.VisitRound(80, [7, 8], constants.TOP_MODEL_RETRY_INTERVAL_S)
    assert 7 not in up.rounds[1].uids and 8 not in up.rounds[1].uids  # top miners skip the new-model round
    assert up.visited == [7] and up.state.competitions["c00"].pending == {7: 80.25}
    assert up.state.uid_last_retried_ts[7] == WALL and up.state.uid_last_retried_ts[8] == WALL - 3600


def test_the_download_budget_ends_a_round_and_the_slice_still_advances():
    st = S.SelectionState({"c00": S.CompetitionState()}, force_eval_until_uid_last=78)
    done = []

    def visit(uid, commit):
        done.append(uid)
        return S.VisitResult.OK

    up = S.update_chain(st, competitions=["c00"], chain={3: c(3), 4: c(4), 79: c(79)}, n_uids=100, validators=[],
                        wall_clock=WALL, visit=visit, fractions=lambda uid: 0.5, should_stop=lambda: len(done) >= 1)
    assert done == [3] and up.state.force_eval_until_uid_last == 80
    assert up.state.competitions["c00"].pending == {3: 40.5}


def test_competitions_follow_the_config():
    st = S.SelectionState({"old": S.CompetitionState([9])}, {9: c(9, "old")}, force_eval_until_uid_last=78)
    up = update(st, {9: c(9, "c01")}, competitions=["c00", "c01"])
    assert list(up.state.competitions) == ["c00", "c01"]
    assert up.state.competitions["c01"].pending == {9: 40.25}


def test_a_hotkey_change_forgets_the_last_visit():
    st = S.SelectionState({"c00": S.CompetitionState()}, {79: c(79)}, {79: WALL - 60}, force_eval_until_uid_last=78)
    assert update(st, {79: c(79)}, competitions=["c00"], n_uids=100).visited == []
    assert update(st, {79: c(79)}, competitions=["c00"], n_uids=100, hotkey_changed=[79]).visited == [79]


def test_fractions_must_be_given_and_in_range():
    st = S.SelectionState({"c00": S.CompetitionState()}, force_eval_until_uid_last=78)
    with pytest.raises(S.SelectionError, match="none given for uid 3"):
        update(st, {3: c(3)}, competitions=["c00"], fractions={})
    with pytest.raises(S.SelectionError, match=r"uid 3: expected a number in \[0, 1\)"):
        update(st, {3: c(3)}, competitions=["c00"], fractions={3: 1.0})


def test_injection_skips_members_and_unknown_competitions():
    st = S.SelectionState({"c00": S.CompetitionState([200], {201: 40.1})})
    got, unknown = S.inject_benchmark(st, {200: "c00", 201: "c00", 202: "c00", 203: "nope"})
    assert got.competitions["c00"].pending == {201: 40.1, 202: constants.PRIO_INJECT} and unknown == [203]


# --- the saved state -----------------------------------------------------------------------------

def test_state_round_trips_through_json_with_int_uids():
    import json
    st = S.SelectionState({"c00": S.CompetitionState([1, 2], {3: 40.5}, {1: 0.25, 2: 0.75})},
                          {1: c(1), 4: None}, {1: 1.5e9}, 17, {"hk9/x"})
    back = S.SelectionState.from_json(json.loads(json.dumps(st.to_json())))
    assert back == st


@pytest.mark.parametrize("data, match", [
    ([], "expected a JSON object"),
    ({"competitions": {"c00": {"pool": ["x"]}}}, r"competitions\['c00'\].pool: 'x' is not a uid"),
    ({"competitions": {"c00": {"pending": {"3": "high"}}}}, r"pending\[3\]: expected a finite number"),
    ({"held": {"1": {"key": 5}}}, r"held\[1\]"),
    ({"force_eval_until_uid_last": 300}, "force_eval_until_uid_last"),
    ({"discarded": [1]}, "discarded"),
])
def test_a_bad_saved_state_names_the_field(data, match):
    with pytest.raises(S.SelectionError, match=match):
        S.SelectionState.from_json(data)
